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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xstilts.errors import ConfigError, StoreError, XStiltsError
from xstilts.experiments.executor import StageExecutor, StageOutcome, StageTask, TrainEvalExecutor
from xstilts.experiments.faults import disk_full_error, is_disk_full
from xstilts.experiments.plan import Plan
from xstilts.experiments.store import DEFAULT_STALE_AFTER_S, Claim, ResultsStore, open_store
from xstilts.fileio import write_json_atomic
from xstilts.paths import TRAIN_LOG_FILE

logger = logging.getLogger(__name__)


@dataclass
class WorkerSummary:
    """What one worker did."""

    worker: str
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # stages another worker took over while this one stalled


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
    log = stage_dir / TRAIN_LOG_FILE
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


class ClaimLost(BaseException):
    """Raised in a worker's main thread when another worker took its stage over (this worker stalled
    past the store's ``stale_after``). A ``BaseException``, like ``KeyboardInterrupt``, so that no
    ``except Exception`` in a library on the way swallows it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, ``timeout``, ``kill``): stops like Ctrl-C, releasing claims."""


@contextmanager
def interrupt_signals(*signums: int) -> Iterator[None]:
    """While active, SIGTERM (and the other ``signums``) raise :class:`Terminated` in the main thread,
    once: a second signal while the first is being handled (claims being released) is ignored.
    Does nothing outside the main thread (Python only runs signal handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Terminated(f"received {signal.Signals(signum).name}")

    wanted = (signal.SIGTERM, *signums)
    old = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _ClaimGuard:
    """Stops the running stage when its claim is lost: the heartbeat thread calls :meth:`fire`, which
    signals the main thread (SIGUSR1); its handler raises :class:`ClaimLost` there, at the stage's
    next Python instruction (a blocking call is interrupted too). Outside the main thread no
    handler can be installed: the stage then runs to its end and the store refuses its result."""

    def __init__(self) -> None:
        self.armed = False
        self.installed = False
        self._old: Any = None

    def __enter__(self) -> _ClaimGuard:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGUSR1, self._handler)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGUSR1, self._old)
            self.installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.armed:
            self.armed = False
            raise ClaimLost()

    def fire(self) -> None:
        """Called from the heartbeat thread: interrupt the stage running in the main thread."""
        if self.installed and self.armed:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def run(self, func: Callable[[], StageOutcome], lost: threading.Event) -> StageOutcome:
        """``func()`` with the guard armed; :class:`ClaimLost` when the claim is (or gets) lost."""
        self.armed = True
        try:
            if lost.is_set():
                raise ClaimLost()
            return func()
        finally:
            self.armed = False


class _Heartbeat(threading.Thread):
    """Refreshes a claim while its stage runs (own store connection: sqlite objects stay in one thread).

    When the store says the claim is gone (the worker stalled, e.g. SIGSTOP, past ``stale_after``
    and another worker took the stage), sets :attr:`lost`, calls ``on_lost`` and stops beating."""

    def __init__(self, output_dir: Path, claim: Claim, stage_dir: Path, every: float, stale_after: float,
                 on_lost: Callable[[], None] | None = None):
        super().__init__(daemon=True, name=f"heartbeat-{claim.stage_id}")
        self.output_dir, self.claim, self.stage_dir, self.every = output_dir, claim, stage_dir, every
        self.stale_after, self.on_lost = stale_after, on_lost
        self.stop = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        try:
            store = open_store(self.output_dir, stale_after=self.stale_after)
        except Exception as exc:  # noqa: BLE001 - the stage itself will report a broken store
            logger.warning("stage %s: heartbeat cannot open the store: %s", self.claim.stage_id, exc)
            return
        try:
            while not self.stop.wait(self.every):
                try:
                    held = store.heartbeat(self.claim, read_progress(self.stage_dir))
                except Exception as exc:  # noqa: BLE001 - a busy/full store: try again next beat
                    logger.warning("stage %s: heartbeat failed: %s", self.claim.stage_id, exc)
                    continue
                if not held:
                    logger.warning("stage %s: this worker lost its claim (it went silent for longer than %.0f s and "
                                   "another worker took the stage over); stopping it", self.claim.stage_id,
                                   self.stale_after)
                    self.lost.set()
                    if self.on_lost is not None:
                        self.on_lost()
                    return
        finally:
            store.close()


def _disk_paths(task: StageTask) -> list[Path]:
    """Where a stage writes: what to look at when a write fails on a full disk."""
    import tempfile

    from xstilts.paths import features_cache_dir, xstilts_home

    return [task.stage_dir, task.output_dir, xstilts_home(), features_cache_dir(), Path(tempfile.gettempdir())]


class _Worker:
    """One worker's state: the store, the executor and the claim guard; :meth:`run_claim` runs one stage."""

    def __init__(self, plan: Plan, store: ResultsStore, executor: StageExecutor, name: str, devices: int,
                 stale_after: float, every: float, guard: _ClaimGuard):
        self.plan, self.store, self.executor, self.name, self.devices = plan, store, executor, name, devices
        self.stale_after, self.every, self.guard = stale_after, every, guard
        from xstilts.provenance import warm_caches

        warm_caches()  # versions and git state read once, before a claim (stage.json is then written at once)

    def task(self, claim: Claim) -> StageTask:
        return StageTask(claim.stage_id, claim.kind, claim.settings, self.plan.stage_dir(claim.stage_id),
                         self.plan.output_dir, self.plan.data_dir, self.devices)

    def write_identity(self, claim: Claim, task: StageTask) -> None:
        """``stage.json``: what the stage is (so ``xstilts store rebuild`` can restore it without the spec)."""
        from xstilts.paths import STAGE_FILE
        from xstilts.provenance import provenance

        stage = self.plan.stages.get(claim.stage_id)
        data = stage.to_json() if stage is not None else {"id": claim.stage_id, "kind": claim.kind,
                                                           "settings": claim.settings, "depends_on": [], "labels": []}
        data["provenance"] = provenance(config=data.get("settings"), device="cuda" if task.devices else "cpu")
        write_json_atomic(task.stage_dir / STAGE_FILE, data)

    def run_claim(self, claim: Claim) -> str:
        """Run the claimed stage; ``"ran"``, ``"failed"`` or ``"lost"`` (taken over: nothing recorded)."""
        task = self.task(claim)
        beat = _Heartbeat(self.plan.output_dir, claim, task.stage_dir, self.every, self.stale_after, self.guard.fire)
        try:
            task.stage_dir.mkdir(parents=True, exist_ok=True)
            self.write_identity(claim, task)
            beat.start()
            outcome = self.guard.run(lambda: self.executor(task), beat.lost)
            beat.stop.set()
            check_outcome(claim, outcome)
        except ClaimLost:
            logger.warning("[%s] stage %s was taken over by another worker; stopped without recording anything",
                           self.name, claim.stage_id)
            return "lost"
        except KeyboardInterrupt:
            self._release(claim)
            raise
        except Exception as exc:  # noqa: BLE001 - any stage error is recorded, the worker goes on
            return self._failed(claim, task, exc)
        finally:
            beat.stop.set()
            if beat.is_alive():
                beat.join()
        return self._complete(claim, task, outcome)

    def _release(self, claim: Claim) -> None:
        try:
            self.store.release(claim)
        except Exception as exc:  # noqa: BLE001 - the claim of a dead worker is taken back on the next run
            logger.warning("could not release stage %s (%s); the next run takes it back", claim.stage_id, exc)

    def _failed(self, claim: Claim, task: StageTask, exc: Exception) -> str:
        if is_disk_full(exc):
            self._release(claim)
            raise disk_full_error(exc, _disk_paths(task), what=f"running stage {claim.stage_id}") from None
        if isinstance(exc, StoreError):
            raise exc
        logger.error("[%s] stage %s failed: %s", self.name, claim.stage_id, exc)
        if not self.store.fail(claim, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"):
            logger.warning("[%s] stage %s: not recording the failure, the stage is no longer this worker's",
                           self.name, claim.stage_id)
            return "lost"
        return "failed"

    def _complete(self, claim: Claim, task: StageTask, outcome: StageOutcome) -> str:
        from xstilts.paths import OUTCOME_FILE

        try:
            if self.store.owns(claim):
                write_json_atomic(task.stage_dir / OUTCOME_FILE, {"metrics": outcome.metrics, "result": outcome.result})
            done = self.store.complete(claim, outcome.metrics, outcome.result)
        except (OSError, XStiltsError) as exc:
            if is_disk_full(exc):
                self._release(claim)
                raise disk_full_error(exc, _disk_paths(task), what=f"recording stage {claim.stage_id}") from None
            raise
        if not done:
            logger.warning("[%s] stage %s finished, but another worker holds it now: its result is not recorded",
                           self.name, claim.stage_id)
            return "lost"
        logger.info("[%s] stage %s done", self.name, claim.stage_id)
        return "ran"


def check_outcome(claim: Claim, outcome: StageOutcome) -> None:
    """An evaluation that scored nothing is a failure, never "done" with zero rows."""
    if claim.kind == "eval" and not outcome.metrics:
        skipped = (outcome.result or {}).get("skipped") or {}
        why = "; ".join(f"{lang}: {reason}" for lang, reason in sorted(skipped.items())) or "no metric returned"
        raise XStiltsError(f"eval stage {claim.stage_id} scored no language ({why}). Check data_dir / --data-dir "
                           "and the target's languages, then run again: the stage is retried.")


#: the longest an idle worker waits before looking for a ready stage again (seconds)
MAX_POLL_S = 10.0


class Backoff:
    """Exponential backoff with jitter for an idle worker: waits ``first``, then twice as long each
    time up to ``cap`` (each wait drawn from [½, 1] of that, so workers do not look in lockstep);
    :meth:`reset` after it found work."""

    def __init__(self, first: float = 0.5, cap: float = MAX_POLL_S):
        self.first, self.cap = max(first, 1e-3), max(cap, first)
        self.delay = self.first

    def next(self) -> float:
        """The next wait in seconds (and double the one after)."""
        import random

        wait = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.cap, self.delay * 2)
        return wait

    def sleep(self) -> None:
        time.sleep(self.next())

    def reset(self) -> None:
        self.delay = self.first


