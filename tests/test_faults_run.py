"""Fault injection on running a plan (issue 18, items 2, 3, 4, 5, 7, 8).

Each case reproduces a failure and asserts the fixed behaviour: a stalled worker that lost its
claim stops and records nothing while the new owner completes the stage once; SIGTERM to a
multi-worker run leaves no process behind and the run resumes to the same results; a full
disk (stage files, feature cache, the store itself) is one clear error and a consistent store;
a damaged store is a clear error and ``xstilts store rebuild`` restores it; an evaluation that
scored nothing fails and is retried; bad inputs are reported before anything trains.
Fast cases use the fake executor of ``test_runner``; the ``slow`` ones a tiny random model,
real processes and (as root) real tiny file systems.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.test_runner import RecordingExecutor, make_plan, records
from xstilts.errors import ConfigError, DiskFullError, StoreError
from xstilts.experiments import StageOutcome, StageTask, open_store, parse_spec, plan_stages, run_local, run_worker
from xstilts.fileio import write_json_atomic
from xstilts.experiments.store import pid_alive

REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "models": ["e5-small"],
    "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"}},
    "targets": [{"task": "panx", "languages": ["en", "de"]}],
    "seeds": [0],
}


def _cli(*args: str):
    from typer.testing import CliRunner

    from xstilts.cli import app

    return CliRunner().invoke(app, list(args))


def _integrity(output_dir: Path) -> str:
    conn = sqlite3.connect(output_dir / "results.sqlite")
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def _frame(output_dir: Path):
    store = open_store(output_dir)
    try:
        m = store.metrics_frame()
    finally:
        store.close()
    return m.sort_values(list(m.columns)).reset_index(drop=True)


# =========================================================================== item 2: stalled worker


def _stamp(path: Path) -> None:
    """The time, written atomically: a worker stopped (SIGSTOP, or its stage taken over) between
    creating and writing the file must not leave an empty one behind."""
    write_json_atomic(path, time.time())


class TickExecutor:
    """A stage as ``ticks`` steps of ``tick_s`` s, one file per step (``tick-<pid>-<i>``, holding the time).
    ``stopped-<pid>`` when interrupted, ``done-<pid>`` when finished. ``cont``: SIGCONT that pid first
    (recording the time in ``cont``); ``takeover``: make the stage another worker's first (a simulated
    stall: what ``reclaim_stale`` + another worker's ``claim_next`` do)."""

    def __init__(self, rec: Path, ticks: int, tick_s: float, cont: int | None = None, takeover: bool = False):
        self.rec, self.ticks, self.tick_s, self.cont, self.takeover = Path(rec), ticks, tick_s, cont, takeover

    def __call__(self, task: StageTask) -> StageOutcome:
        self.rec.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        if self.cont is not None:
            _stamp(self.rec / "cont")
            os.kill(self.cont, signal.SIGCONT)
        if self.takeover:
            conn = sqlite3.connect(task.output_dir / "results.sqlite", timeout=60)
            conn.execute("UPDATE stages SET host = 'elsewhere', pid = 4242, attempts = attempts + 1, heartbeat = ? "
                         "WHERE stage_id = ?", (time.time() + 3600, task.stage_id))
            conn.commit()
            conn.close()
        finished = False
        try:
            for i in range(self.ticks):
                _stamp(self.rec / f"tick-{pid}-{i}")
                time.sleep(self.tick_s)
            finished = True
        finally:
            if not finished:
                _stamp(self.rec / f"stopped-{pid}")
        if task.kind != "eval":
            (task.stage_dir / "model").mkdir(parents=True, exist_ok=True)
            (task.stage_dir / "model" / "weights").write_text(f"{task.stage_id} by {pid}")
        _stamp(self.rec / f"done-{pid}")
        langs = task.settings.get("languages", ["en"])
        metrics = [(lang, "dev", "f1", 10.0) for lang in langs] if task.kind == "eval" else []
        return StageOutcome(metrics=metrics, result={"pid": pid})


def test_store_refuses_a_lost_claim(tmp_path: Path) -> None:
    """complete / fail / heartbeat / release with a claim another worker now holds change nothing."""
    plan = make_plan(tmp_path, SMALL)
    store = open_store(plan.output_dir)
    store.register_plan(plan)
    sid = plan.of_kind("intermediate")[0].id
    old = store.claim_next([sid])
    assert old is not None and store.owns(old)
    # the worker stalls; its claim is taken back and claimed again (same host and even the same pid)
    store._conn.execute("UPDATE stages SET attempts = attempts + 1, heartbeat = ? WHERE stage_id = ?", (time.time(), sid))
    before = store.stage_rows([sid])[0]
    assert not store.owns(old)
    assert store.heartbeat(old) is False
    assert store.complete(old, [("en", "dev", "f1", 1.0)]) is False
    assert store.fail(old, "boom") is False
    assert store.release(old) is False
    assert store.stage_rows([sid])[0] == before
    assert store.metrics_frame().empty


