"""The store at scale: a claim's work does not grow with the number of stages, an idle look takes
no write lock, the per-stage count of unfinished upstream stages stays right, old files migrate."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from benchmarks.store_bench import synthetic_plan
from xstilts.experiments.runner import Backoff
from xstilts.experiments.store import SCHEMA_VERSION, ResultsStore


def _store(path: Path, n: int) -> tuple[ResultsStore, list[str]]:
    plan = synthetic_plan(n)
    store = ResultsStore(path)
    store.register_plan(plan)  # type: ignore[arg-type]
    return store, list(plan.stages)


def _vm_steps(store: ResultsStore, fn) -> int:
    """SQLite virtual-machine instructions (in thousands) spent in ``fn()``: a deterministic cost."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    store._conn.set_progress_handler(tick, 1000)
    try:
        fn()
    finally:
        store._conn.set_progress_handler(None, 0)
    return count[0]


def test_claim_cost_does_not_grow_with_the_number_of_stages(tmp_path: Path) -> None:
    costs = {}
    for n in (1_000, 20_000):
        store, ids = _store(tmp_path / f"s{n}.sqlite", n)
        first = store.claim_next(ids)  # loads the id list once per worker
        store.complete(first)
        steps = []
        for _ in range(20):
            claim = store.claim_next(ids)
            steps.append(_vm_steps(store, lambda: store.complete(claim)))
            steps.append(_vm_steps(store, lambda: store.claim_next(ids)))
        costs[n] = sorted(steps)[len(steps) // 2]
        store.close()
    assert costs[20_000] <= 2 * costs[1_000] + 5, costs


def test_ready_query_is_one_indexed_row(tmp_path: Path) -> None:
    store, ids = _store(tmp_path / "s.sqlite", 100)
    store._want(ids)
    for kinds in (None, ["eval"]):
        sql, params = store._ready_query(kinds)
        plan = " ".join(r[3] for r in store._conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX stages_ready" in plan and "TEMP B-TREE" not in plan and "SCAN stages" not in plan


def test_idle_look_takes_no_write_lock(tmp_path: Path) -> None:
    store, ids = _store(tmp_path / "s.sqlite", 100)
    while (c := store.claim_next(ids, kinds=["intermediate"])) is not None:
        pass  # every root running: nothing else is ready
    other = sqlite3.connect(store.path, isolation_level=None, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(store.claim_next(ids)))
    t.start()
    t.join(timeout=5)
    other.execute("ROLLBACK")
    assert not t.is_alive() and result == [None]


def test_pending_counts_follow_random_completion(tmp_path: Path) -> None:
    store, ids = _store(tmp_path / "s.sqlite", 600)
    rng = random.Random(0)
    deps = {r["stage_id"]: json.loads(r["depends_on"]) for r in store.stage_rows()}
    held = []
    done: set[str] = set()
    while True:
        c = store.claim_next(ids, kinds=rng.choice([None, ["eval"], ["intermediate", "target"]]))
        if c is None and not held:
            c = store.claim_next(ids)
            if c is None:
                break
        if c is not None:
            assert all(d in done for d in deps[c.stage_id])
            held.append(c)
        if held and (c is None or rng.random() < 0.5):
            claim = held.pop(rng.randrange(len(held)))
            if rng.random() < 0.1:
                store.release(claim)
                continue
            store.complete(claim)
            done.add(claim.stage_id)
    assert done == set(ids)
    recount = store._conn.execute(
        "SELECT COUNT(*) FROM stages WHERE pending_deps != (SELECT COUNT(*) FROM stage_deps d JOIN stages u ON "
        "u.stage_id = d.depends_on WHERE d.stage_id = stages.stage_id AND u.state != 'done')").fetchone()[0]
    assert recount == 0


def test_old_store_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE stages (stage_id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'waiting',
            settings TEXT NOT NULL, depends_on TEXT NOT NULL DEFAULT '[]', description TEXT, created_at REAL,
            started_at REAL, finished_at REAL, heartbeat REAL, host TEXT, pid INTEGER, worker TEXT,
            attempts INTEGER NOT NULL DEFAULT 0, error TEXT, result TEXT, progress TEXT);
        INSERT INTO stages (stage_id, kind, state, settings, depends_on) VALUES
            ('a', 'intermediate', 'done', '{}', '[]'), ('b', 'target', 'waiting', '{}', '["a"]'),
            ('c', 'eval', 'waiting', '{}', '["b"]');
    """)
    conn.close()
    with ResultsStore(path) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        c = store.claim_next(["a", "b", "c"])
        assert c is not None and c.stage_id == "b"
        assert store.claim_next(["a", "b", "c"]) is None
        store.complete(c)
        assert store.claim_next(["a", "b", "c"]).stage_id == "c"


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    b = Backoff(0.5, 4.0)
    waits = [b.next() for _ in range(6)]
    for w, nominal in zip(waits, [0.5, 1, 2, 4, 4, 4]):
        assert nominal / 2 <= w <= nominal
    b.reset()
    assert b.next() <= 0.5


@pytest.mark.parametrize("n", [2_000])
def test_store_bench_runs(tmp_path: Path, n: int) -> None:
    """The benchmark's machinery (2 workers, a short window)."""
    from benchmarks.store_bench import store_rows

    rows = store_rows([n], workers=2, seconds=0.5)
    assert [r["impl"] for r in rows] == ["new", "old"]
    assert all(r["claims"] > 0 and r["p95_ms"] >= r["p50_ms"] for r in rows)