def run_worker(plan: Plan, *, executor: StageExecutor | None = None, worker: str | None = None,
               stage_ids: Sequence[str] | None = None, poll: float = 0.5, devices: int | None = None,
               stale_after: float = DEFAULT_STALE_AFTER_S, heartbeat_every: float | None = None,
               max_stages: int | None = None, max_poll: float = MAX_POLL_S) -> WorkerSummary:
    """Claim and run ready stages of ``plan`` (or of ``stage_ids``) until none is left to do.

    Waits while other workers hold stages this one needs; returns when every stage is done,
    failed, or blocked by a failed upstream. Stage errors are recorded in the store (the
    worker goes on with other stages); Ctrl-C or SIGTERM (:func:`interrupt_signals`) gives the
    current claim back and re-raises. A full disk releases the claim and raises
    :class:`~xstilts.errors.DiskFullError` (no next stage). A stage whose claim is lost (this
    worker stalled and another took it) is stopped and left alone. An idle worker (nothing
    ready yet) looks again after ``poll`` seconds, doubling up to ``max_poll`` (:class:`Backoff`).
    """
    executor = executor or TrainEvalExecutor()
    worker = worker or f"{os.uname().nodename}:{os.getpid()}"
    ids = list(stage_ids) if stage_ids is not None else list(plan.stages)
    if devices is None:
        devices = len(visible_gpus())
    every = heartbeat_every if heartbeat_every is not None else max(1.0, min(30.0, stale_after / 4))
    summary = WorkerSummary(worker)
    idle = Backoff(poll, max_poll)
    with open_store(plan.output_dir, stale_after=stale_after) as store, _ClaimGuard() as guard:
        w = _Worker(plan, store, executor, worker, devices, stale_after, every, guard)
        while max_stages is None or len(summary.ran) + len(summary.failed) + len(summary.lost) < max_stages:
            claim = store.claim_next(ids, worker=worker)
            if claim is None:
                if not pending_stages(plan, store.states(), ids):
                    break
                idle.sleep()
                continue
            idle.reset()
            logger.info("[%s] stage %s (%s, %s) starts (attempt %d)", worker, claim.stage_id, claim.kind,
                        plan.stages[claim.stage_id].description if claim.stage_id in plan.stages else "", claim.attempts)
            outcome = w.run_claim(claim)
            if outcome == "ran":
                summary.ran.append(claim.stage_id)
            elif outcome == "failed":
                summary.failed.append(claim.stage_id)
            else:
                summary.lost.append(claim.stage_id)
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