def test_lost_claim_stops_the_stage_deterministic(tmp_path: Path) -> None:
    """Fast: the stage is taken over while it runs; the heartbeat notices, the stage stops at once
    (it would have run 20 s) and nothing of the new owner's row is touched."""
    plan = make_plan(tmp_path, SMALL)
    rec = tmp_path / "rec"
    sid = plan.of_kind("intermediate")[0].id
    open_store(plan.output_dir).register_plan(plan)
    t0 = time.time()
    summary = run_worker(plan, executor=TickExecutor(rec, ticks=400, tick_s=0.05, takeover=True), stage_ids=[sid],
                         heartbeat_every=0.1, max_stages=1)
    assert time.time() - t0 < 10
    assert summary.lost == [sid] and summary.ran == [] and summary.failed == []
    assert (rec / f"stopped-{os.getpid()}").is_file() and not (rec / f"done-{os.getpid()}").exists()
    row = open_store(plan.output_dir).stage_rows([sid])[0]
    assert (row["state"], row["host"], row["pid"], row["attempts"], row["error"]) == ("running", "elsewhere", 4242, 2, None)
    assert not (plan.stage_dir(sid) / "OUTCOME.json").exists()


def _stalling_worker(plan, sid: str, rec: str, stale_after: float) -> None:
    run_worker(plan, executor=TickExecutor(Path(rec), ticks=600, tick_s=0.05), worker="stalled", stage_ids=[sid],
               stale_after=stale_after, heartbeat_every=0.25, poll=0.2)


def _wait_for(predicate, timeout: float = 180.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_sigstopped_worker_loses_its_stage_and_stops(tmp_path: Path) -> None:
    """A real worker process is SIGSTOPped past stale_after; a second worker takes the stage and
    SIGCONTs the first, which stops within a heartbeat, never records anything, and exits cleanly;
    the stage completes exactly once, by the second worker."""
    stale = 2.0
    plan = make_plan(tmp_path, SMALL)
    rec = tmp_path / "rec"
    sid = plan.of_kind("intermediate")[0].id
    store = open_store(plan.output_dir, stale_after=stale)
    store.register_plan(plan)
    proc = mp.get_context("spawn").Process(target=_stalling_worker, args=(plan, sid, str(rec), stale))
    proc.start()
    try:
        _wait_for(lambda: any(rec.glob(f"tick-{proc.pid}-*")), what="the first worker to start its stage")
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(stale + 0.8)
        summary = run_worker(plan, executor=TickExecutor(rec, ticks=30, tick_s=0.1, cont=proc.pid), worker="new",
                             stage_ids=[sid], stale_after=stale, heartbeat_every=0.25, poll=0.2)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.join(120)
    assert proc.exitcode == 0
    assert summary.ran == [sid]
    cont = float((rec / "cont").read_text())
    stopped = float((rec / f"stopped-{proc.pid}").read_text())
    assert not (rec / f"done-{proc.pid}").exists()
    assert cont <= stopped < cont + 3.0  # it stopped right after it resumed
    assert all(float(t.read_text()) <= stopped for t in rec.glob(f"tick-{proc.pid}-*"))
    row = store.stage_rows([sid])[0]
    assert row["state"] == "done" and row["attempts"] == 2 and row["error"] is None
    assert json.loads(row["result"])["pid"] == os.getpid()
    assert (plan.stage_dir(sid) / "model" / "weights").read_text() == f"{sid} by {os.getpid()}"
    assert len(list(rec.glob("done-*"))) == 1


# =========================================================================== item 3: SIGTERM


_RUN_SCRIPT = """
import json, sys
from pathlib import Path
from tests.test_runner import RecordingExecutor
from xstilts.experiments import parse_spec, plan_stages, run_local
spec, spec_file, rec, hold = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
plan = plan_stages(parse_spec(spec, spec_file))
try:
    run_local(plan, workers=2, executor=RecordingExecutor(rec, hold=hold, hold_kind="target"), tick=0.2)
except KeyboardInterrupt as exc:
    print("stopped by", type(exc).__name__, flush=True)
    sys.exit(143)
"""


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(kids - out)
            out |= kids
    return out


def _spec_dict(tmp_path: Path, spec: dict, out: str = "out") -> dict:
    return {**spec, "output_dir": str(tmp_path / out), "data_dir": str(tmp_path)}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_sigterm_stops_every_worker_and_resumes_identically(tmp_path: Path) -> None:
    spec = _spec_dict(tmp_path, SMALL)
    rec, hold = tmp_path / "rec", tmp_path / "hold"
    hold.touch()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _RUN_SCRIPT, json.dumps(spec), str(tmp_path / "spec.yaml"), str(rec),
                             str(hold)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    plan = plan_stages(parse_spec(spec, tmp_path / "spec.yaml"))
    try:
        def two_running() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"run ended early: {proc.stdout.read().decode()[-3000:]}")
            if not (plan.output_dir / "results.sqlite").is_file():
                return False
            with open_store(plan.output_dir) as s:
                return sum(st == "running" for st in s.states().values()) == 2
        _wait_for(two_running, what="two held stages")
        pids = _children(proc.pid)
        with open_store(plan.output_dir) as s:
            workers = {r["pid"] for r in s.stage_rows() if r["state"] == "running"}
        assert workers <= pids and len(workers) == 2
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out.decode()[-3000:]
    assert b"stopped by Terminated" in out
    _wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=30, what="every child process to end")
    with open_store(plan.output_dir) as s:
        assert "running" not in s.states().values()  # claims released
    # resume (no hold): every stage finishes exactly once; results equal an uninterrupted run
    hold.unlink()
    states = run_local(plan, executor=RecordingExecutor(rec))
    assert set(states.values()) == {"done"}
    assert records(rec, "done") == Counter({sid: 1 for sid in plan.stages})
    ref = plan_stages(parse_spec(_spec_dict(tmp_path, SMALL, "ref"), tmp_path / "spec.yaml"))
    run_local(ref, executor=RecordingExecutor(tmp_path / "rec-ref"))
    assert _frame(plan.output_dir).equals(_frame(ref.output_dir))


