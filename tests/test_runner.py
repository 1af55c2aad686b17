"""Running plans: skip of finished stages, several worker processes on one store, SIGKILL and
resume, and one small end-to-end run with a tiny model through the real train/evaluate layers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from xstilts.experiments import StageOutcome, StageTask, open_store, parse_spec, plan_stages, run_local, run_worker

SPEC = {
    "models": ["e5-small"],
    "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"},
                     "ac": {"chain": ["anli", "cosmosqa"]}},
    "targets": [{"task": "panx", "languages": ["en", "de"]}, {"task": "tatoeba", "languages": ["de", "fr"]}],
    "seeds": [0, 1],
}


class RecordingExecutor:
    """A fake stage executor: records each start and finish as files, checks upstream outputs exist,
    and returns made-up metrics. With ``hold`` set, stages of kind ``hold_kind`` wait while that file exists."""

    def __init__(self, record_dir: Path, sleep: float = 0.0, hold: Path | None = None, hold_kind: str = "intermediate"):
        self.record_dir, self.sleep, self.hold, self.hold_kind = Path(record_dir), sleep, hold, hold_kind

    def __call__(self, task: StageTask) -> StageOutcome:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        (self.record_dir / f"start-{task.stage_id}-{os.getpid()}-{time.monotonic_ns()}").touch()
        model = task.settings["model"]
        if model.startswith("stage:"):  # upstream must have finished and written its model
            assert (task.output_dir / "stages" / model[6:] / "model" / "weights").is_file(), model
        if self.hold is not None and task.kind == self.hold_kind:
            while self.hold.exists():
                time.sleep(0.05)
        time.sleep(self.sleep)
        metrics = []
        if task.kind == "eval":
            metrics = [(lang, task.settings["split"], "accuracy", 50.0 + i) for i, lang in enumerate(task.settings["languages"])]
            metrics += [(lang, task.settings["split"], "f1", 40.0) for lang in task.settings["languages"]]
        else:
            (task.stage_dir / "model").mkdir(parents=True, exist_ok=True)
            (task.stage_dir / "model" / "weights").write_text(task.stage_id)
        (self.record_dir / f"done-{task.stage_id}-{os.getpid()}").touch()
        return StageOutcome(metrics=metrics, result={"pid": os.getpid()})


def make_plan(tmp_path: Path, spec: dict | None = None):
    data = {**(spec or SPEC), "output_dir": str(tmp_path / "out"), "data_dir": str(tmp_path)}
    return plan_stages(parse_spec(data, tmp_path / "spec.yaml"))


def records(record_dir: Path, kind: str) -> Counter:
    return Counter(p.name.split("-")[1] for p in record_dir.glob(f"{kind}-*"))


def test_run_skips_finished_stages(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    rec = tmp_path / "rec"
    states = run_local(plan, executor=RecordingExecutor(rec))
    assert set(states.values()) == {"done"} and len(states) == len(plan)
    assert records(rec, "done") == Counter({sid: 1 for sid in plan.stages})
    # run again: nothing runs
    run_local(plan, executor=RecordingExecutor(rec))
    assert records(rec, "start") == Counter({sid: 1 for sid in plan.stages})
    # a bigger spec sharing the output dir runs only its new stages
    bigger = make_plan(tmp_path, {**SPEC, "seeds": [0, 1, 2]})
    run_local(bigger, executor=RecordingExecutor(rec))
    assert records(rec, "start") == Counter({sid: 1 for sid in bigger.stages})
    m = open_store(plan.output_dir).metrics_frame()
    assert set(m["seed"]) == {0, 1, 2} and set(m["setup"]) == {"baseline", "anli", "ac"}


def test_failure_is_recorded_blocks_downstream_and_is_retried(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    bad = plan.of_kind("intermediate")[0]

    class Failing(RecordingExecutor):
        def __call__(self, task: StageTask) -> StageOutcome:
            if task.stage_id == bad.id:
                raise RuntimeError("boom")
            return super().__call__(task)

    states = run_local(plan, executor=Failing(tmp_path / "rec"))
    assert states[bad.id] == "failed"
    assert all(states[s] == "waiting" for s in plan.downstream(bad.id))
    row = next(r for r in open_store(plan.output_dir).stage_rows([bad.id]))
    assert "boom" in row["error"]
    states = run_local(plan, executor=RecordingExecutor(tmp_path / "rec"))  # retry picks it up
    assert set(states.values()) == {"done"}


def test_two_worker_processes_share_one_store(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    rec = tmp_path / "rec"
    states = run_local(plan, workers=2, executor=RecordingExecutor(rec, sleep=0.1))
    assert set(states.values()) == {"done"}
    starts = list(rec.glob("start-*"))
    assert records(rec, "start") == Counter({sid: 1 for sid in plan.stages})  # no duplicate work
    assert len({p.name.split("-")[2] for p in starts}) == 2  # both workers did some


def _worker(plan, rec: str, hold: str) -> None:
    run_worker(plan, executor=RecordingExecutor(Path(rec), hold=Path(hold)), worker="victim")


def test_killed_worker_then_resume(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    rec, hold = tmp_path / "rec", tmp_path / "hold"
    store = open_store(plan.output_dir)
    store.register_plan(plan)
    # first finish a few stages, so that the resume must not redo them
    first = run_worker(plan, executor=RecordingExecutor(rec), max_stages=3)
    assert len(first.ran) == 3
    hold.touch()
    proc = mp.get_context("spawn").Process(target=_worker, args=(plan, str(rec), str(hold)))
    proc.start()
    deadline = time.time() + 60
    def held() -> list[str]:  # the victim may first run a (quick, not held) target stage: wait for the held one,
        # claimed in the store and started by the executor (a kill between the two would leave one start record)
        started = records(rec, "start")
        return [sid for sid, st in store.states().items()
                if st == "running" and plan.stages[sid].kind == "intermediate" and started[sid] >= 1]

    while time.time() < deadline and not held():
        time.sleep(0.05)
    running = held()
    assert len(running) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert store.states()[running[0]] == "running"  # a stale claim of a dead process
    hold.unlink()
    states = run_local(plan, executor=RecordingExecutor(rec))
    assert set(states.values()) == {"done"}
    done = records(rec, "done")
    assert done == Counter({sid: 1 for sid in plan.stages})  # nothing lost, nothing finished twice
    starts = records(rec, "start")
    assert starts[running[0]] == 2 and all(n == 1 for sid, n in starts.items() if sid != running[0])
    rows = {r["stage_id"]: r for r in store.stage_rows()}
    assert rows[running[0]]["attempts"] == 2


def test_summary_table(tmp_path: Path) -> None:
    from xstilts.experiments.results import plan_rows, plan_totals, summary_frame

    plan = make_plan(tmp_path)
    store = open_store(plan.output_dir)
    assert plan_totals(plan_rows(plan, None))["to_run"] == len(plan)
    run_local(plan, executor=RecordingExecutor(tmp_path / "rec"))
    table = summary_frame(store, plan)
    assert list(table.columns) == ["baseline", "anli", "ac"]
    assert table.loc["panx", "anli"] == pytest.approx(40.0)  # panx's primary metric is f1
    assert table.loc["tatoeba", "baseline"] == pytest.approx(50.5)  # accuracy, mean of 50 and 51
    assert plan_totals(plan_rows(plan, store))["done"] == len(plan)


def test_end_to_end_tiny_model(tmp_path: Path, tiny_model_dir: Path, shared_data: Path) -> None:
    """The real executor on a tiny random model and the real local data (a few examples)."""
    pytest.importorskip("xstilts.evaluate.zero_shot")
    spec = {
        "models": [{"name": "tiny", "name_or_path": str(tiny_model_dir)}],
        "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"}},
        "targets": [{"task": "panx", "languages": ["en", "de"]}, {"task": "tatoeba", "languages": ["de"]}],
        "seeds": [0],
        "hyperparameters": {"intermediate": {"max_steps": 2, "batch_size": 4, "max_length": 32, "eval_max_examples": 8},
                            "target": {"max_steps": 2, "batch_size": 4, "max_length": 32, "eval_max_examples": 8},
                            "eval": {"batch_size": 8}},
        "max_examples": {"intermediate": 8, "target": 8, "eval": 8},
        "data_dir": str(shared_data),
        "output_dir": str(tmp_path / "out"),
    }
    plan = plan_stages(parse_spec(spec, tmp_path / "spec.yaml"))
    states = run_local(plan)
    store = open_store(plan.output_dir)
    errors = [r["error"] for r in store.stage_rows() if r["state"] == "failed"]
    assert set(states.values()) == {"done"}, errors
    m = store.metrics_frame()
    assert set(m["target"]) == {"panx", "tatoeba"} and set(m["setup"]) == {"baseline", "anli"}
    assert set(m[m["target"] == "panx"]["language"]) == {"en", "de"}
    assert m["value"].between(0, 100).all()
    inter = plan.of_kind("intermediate")[0]
    assert (plan.stage_dir(inter.id) / "model" / "xstilts_model.json").is_file()
    assert json.loads(store.stage_rows([inter.id])[0]["result"])["steps"] == 2


class CountingExecutor(RecordingExecutor):
    """RecordingExecutor whose eval stages also record how many items each language scored."""

    def __call__(self, task: StageTask) -> StageOutcome:
        out = super().__call__(task)
        if task.kind == "eval":
            out.result["n_examples"] = {lang: 10 + i for i, lang in enumerate(task.settings["languages"])}
        return out


def test_results_export_counts_items_per_language(tmp_path: Path) -> None:
    """`xstilts results --counts`: one n_examples row per evaluated (stage, labels, language),
    from the eval stage's recorded counts; the default export has none."""
    from xstilts.experiments.results import ITEM_COUNT_METRIC, export_results

    plan = make_plan(tmp_path)
    run_local(plan, executor=CountingExecutor(tmp_path / "rec"))
    store = open_store(plan.output_dir)
    plain = export_results(store, plan, "csv", None)
    assert ITEM_COUNT_METRIC not in set(plain["metric"])
    full = export_results(store, plan, "csv", tmp_path / "r.csv", counts=True)
    counts = full[full["metric"] == ITEM_COUNT_METRIC]
    keys = ["stage_id", "model", "setup", "target", "language", "seed", "split"]
    assert len(counts) == len(plain.drop_duplicates(keys)) and len(full) == len(plain) + len(counts)
    panx = counts[counts["target"] == "panx"].set_index("language")["value"]
    assert set(panx.loc["en"]) == {10.0} and set(panx.loc["de"]) == {11.0}