#: exit status of a worker process that stopped on a user error it reported to the parent
WORKER_ERROR_EXIT = 3
#: seconds workers get to release their claims after SIGTERM before they are killed
STOP_GRACE_S = 30.0


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux), so no worker outlives
    an ``xstilts run`` that was killed with SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _worker_main(plan: Plan, executor: StageExecutor | None, worker: str, cuda: str | None,
                 stale_after: float, log_file: str | None, errors: Any = None, parent: int | None = None) -> None:
    """Entry of a spawned worker process. A user error (full disk, damaged store) goes to the
    parent through ``errors`` and ends the process with :data:`WORKER_ERROR_EXIT`."""
    import sys

    _die_with_parent()
    if parent is not None and os.getppid() != parent:  # the parent died before the line above
        return
    if cuda is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda
    logging.raiseExceptions = False  # a log write on a full disk must not print a traceback per record
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    with interrupt_signals(signal.SIGINT):
        try:
            run_worker(plan, executor=executor, worker=worker, stale_after=stale_after)
        except KeyboardInterrupt:
            pass
        except XStiltsError as exc:
            logger.error("[%s] %s", worker, exc)
            if errors is not None:
                errors.put((type(exc).__name__, str(exc)))
            sys.exit(WORKER_ERROR_EXIT)