class SelfTerm(RecordingExecutor):
    """Sends SIGTERM to its own process when a stage starts (so the signal always comes while the
    worker's handler is installed), then works on for 30 s unless stopped."""

    def __call__(self, task: StageTask) -> StageOutcome:
        (self.record_dir).mkdir(parents=True, exist_ok=True)
        (self.record_dir / f"start-{task.stage_id}-{os.getpid()}-{time.monotonic_ns()}").touch()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        raise AssertionError("SIGTERM did not stop the stage")


def test_sigterm_in_process_releases_the_claim(tmp_path: Path) -> None:
    """Fast, one worker in this process: SIGTERM stops like Ctrl-C, the claim goes back to waiting."""
    from xstilts.experiments.runner import Terminated

    plan = make_plan(tmp_path, SMALL)
    rec = tmp_path / "rec"
    t0 = time.time()
    with pytest.raises(Terminated):
        run_local(plan, executor=SelfTerm(rec))
    assert time.time() - t0 < 20
    with open_store(plan.output_dir) as s:
        assert "running" not in s.states().values()
    assert set(run_local(plan, executor=RecordingExecutor(rec)).values()) == {"done"}
    assert records(rec, "done") == Counter({sid: 1 for sid in plan.stages})


# =========================================================================== item 4: full disk


class FullDiskExecutor(RecordingExecutor):
    """Fails the first stage it runs with ``error`` (a full disk, as some library reports it)."""

    def __init__(self, record_dir: Path, error: BaseException):
        super().__init__(record_dir)
        self.error = error

    def __call__(self, task: StageTask) -> StageOutcome:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        (self.record_dir / f"start-{task.stage_id}-{os.getpid()}-{time.monotonic_ns()}").touch()
        raise self.error


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device", "/somewhere/xstilts-home/features/x.arrow"),
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1472 vs 1360"),
    RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on "
                 "device\" }) os error 28"),
], ids=["enospc", "torch", "safetensors"])
def test_full_disk_in_a_stage_stops_with_one_clear_error(tmp_path: Path, error: BaseException) -> None:
    plan = make_plan(tmp_path, SMALL)
    rec = tmp_path / "rec"
    with pytest.raises(DiskFullError) as info:
        run_local(plan, executor=FullDiskExecutor(rec, error))
    msg = str(info.value)
    assert "no space left on device on the file system of" in msg and "run the same command again" in msg
    assert sum(records(rec, "start").values()) == 1  # no next stage
    with open_store(plan.output_dir) as s:
        assert set(s.states().values()) == {"waiting"}  # the claim went back; nothing failed
    assert _integrity(plan.output_dir) == "ok"
    assert set(run_local(plan, executor=RecordingExecutor(rec)).values()) == {"done"}


