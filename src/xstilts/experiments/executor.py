"""What runs one stage. The runner only knows the small :class:`StageExecutor` interface, so
tests inject a fake (no models) and real runs use :class:`TrainEvalExecutor`, which calls the
train layer (``train_stage``) and the evaluate layer (``zero_shot_eval``).

A training stage given more than one device runs through ``accelerate launch`` (one process
per device) on this module's ``__main__`` (``python -m xstilts.experiments.executor STAGE.json``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from xstilts.errors import XStiltsError
from xstilts.experiments.plan import stage_model_dir
from xstilts.paths import DONE_FILE
from xstilts.tracking import env_trackers, log_eval_report, merge_trackers

logger = logging.getLogger(__name__)


@dataclass
class StageTask:
    """Everything an executor needs to run a stage."""

    stage_id: str
    kind: str
    settings: dict[str, Any]
    stage_dir: Path
    output_dir: Path
    data_dir: Path | None
    devices: int = 0  # GPUs given to this stage (0: CPU)


@dataclass
class StageOutcome:
    """What a finished stage reports: metric rows ``(language, split, metric, value)`` and a JSON summary."""

    metrics: list[tuple[str, str, str, float]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class StageExecutor(Protocol):
    """Runs one stage to completion (resuming from its own checkpoints if it was interrupted)."""

    def __call__(self, task: StageTask) -> StageOutcome: ...


def build_train_config(task: StageTask) -> Any:
    """The stage's TrainConfig with its model reference resolved and the run's data dir."""
    from xstilts.train.config import make_train_config

    data = dict(task.settings)
    data["model"] = stage_model_dir(task.output_dir, data["model"])
    data["carried_dev_tasks"] = [{**c, "head_from": stage_model_dir(task.output_dir, c["head_from"])}
                                 if c.get("head_from") else c for c in data.get("carried_dev_tasks", [])]
    if data.get("init_heads") is None:
        data["init_heads"] = False
    data["data_dir"] = str(task.data_dir) if task.data_dir else None
    data["trackers"] = merge_trackers(data.get("trackers"), env_trackers())  # xstilts run --report-to
    return make_train_config(data)


def eval_rows(report: Any) -> list[tuple[str, str, str, float]]:
    """Metric rows of an EvalReport: every score of every language (no averages: analysis makes them)."""
    rows = []
    for language, scores in sorted(report.per_language.items()):
        for metric, value in sorted(scores.items()):
            if isinstance(value, (int, float)):
                rows.append((language, report.split, metric, float(value)))
    return rows


class TrainEvalExecutor:
    """The real executor: ``train_stage`` for intermediate/target stages, ``zero_shot_eval`` for eval."""

    def __call__(self, task: StageTask) -> StageOutcome:
        task.stage_dir.mkdir(parents=True, exist_ok=True)
        if task.kind in ("intermediate", "target"):
            return self._train(task)
        if task.kind == "eval":
            return self._eval(task)
        raise XStiltsError(f"stage {task.stage_id}: unknown kind '{task.kind}'")

    def _train(self, task: StageTask) -> StageOutcome:
        config = build_train_config(task)
        if task.devices > 1:
            return self._train_distributed(task, config)
        from xstilts.train import train_stage

        res = train_stage(config, task.stage_dir)
        return StageOutcome(result=_train_summary(res))

    def _train_distributed(self, task: StageTask, config: Any) -> StageOutcome:
        spec_file = task.stage_dir / "stage_config.json"
        spec_file.write_text(config.model_dump_json(indent=1))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(task.devices),
               "--multi_gpu", "--module", "xstilts.experiments.executor", str(spec_file), str(task.stage_dir)]
        logger.info("stage %s: %s", task.stage_id, " ".join(cmd))
        returncode = run_process_group(cmd)
        if returncode != 0:
            raise XStiltsError(f"stage {task.stage_id}: accelerate launch exited with status {returncode}")
        done = task.stage_dir / DONE_FILE
        summary = json.loads(done.read_text()) if done.is_file() else {}
        return StageOutcome(result={"devices": task.devices, **summary})

    def _eval(self, task: StageTask) -> StageOutcome:
        from xstilts.evaluate import zero_shot_eval

        s = task.settings
        retrieval = None
        if s.get("retrieval"):
            from xstilts.evaluate.zero_shot import RetrievalSettings

            retrieval = RetrievalSettings(**s["retrieval"])
        report = zero_shot_eval(
            stage_model_dir(task.output_dir, s["model"]), s["task"], languages=s["languages"], split=s["split"],
            data_dir=task.data_dir, max_examples=s.get("max_examples"), seed=s.get("seed", 0),
            batch_size=s.get("batch_size", 64), out_dir=task.stage_dir, retrieval=retrieval,
            precision=s.get("precision", "fp32"), device="cpu" if task.devices == 0 else None,
            max_length=s.get("max_length"), doc_stride=s.get("doc_stride"), max_query_length=s.get("max_query_length"),
            head=s.get("head"), save_inputs=s.get("save_inputs", False))
        log_eval_report(report, env_trackers(), task.stage_dir)  # xstilts run --report-to
        rows = eval_rows(report)
        if not rows:
            why = "; ".join(f"{lang}: {reason}" for lang, reason in sorted(report.skipped.items())) or "no scores"
            raise XStiltsError(f"eval stage {task.stage_id} ({s['task']}) scored no language with data dir "
                               f"{task.data_dir} ({why}); fix data_dir / --data-dir and run again (the stage is retried)")
        return StageOutcome(metrics=rows,
                            result={"average": report.average, "skipped": report.skipped,
                                    "n_examples": report.n_examples, "settings": _jsonable(report.settings)})


def run_process_group(cmd: list[str]) -> int:
    """Run ``cmd`` in its own process group and return its exit status. If this process is
    interrupted (Ctrl-C, SIGTERM, a lost claim), the whole group is stopped: no launcher child
    (one per device) outlives the stage."""
    import signal

    proc = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        raise


def _train_summary(res: Any) -> dict[str, Any]:
    return {"model_dir": str(res.model_dir), "steps": res.steps, "dev_metrics": res.dev_metrics,
            "carried_dev_metrics": getattr(res, "carried_dev_metrics", {}),
            "skipped": res.skipped, "seconds": getattr(res, "seconds", None)}


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _main(argv: list[str]) -> int:
    """Entry of one ``accelerate launch`` process: train the stage config in ``argv[0]`` into ``argv[1]``."""
    from xstilts.distributed import release_process_group
    from xstilts.train import train_stage
    from xstilts.train.config import TrainConfig

    config = TrainConfig.model_validate_json(Path(argv[0]).read_text())
    train_stage(config, Path(argv[1]))
    release_process_group()  # not at interpreter exit, where gloo's threads can abort the process
    return 0


if __name__ == "__main__":  # pragma: no cover - runs under accelerate launch
    raise SystemExit(_main(sys.argv[1:]))