def _stop_processes(procs: Sequence[Any], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every live worker, give them ``grace`` seconds to release their claims, then SIGKILL."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            logger.warning("worker %s (pid %s) did not stop in %.0f s: killing it", p.name, p.pid, grace)
            p.kill()
            p.join(timeout=10)


def _raise_reported(errors: Any) -> None:
    """Re-raise in this process the first user error a worker reported (same class when it is known)."""
    import queue

    from xstilts import errors as error_classes

    try:
        name, message = errors.get_nowait()
    except queue.Empty:
        return
    cls = getattr(error_classes, name, XStiltsError)
    if not (isinstance(cls, type) and issubclass(cls, XStiltsError)) or cls.__init__ is not XStiltsError.__init__:
        cls = XStiltsError
    raise cls(message)


def _run_processes(plan: Plan, executor: StageExecutor | None, workers: int, cuda: list[str | None],
                   stale_after: float, logs: Path, on_tick: Callable[[ResultsStore], None] | None, tick: float,
                   store: ResultsStore) -> None:
    """Run ``workers`` spawned worker processes to their end; stop them all on any error or signal."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, name=f"xstilts-worker-{i}",
                         args=(plan, executor, f"w{i}", cuda[i], stale_after, str(logs / f"worker-{i}.log"), errors,
                               os.getpid()))
             for i in range(workers)]
    try:
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            if on_tick is not None:
                on_tick(store)
            for p in procs:
                p.join(timeout=tick / len(procs))
            if any(p.exitcode == WORKER_ERROR_EXIT for p in procs):
                break  # one worker hit a user error (full disk, damaged store): stop the others
    except BaseException:
        _stop_processes(procs)
        raise
    finally:
        if any(p.is_alive() for p in procs):
            _stop_processes(procs)
        store.reclaim_stale()  # claims of workers that had to be killed
    _raise_reported(errors)
    bad = [p.name for p in procs if p.exitcode not in (0, None)]
    if bad:
        logger.warning("worker(s) %s exited abnormally; see %s", ", ".join(bad), logs)


def _run_in_process(plan: Plan, executor: StageExecutor | None, stale_after: float,
                    on_tick: Callable[[ResultsStore], None] | None, tick: float) -> None:
    stop = threading.Event()
    ticker = None
    if on_tick is not None:
        def _tick() -> None:
            tick_store = open_store(plan.output_dir, stale_after=stale_after)
            try:
                while not stop.wait(tick):
                    on_tick(tick_store)
            finally:
                tick_store.close()

        ticker = threading.Thread(target=_tick, daemon=True)
        ticker.start()
    try:
        run_worker(plan, executor=executor, worker="w0", stale_after=stale_after)
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()


def run_local(plan: Plan, *, workers: int = 1, executor: StageExecutor | None = None,
              devices_per_stage: int = 1, stale_after: float = DEFAULT_STALE_AFTER_S,
              on_tick: Callable[[ResultsStore], None] | None = None, tick: float = 1.0,
              in_process: bool | None = None, command: str = "") -> dict[str, str]:
    """Run ``plan`` with ``workers`` worker processes on this machine; returns final stage states.

    With one worker and no GPU split the worker runs in this process (``in_process`` forces
    either way). ``on_tick(store)`` is called every ``tick`` seconds while workers run (the CLI
    draws its progress display there). Ctrl-C or SIGTERM stops every worker, whose claims go back
    to waiting (a worker that does not stop within :data:`STOP_GRACE_S` is killed and its claim
    taken back); running the same plan again resumes. A user error in one worker (full disk,
    damaged store) stops the others and is raised here.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}", key="--workers")
    cuda = assign_devices(workers, devices_per_stage)
    store = open_store(plan.output_dir, stale_after=stale_after)
    status = "interrupted"
    run_id = None
    logs = Path(plan.output_dir) / "logs"
    try:
        with interrupt_signals():
            store.register_plan(plan)
            run_id = store.start_run(plan, command)
            logs.mkdir(parents=True, exist_ok=True)
            if in_process if in_process is not None else (workers == 1 and cuda[0] is None):
                _run_in_process(plan, executor, stale_after, on_tick, tick)
            else:
                _run_processes(plan, executor, workers, cuda, stale_after, logs, on_tick, tick, store)
        states = store.states(plan.stages)
        status = "done" if all(states.get(s) == "done" for s in plan.stages) else "incomplete"
        if on_tick is not None:
            on_tick(store)
        return states
    finally:
        if run_id is not None:
            try:
                store.finish_run(run_id, status)
            except XStiltsError as exc:  # e.g. the store's disk is full: the error being raised says more
                logger.warning("could not record the end of run %s: %s", run_id, exc)
        store.close()