def test_full_store_disk_is_one_clear_error_and_the_store_stays_consistent(tmp_path: Path, monkeypatch) -> None:
    """SQLite's "database or disk is full" (simulated exactly with max_page_count) when a stage's
    metrics are written: one DiskFullError naming the store, no half row, resumable."""
    import xstilts.experiments.runner as runner

    plan = make_plan(tmp_path, SMALL)
    rec = tmp_path / "rec"
    real_open = runner.open_store

    def full_store(output_dir, **kw):
        store = real_open(output_dir, **kw)
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
        return store

    first = run_local(plan, executor=RecordingExecutor(rec, sleep=0.0), in_process=True)  # fills some pages
    assert set(first.values()) == {"done"}
    with open_store(plan.output_dir) as s:  # make every eval stage run again, with many metric rows
        s._conn.execute("DELETE FROM metrics")
        s._conn.execute("UPDATE stages SET state = 'waiting' WHERE kind = 'eval'")
        s._conn.execute("VACUUM")

    class ManyRows(RecordingExecutor):
        def __call__(self, task: StageTask) -> StageOutcome:
            out = super().__call__(task)
            out.metrics = [(f"l{i}", "dev", f"m{j}", 1.0) for i in range(60) for j in range(60)]
            return out

    monkeypatch.setattr(runner, "open_store", full_store)
    with pytest.raises(DiskFullError) as info:
        run_worker(plan, executor=ManyRows(rec))
    assert "results store" in str(info.value) and str(plan.output_dir) in str(info.value)
    monkeypatch.setattr(runner, "open_store", real_open)
    assert _integrity(plan.output_dir) == "ok"
    with open_store(plan.output_dir) as s:
        assert s.metrics_frame().empty  # no half-written stage
        assert "running" not in s.states().values()
    assert set(run_local(plan, executor=RecordingExecutor(rec)).values()) == {"done"}


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


class BigWriter(RecordingExecutor):
    """Writes ``size`` bytes of model per training stage (a real write on a real file system)."""

    def __init__(self, record_dir: Path, size: int):
        super().__init__(record_dir)
        self.size = size

    def __call__(self, task: StageTask) -> StageOutcome:
        out = super().__call__(task)
        if task.kind != "eval":
            with (task.stage_dir / "model" / "big.bin").open("wb") as fh:
                fh.write(os.urandom(self.size))
        return out


