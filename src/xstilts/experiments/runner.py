"""Running a plan: workers that claim ready stages from the results store, one at a time.

The same worker loop (:func:`run_worker`) runs in-process, in N local processes
(:func:`run_local`, one GPU each when there are GPUs) and in Slurm jobs
(:mod:`xstilts.experiments.slurm`). Because every claim goes through the store, any number of
workers can run at once, a crashed worker's stage is taken back (dead pid or stale
heartbeat), and running again after a crash or Ctrl-C is always safe: finished stages are
never re-run and a stage that was interrupted resumes from its own checkpoints.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xstilts.errors import ConfigError
from xstilts.experiments.executor import StageExecutor, StageTask, TrainEvalExecutor
from xstilts.experiments.plan import Plan
from xstilts.experiments.store import DEFAULT_STALE_AFTER_S, ResultsStore, open_store

logger = logging.getLogger(__name__)


@dataclass
class WorkerSummary:
    """What one worker did."""

    worker: str
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def blocked_stages(plan: Plan, states: dict[str, str]) -> set[str]:
    """Stages that cannot run in this run because an upstream stage failed."""
    blocked: set[str] = set()
    for stage in plan:  # topological order
        if any(states.get(d) == "failed" or d in blocked for d in stage.depends_on):
            blocked.add(stage.id)
    return blocked


def pending_stages(plan: Plan, states: dict[str, str], stage_ids: Sequence[str]) -> list[str]:
    """Stages of ``stage_ids`` still to be finished by someone (waiting and not blocked, or running)."""
    blocked = blocked_stages(plan, states)
    return [sid for sid in stage_ids
            if states.get(sid) == "running" or (states.get(sid, "waiting") == "waiting" and sid not in blocked)]


def read_progress(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's own progress: the last record of its ``log.jsonl`` (train layer), if any."""
    log = stage_dir / "log.jsonl"
    if not log.is_file():
        return None
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - 4096))
            lines = fh.read().decode("utf-8", "replace").splitlines()
        for line in reversed(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            return {k: rec[k] for k in ("step", "max_steps", "total_steps", "epoch", "loss") if k in rec} or None
    except OSError:
        return None
    return None


class _Heartbeat(threading.Thread):
    """Refreshes a claim while its stage runs (own store connection: sqlite objects stay in one thread)."""

    def __init__(self, output_dir: Path, stage_id: str, stage_dir: Path, every: float, stale_after: float):
        super().__init__(daemon=True, name=f"heartbeat-{stage_id}")
        self.output_dir, self.stage_id, self.stage_dir, self.every = output_dir, stage_id, stage_dir, every
        self.stale_after = stale_after
        self.stop = threading.Event()

    def run(self) -> None:
        store = open_store(self.output_dir, stale_after=self.stale_after)
        try:
            while not self.stop.wait(self.every):
                if not store.heartbeat(self.stage_id, read_progress(self.stage_dir)):
                    logger.warning("stage %s: lost its claim (taken back as stale?)", self.stage_id)
        finally:
            store.close()


def run_worker(plan: Plan, *, executor: StageExecutor | None = None, worker: str | None = None,
               stage_ids: Sequence[str] | None = None, poll: float = 1.0, devices: int | None = None,
               stale_after: float = DEFAULT_STALE_AFTER_S, heartbeat_every: float | None = None,
               max_stages: int | None = None) -> WorkerSummary:
    """Claim and run ready stages of ``plan`` (or of ``stage_ids``) until none is left to do.

    Waits while other workers hold stages this one needs; returns when every stage is done,
    failed, or blocked by a failed upstream. Stage errors are recorded in the store (the
    worker goes on with other stages); Ctrl-C gives the current claim back and re-raises.
    """
    executor = executor or TrainEvalExecutor()
    worker = worker or f"{os.uname().nodename}:{os.getpid()}"
    ids = list(stage_ids) if stage_ids is not None else list(plan.stages)
    if devices is None:
        devices = len(visible_gpus())
    every = heartbeat_every if heartbeat_every is not None else max(1.0, min(30.0, stale_after / 4))
    summary = WorkerSummary(worker)
    with open_store(plan.output_dir, stale_after=stale_after) as store:
        while max_stages is None or len(summary.ran) + len(summary.failed) < max_stages:
            claim = store.claim_next(ids, worker=worker)
            if claim is None:
                if not pending_stages(plan, store.states(), ids):
                    break
                time.sleep(poll)
                continue
            stage_dir = plan.stage_dir(claim.stage_id)
            stage_dir.mkdir(parents=True, exist_ok=True)
            logger.info("[%s] stage %s (%s, %s) starts (attempt %d)", worker, claim.stage_id, claim.kind,
                        plan.stages[claim.stage_id].description if claim.stage_id in plan.stages else "", claim.attempts)
            beat = _Heartbeat(plan.output_dir, claim.stage_id, stage_dir, every, stale_after)
            beat.start()
            try:
                outcome = executor(StageTask(claim.stage_id, claim.kind, claim.settings, stage_dir, plan.output_dir,
                                             plan.data_dir, devices))
            except KeyboardInterrupt:
                beat.stop.set()
                beat.join()
                store.release(claim.stage_id)
                raise
            except Exception as exc:  # noqa: BLE001 - any stage error is recorded, the worker goes on
                beat.stop.set()
                beat.join()
                logger.error("[%s] stage %s failed: %s", worker, claim.stage_id, exc)
                store.fail(claim.stage_id, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                summary.failed.append(claim.stage_id)
                continue
            beat.stop.set()
            beat.join()
            store.complete(claim.stage_id, outcome.metrics, outcome.result)
            summary.ran.append(claim.stage_id)
            logger.info("[%s] stage %s done", worker, claim.stage_id)
    return summary


# --------------------------------------------------------------------------- devices


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else what ``nvidia-smi -L`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def assign_devices(workers: int, devices_per_stage: int = 1, gpus: Sequence[str] | None = None) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` for each worker (None: leave unset, CPU only when no GPU)."""
    gpus = list(visible_gpus() if gpus is None else gpus)
    if not gpus:
        return [None] * workers
    need = workers * devices_per_stage
    if need > len(gpus):
        raise ConfigError(f"{workers} workers × {devices_per_stage} GPU(s) each need {need} GPUs, "
                          f"but {len(gpus)} are visible ({','.join(gpus)})", key="--workers")
    return [",".join(gpus[i * devices_per_stage:(i + 1) * devices_per_stage]) for i in range(workers)]


# --------------------------------------------------------------------------- local processes


def _worker_main(plan: Plan, executor: StageExecutor | None, worker: str, cuda: str | None,
                 stale_after: float, log_file: str | None) -> None:
    """Entry of a spawned worker process."""
    if cuda is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    try:
        run_worker(plan, executor=executor, worker=worker, stale_after=stale_after)
    except KeyboardInterrupt:
        pass


def run_local(plan: Plan, *, workers: int = 1, executor: StageExecutor | None = None,
              devices_per_stage: int = 1, stale_after: float = DEFAULT_STALE_AFTER_S,
              on_tick: Callable[[ResultsStore], None] | None = None, tick: float = 1.0,
              in_process: bool | None = None, command: str = "") -> dict[str, str]:
    """Run ``plan`` with ``workers`` worker processes on this machine; returns final stage states.

    With one worker and no GPU split the worker runs in this process (``in_process`` forces
    either way). ``on_tick(store)`` is called every ``tick`` seconds while workers run (the CLI
    draws its progress display there). Ctrl-C stops the workers, whose claims go back to waiting.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}", key="--workers")
    cuda = assign_devices(workers, devices_per_stage)
    store = open_store(plan.output_dir, stale_after=stale_after)
    store.register_plan(plan)
    run_id = store.start_run(plan, command)
    status = "interrupted"
    logs = Path(plan.output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        if in_process if in_process is not None else (workers == 1 and cuda[0] is None):
            stop = threading.Event()
            ticker = None
            if on_tick is not None:
                def _tick() -> None:
                    tick_store = open_store(plan.output_dir, stale_after=stale_after)
                    while not stop.wait(tick):
                        on_tick(tick_store)
                    tick_store.close()

                ticker = threading.Thread(target=_tick, daemon=True)
                ticker.start()
            try:
                run_worker(plan, executor=executor, worker="w0", stale_after=stale_after)
            finally:
                stop.set()
                if ticker is not None:
                    ticker.join()
        else:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker_main, name=f"xstilts-worker-{i}",
                                 args=(plan, executor, f"w{i}", cuda[i], stale_after, str(logs / f"worker-{i}.log")))
                     for i in range(workers)]
            for p in procs:
                p.start()
            try:
                while any(p.is_alive() for p in procs):
                    if on_tick is not None:
                        on_tick(store)
                    for p in procs:
                        p.join(timeout=tick / len(procs))
            except KeyboardInterrupt:
                for p in procs:  # the children got the SIGINT too; give them time to release claims
                    p.join(timeout=10)
                for p in procs:
                    if p.is_alive() and p.pid is not None:
                        os.kill(p.pid, signal.SIGTERM)
                        p.join(timeout=5)
                raise
            bad = [p.name for p in procs if p.exitcode not in (0, None)]
            if bad:
                logger.warning("worker(s) %s exited abnormally; see %s", ", ".join(bad), logs)
        states = store.states(plan.stages)
        status = "done" if all(states.get(s) == "done" for s in plan.stages) else "incomplete"
        if on_tick is not None:
            on_tick(store)
        return states
    finally:
        store.finish_run(run_id, status)
        store.close()