@pytest.mark.soak
def test_full_tmpfs_output_dir_real(tmp_path: Path) -> None:
    """A real 2 MB file system as the output dir: the second model write fills it."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "2m"):
        pytest.skip("needs root to mount a tmpfs")
    try:
        plan = make_plan(mnt, SMALL)
        with pytest.raises(DiskFullError) as info:
            run_local(plan, executor=BigWriter(tmp_path / "rec", 900_000))
        assert str(mnt) in str(info.value)
        assert _integrity(plan.output_dir) == "ok"
        with open_store(plan.output_dir) as s:
            rows = s.stage_rows()
        assert "failed" not in {r["state"] for r in rows}
        # the claim could not be given back (the store's disk is full too): it is this process's, and
        # the next run takes it back once this process has ended (dead pid)
        assert all(r["pid"] == os.getpid() for r in rows if r["state"] == "running")
    finally:
        _umount(mnt)


# =========================================================================== item 5: damaged store


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "header":
        data[:100] = os.urandom(100)
    elif how == "pages":
        page = int.from_bytes(data[16:18], "big") or 65536
        data[page:] = os.urandom(len(data) - page)
    else:
        data = data[: len(data) // 3]
    path.write_bytes(bytes(data))


def _finished_run(tmp_path: Path):
    spec_file = tmp_path / "spec.yaml"
    spec = _spec_dict(tmp_path, SMALL)
    spec_file.write_text(yaml.safe_dump(spec))
    plan = plan_stages(parse_spec(spec, spec_file))
    run_local(plan, executor=RecordingExecutor(tmp_path / "rec"))
    for suffix in ("-wal", "-shm"):  # everything is in the main file once the last connection closed
        assert not Path(str(plan.output_dir / "results.sqlite") + suffix).exists()
    return plan, spec_file


@pytest.mark.parametrize("how", ["header", "pages", "truncated"])
def test_damaged_store_is_a_clear_error_and_rebuild_restores_it(tmp_path: Path, how: str) -> None:
    plan, spec_file = _finished_run(tmp_path)
    before = _frame(plan.output_dir)
    db = plan.output_dir / "results.sqlite"
    _corrupt(db, how)
    with pytest.raises(StoreError) as info:
        with open_store(plan.output_dir) as s:
            s.states()
            s.metrics_frame()
    assert str(db) in str(info.value) and f"xstilts store rebuild {plan.output_dir}" in str(info.value)
    for command in (["status", str(spec_file)], ["results", str(spec_file), "--format", "csv"], ["run", str(spec_file)]):
        result = _cli(*command)
        assert result.exit_code == 2, (command, result.output)
        assert "store rebuild" in result.output and "Traceback" not in result.output, result.output
    result = _cli("store", "rebuild", str(plan.output_dir))
    assert result.exit_code == 0, result.output
    assert f"{len(plan)} stage(s)" in result.output and f"{len(plan)} done" in result.output
    assert list(plan.output_dir.glob("results.sqlite.old-*"))  # the damaged file is kept
    assert _frame(plan.output_dir).equals(before)
    rec = tmp_path / "rec"
    n = sum(records(rec, "start").values())
    assert set(run_local(plan, executor=RecordingExecutor(rec)).values()) == {"done"}
    assert sum(records(rec, "start").values()) == n  # nothing re-run


def test_rebuild_from_layer_records_with_the_spec(tmp_path: Path) -> None:
    """Stage dirs without stage.json/OUTCOME.json (older runs): restored from the spec's plan and the
    layers' records (DONE for training, metrics.json for evaluation); unfinished stages wait."""
    plan, spec_file = _finished_run(tmp_path)
    before = _frame(plan.output_dir)
    unfinished = plan.of_kind("eval")[0].id
    for sid in plan.stages:
        d = plan.stage_dir(sid)
        (d / "stage.json").unlink()
        outcome = json.loads((d / "OUTCOME.json").read_text())
        (d / "OUTCOME.json").unlink()
        if plan.stages[sid].kind != "eval":
            (d / "DONE").write_text(json.dumps({"steps": 3}))
        elif sid != unfinished:
            per = {}
            for lang, _split, metric, value in outcome["metrics"]:
                per.setdefault(lang, {})[metric] = value
            (d / "metrics.json").write_text(json.dumps({"task": "panx", "split": "dev", "per_language": per}))
    (plan.output_dir / "results.sqlite").write_bytes(b"garbage" * 100)
    result = _cli("store", "rebuild", str(plan.output_dir))
    assert result.exit_code == 0 and "pass the spec" in result.output, result.output
    result = _cli("store", "rebuild", str(plan.output_dir), "--spec", str(spec_file))
    assert result.exit_code == 0, result.output
    with open_store(plan.output_dir) as s:
        states = s.states()
    assert states[unfinished] == "waiting" and all(st == "done" for sid, st in states.items() if sid != unfinished)
    after = _frame(plan.output_dir)
    assert after.equals(before[before["stage_id"] != unfinished].reset_index(drop=True))


# =========================================================================== item 7: eval with no data


class NoScores(RecordingExecutor):
    def __call__(self, task: StageTask) -> StageOutcome:
        out = super().__call__(task)
        if task.kind == "eval":
            return StageOutcome(metrics=[], result={"skipped": {lang: "no data" for lang in task.settings["languages"]}})
        return out


def test_eval_that_scored_nothing_fails_and_is_retried(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, SMALL)
    rec = tmp_path / "rec"
    states = run_local(plan, executor=NoScores(rec))
    evals = [s.id for s in plan.of_kind("eval")]
    assert all(states[e] == "failed" for e in evals)
    with open_store(plan.output_dir) as s:
        assert all("scored no language" in r["error"] for r in s.stage_rows(evals))
    assert set(run_local(plan, executor=RecordingExecutor(rec)).values()) == {"done"}


def test_eval_done_without_metrics_is_redone(tmp_path: Path) -> None:
    """A store written before the fix (an eval "done" with zero rows) runs that eval again."""
    plan = make_plan(tmp_path, SMALL)
    rec = tmp_path / "rec"
    run_local(plan, executor=RecordingExecutor(rec))
    ev = plan.of_kind("eval")[0].id
    with open_store(plan.output_dir) as s:
        s._conn.execute("DELETE FROM metrics WHERE stage_id = ?", (ev,))
    run_local(plan, executor=RecordingExecutor(rec))
    assert records(rec, "start")[ev] == 2


@pytest.mark.soak
def test_eval_with_a_wrong_data_dir_fails_then_runs_once_fixed(tmp_path: Path, tiny_model_dir: Path,
                                                               shared_data: Path) -> None:
    """The real executor: an eval-only target (Tatoeba, base model) with a data dir lacking its files
    fails (not "done" with zero rows); fixing the data dir re-runs it (same stage id)."""
    spec = {"models": [{"name": "tiny", "name_or_path": str(tiny_model_dir)}], "intermediate": {"baseline": None},
            "targets": [{"task": "tatoeba", "languages": ["de"]}], "seeds": [0], "max_examples": {"eval": 8},
            "output_dir": str(tmp_path / "out")}
    wrong = plan_stages(parse_spec({**spec, "data_dir": str(tmp_path / "nodata")}, tmp_path / "s.yaml"))
    (tmp_path / "nodata").mkdir()
    states = run_local(wrong)
    assert set(states.values()) == {"failed"}
    fixed = plan_stages(parse_spec({**spec, "data_dir": str(shared_data)}, tmp_path / "s.yaml"))
    assert list(fixed.stages) == list(wrong.stages)
    assert set(run_local(fixed).values()) == {"done"}
    assert not _frame(fixed.output_dir).empty


# =========================================================================== item 8: errors found late


def _panx_data(root: Path, bad_line: int | None = None, n: int = 20, langs=("en", "de")) -> Path:
    """A synthetic PAN-X layout (token<TAB>tag), optionally with a malformed line in dev-de."""
    (root / "panx").mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        for lang in langs:
            lines, no = [], 0
            for i in range(n):
                for j in range(3):
                    no += 1
                    tag = "B-PER" if j == 0 else "O"
                    lines.append("oops-no-tag" if (split, lang, no) == ("dev", "de", bad_line) else f"w{i}{j}\t{tag}")
                lines.append("")
                no += 1
            (root / "panx" / f"{split}-{lang}.tsv").write_text("\n".join(lines) + "\n")
    return root


def _late_spec(tmp_path: Path, data: Path, **intermediate) -> dict:
    return {"models": ["e5-small"], "intermediate": {"baseline": None, **intermediate},
            "targets": [{"task": "panx", "languages": ["en", "de"]}], "seeds": [0],
            "output_dir": str(tmp_path / "out"), "data_dir": str(data)}


def _preflight_problems(spec: dict, tmp_path: Path, **kw) -> str:
    from xstilts.experiments.preflight import preflight

    plan = plan_stages(parse_spec(spec, tmp_path / "spec.yaml"))
    with pytest.raises(ConfigError) as info:
        preflight(plan, **kw)
    return str(info.value)


def test_preflight_reports_every_late_error_at_once(tmp_path: Path) -> None:
    data = _panx_data(tmp_path / "data", bad_line=5)
    spec = _late_spec(tmp_path, data,
                      extra={"task": "panx_en", "extra_files": [str(tmp_path / "missing.tsv")], "extra_ratio": 0.5},
                      mlm={"task": "panx_en", "mlm": {"files": [str(tmp_path / "wiki.txt")]}})
    spec["hyperparameters"] = {"target": {"precision": "fp16"}}
    msg = _preflight_problems(spec, tmp_path, cuda=False)
    assert "extra training file not found" in msg and "missing.tsv" in msg
    assert "MLM text file not found" in msg and "wiki.txt" in msg
    assert "fp16" in msg and "GPU" in msg
    assert "dev-de.tsv" in msg and "line 5" in msg
    assert "nothing was trained" in msg


def test_preflight_wrong_data_dir_for_an_eval_only_target(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    spec = {"models": ["e5-small"], "intermediate": {"baseline": None},
            "targets": [{"task": "tatoeba", "languages": ["de", "fr"]}], "seeds": [0],
            "output_dir": str(tmp_path / "out"), "data_dir": str(tmp_path / "empty")}
    msg = _preflight_problems(spec, tmp_path)
    assert "no data for tatoeba/de" in msg and "no data for tatoeba/fr" in msg and str(tmp_path / "empty") in msg


def test_preflight_quick_reads_first_records_full_reads_all(tmp_path: Path) -> None:
    from xstilts.experiments.preflight import HEAD_BYTES, preflight

    data = _panx_data(tmp_path / "data", bad_line=4 * (HEAD_BYTES // 10) - 2, n=HEAD_BYTES // 10)
    plan = plan_stages(parse_spec(_late_spec(tmp_path, data), tmp_path / "spec.yaml"))
    assert preflight(plan).files_checked == 3  # train-en, dev-en, dev-de; the bad line is far past the first records
    with pytest.raises(ConfigError, match="dev-de.tsv"):
        preflight(plan, full=True)
    bad_early = _panx_data(tmp_path / "data2", bad_line=9, n=HEAD_BYTES // 10)
    plan = plan_stages(parse_spec(_late_spec(tmp_path, bad_early), tmp_path / "spec.yaml"))
    with pytest.raises(ConfigError, match=r"dev-de.tsv \(first records\), line 9"):
        preflight(plan)


def test_preflight_skips_finished_stages_and_passes_good_data(tmp_path: Path) -> None:
    from xstilts.experiments.preflight import preflight

    data = _panx_data(tmp_path / "data", bad_line=5)
    plan = plan_stages(parse_spec(_late_spec(tmp_path, data), tmp_path / "spec.yaml"))
    states = {s.id: "done" for s in plan.of_kind("eval")}
    assert preflight(plan, states=states).stages_checked == len(plan) - len(states)
    good = plan_stages(parse_spec(_late_spec(tmp_path, _panx_data(tmp_path / "good")), tmp_path / "spec.yaml"))
    assert preflight(good).problems == []


def test_cli_run_stops_before_training_on_bad_inputs(tmp_path: Path) -> None:
    data = _panx_data(tmp_path / "data", bad_line=5)
    spec = _late_spec(tmp_path, data, extra={"task": "panx_en", "extra_files": [str(tmp_path / "missing.tsv")],
                                             "extra_ratio": 0.5})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    result = _cli("run", str(spec_file))
    assert result.exit_code == 2, result.output
    assert "nothing was trained" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "stages").exists()  # no stage started


# =========================================================================== slow: real model, real processes


def _tiny_spec(tmp_path: Path, model: Path, data: Path, out: str, steps: int = 40) -> dict:
    hp = {"max_steps": steps, "batch_size": 4, "max_length": 32, "save_every": 5, "eval_every": 0,
          "eval_max_examples": 8}
    return {"models": [{"name": "tiny", "name_or_path": str(model)}],
            "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"}},
            "targets": [{"task": "panx", "languages": ["en", "de"]}], "seeds": [0],
            "hyperparameters": {"intermediate": hp, "target": hp, "eval": {"batch_size": 8}},
            "max_examples": {"intermediate": 16, "target": 16, "eval": 8},
            "data_dir": str(data), "output_dir": str(tmp_path / out)}


@pytest.mark.soak
def test_sigterm_cli_two_workers_real_model(tmp_path: Path, tiny_model_dir: Path, shared_data: Path) -> None:
    """`xstilts run --workers 2` on a tiny model: SIGTERM while both train; every process ends (by
    PID), claims are released; the rerun finishes with the same metrics as an uninterrupted run."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_tiny_spec(tmp_path, tiny_model_dir, shared_data, "out", steps=60)))
    cmd = [sys.executable, "-m", "xstilts.cli", "run", str(spec_file), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out_dir = tmp_path / "out"
    try:
        def training() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"run ended early: {proc.stdout.read().decode()[-3000:]}")
            ckpts = list(out_dir.glob("stages/*/checkpoints/step-*"))
            return len({c.parent.parent for c in ckpts}) >= 2
        _wait_for(training, timeout=600, what="two stages training")
        pids = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out.decode()[-3000:]
    assert b"Traceback" not in out
    _wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=60, what="every child process to end")
    with open_store(out_dir) as s:
        assert "running" not in s.states().values()
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    ref_file = tmp_path / "ref.yaml"
    ref_file.write_text(yaml.safe_dump(_tiny_spec(tmp_path, tiny_model_dir, shared_data, "ref", steps=60)))
    ref = subprocess.run([sys.executable, "-m", "xstilts.cli", "run", str(ref_file)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=1800)
    assert ref.returncode == 0, ref.stderr[-3000:]
    a, b = _frame(out_dir), _frame(tmp_path / "ref")
    assert a.drop(columns="value").equals(b.drop(columns="value"))
    assert (a["value"] - b["value"]).abs().max() < 1e-6


@pytest.mark.soak
def test_full_disk_cli_real_model(tmp_path: Path, tiny_model_dir: Path, shared_data: Path) -> None:
    """`xstilts run` with the output dir, then XSTILTS_HOME, on a real small tmpfs: one clear error
    naming the file system, exit 2, no traceback, a consistent store; training stops."""
    for which in ("output", "home"):
        mnt = tmp_path / f"small-{which}"
        if not _mount_tmpfs(mnt, "6m" if which == "output" else "1m"):
            pytest.skip("needs root to mount a tmpfs")
        try:
            out = mnt / "out" if which == "output" else tmp_path / f"out-{which}"
            spec = _tiny_spec(tmp_path, tiny_model_dir, shared_data, "x")
            spec["output_dir"] = str(out)
            spec_file = tmp_path / f"{which}.yaml"
            spec_file.write_text(yaml.safe_dump(spec))
            env = {**os.environ, "XSTILTS_HOME": str(mnt / "home" if which == "home" else tmp_path / "home")}
            if which == "home":
                import shutil

                (mnt / "filler").write_bytes(b"\0" * (shutil.disk_usage(mnt).free - 4096))
            r = subprocess.run([sys.executable, "-m", "xstilts.cli", "run", str(spec_file)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=900)
            text = r.stdout + r.stderr
            assert r.returncode == 2, text[-3000:]
            assert "no space left on device on the file system of" in text and str(mnt) in text, text[-3000:]
            assert "Traceback" not in text, text[-3000:]
            assert _integrity(out) == "ok"
            with open_store(out) as s:
                rows = s.stage_rows()
            assert {r["state"] for r in rows} <= {"waiting", "running"}  # nothing failed, training stopped
            assert not any(pid_alive(r["pid"]) for r in rows if r["state"] == "running")  # taken back next run
        finally:
            _umount(mnt)


@pytest.mark.soak
def test_sigstop_real_training_stage(tmp_path: Path, tiny_model_dir: Path, shared_data: Path) -> None:
    """A worker training a tiny model is SIGSTOPped past stale_after; a second worker takes the stage
    over and finishes it; the first stops within seconds of SIGCONT and never marks the stage."""
    from xstilts.experiments import TrainEvalExecutor

    spec = _tiny_spec(tmp_path, tiny_model_dir, shared_data, "out", steps=150)
    plan = plan_stages(parse_spec(spec, tmp_path / "spec.yaml"))
    sid = plan.of_kind("intermediate")[0].id
    stale = 3.0
    open_store(plan.output_dir, stale_after=stale).register_plan(plan)
    proc = mp.get_context("spawn").Process(target=_real_stalling_worker, args=(plan, sid, stale))
    proc.start()
    log = plan.stage_dir(sid) / "log.jsonl"
    try:
        _wait_for(lambda: log.is_file() and log.stat().st_size > 0, timeout=600, what="training to start")
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(stale + 1)

        class ContThenTrain(TrainEvalExecutor):
            def __call__(self, task: StageTask) -> StageOutcome:
                os.kill(proc.pid, signal.SIGCONT)
                return super().__call__(task)

        summary = run_worker(plan, executor=ContThenTrain(), stage_ids=[sid], stale_after=stale, heartbeat_every=0.5)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.join(300)
    assert summary.ran == [sid] and proc.exitcode == 0
    with open_store(plan.output_dir) as s:
        row = s.stage_rows([sid])[0]
    assert row["state"] == "done" and row["attempts"] == 2 and json.loads(row["result"])["steps"] == 150
    assert json.loads((plan.stage_dir(sid) / "DONE").read_text())["steps"] == 150


def _real_stalling_worker(plan, sid: str, stale: float) -> None:
    run_worker(plan, stage_ids=[sid], stale_after=stale, heartbeat_every=0.5, poll=0.5)


def test_worker_error_class_crosses_processes(tmp_path: Path) -> None:
    """A user error in one of several worker processes stops them all and is raised in the parent."""
    plan = make_plan(tmp_path, SMALL)
    with pytest.raises(DiskFullError):
        run_local(plan, workers=2, executor=FullDiskExecutor(tmp_path / "rec", OSError(errno.ENOSPC, "No space left")))
    with open_store(plan.output_dir) as s:
        assert "running" not in s.states().values()



def test_slurm_job_stops_on_sigterm_and_resumes(tmp_path: Path) -> None:
    """A Slurm job's SIGTERM (preemption, time limit) stops its stage at once: the job ends in error
    (so Slurm cancels the jobs after it), nothing is recorded as finished, and the next submission
    runs the stage again. Jobs never hold store claims (Slurm owns the queue)."""
    from xstilts.experiments.slurm import StageJobError, collect_results, slurm_job

    plan = make_plan(tmp_path, SMALL)
    root = next(s.id for s in plan if not s.depends_on)
    with pytest.raises(StageJobError, match="stopped by a signal"):
        slurm_job(plan, [root], SelfTerm(tmp_path / "rec"))
    assert not (plan.stage_dir(root) / "OUTCOME.json").exists()
    assert collect_results(plan) == {"done": 0, "failed": 0}
    out = slurm_job(plan, [root], RecordingExecutor(tmp_path / "rec"))
    assert out["ran"] == [root]
    collect_results(plan)
    with open_store(plan.output_dir) as s:
        assert s.states()[root] == "done"