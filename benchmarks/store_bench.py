"""Results-store claim time at scale: N stages, W concurrent worker processes claiming and completing.

A synthetic plan of the paper grid's shape (intermediate stages; per intermediate, target
stages; per target, evaluation stages) with N stages is registered in a fresh store. W worker
processes (spawned, each with its own connection, like ``xstilts run --workers W``) start
together and, until the time window ends, claim the next ready stage and complete it at once
(stages take no time, so this measures the store alone). Reported: claims per second over
all workers, and the median / 95th-percentile latency of one ``claim_next`` call. An idle
look (nothing ready: one intermediate running per worker, the others failed, so every waiting
stage waits for a running one or is blocked) is timed separately.

``old`` is the claim query before the O(1) rewrite (reads every waiting row and every done id
under the write lock), kept here only for comparison; it runs on the same store schema.

    python -m benchmarks.store_bench                      # 10k and 50k stages, 16 workers, new and old
    python -m benchmarks.store_bench --sizes 10000 --impl new --seconds 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class _Stage:
    id: str
    kind: str
    depends_on: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    labels: list[Any] = field(default_factory=list)


@dataclass
class _Plan:
    stages: dict[str, _Stage]

    def __iter__(self) -> Any:
        return iter(self.stages.values())


def synthetic_plan(n: int, targets_per_intermediate: int = 10, evals_per_target: int = 2) -> _Plan:
    """About ``n`` stages in topological order: intermediate → targets → evals (the paper grid's shape)."""
    per_chain = 1 + targets_per_intermediate * (1 + evals_per_target)
    stages: dict[str, _Stage] = {}
    for i in range(max(1, n // per_chain)):
        inter = _Stage(f"i{i:06d}", "intermediate", settings={"model": "m", "seed": i})
        stages[inter.id] = inter
        for t in range(targets_per_intermediate):
            tgt = _Stage(f"t{i:06d}-{t}", "target", (inter.id,), {"model": f"stage:{inter.id}", "t": t})
            stages[tgt.id] = tgt
            for e in range(evals_per_target):
                ev = _Stage(f"e{i:06d}-{t}-{e}", "eval", (tgt.id,), {"model": f"stage:{tgt.id}", "e": e})
                stages[ev.id] = ev
    return _Plan(stages)


def old_claim_next(store: Any, stage_ids: list[str], worker: str = "") -> Any:
    """The claim before the O(1) rewrite (same semantics), for comparison only."""
    import os

    from xstilts.experiments.store import Claim

    order = {sid: i for i, sid in enumerate(stage_ids)}
    with store._tx() as c:
        store.reclaim_stale(c)
        rows = c.execute("SELECT stage_id, kind, settings, depends_on, attempts FROM stages WHERE state = 'waiting'"
                         ).fetchall()
        candidates = sorted((r for r in rows if r["stage_id"] in order), key=lambda r: order[r["stage_id"]])
        if not candidates:
            return None
        done = {r[0] for r in c.execute("SELECT stage_id FROM stages WHERE state = 'done'")}
        for r in candidates:
            if all(d in done for d in json.loads(r["depends_on"])):
                now = time.time()
                c.execute("UPDATE stages SET state = 'running', host = ?, pid = ?, worker = ?, started_at = ?, "
                          "heartbeat = ?, attempts = attempts + 1 WHERE stage_id = ?",
                          (store.host, os.getpid(), worker, now, now, r["stage_id"]))
                return Claim(r["stage_id"], r["kind"], json.loads(r["settings"]), r["attempts"] + 1)
    return None


def _worker(path: str, ids: list[str], impl: str, ready: Any, start: Any, seconds: float, out: Any) -> None:
    from xstilts.experiments.store import ResultsStore

    store = ResultsStore(path)
    claim = (lambda: store.claim_next(ids)) if impl == "new" else (lambda: old_claim_next(store, ids))
    if impl == "new":
        store._want(ids)  # the per-worker id table, loaded once when a worker starts (untimed, like the imports)
    lat: list[float] = []
    ready.release()
    start.wait()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        c = claim()
        lat.append(time.perf_counter() - t0)
        if c is None:
            break
        store.complete(c)
    store.close()
    out.put(lat)


def _build_store(path: Path, plan: _Plan) -> None:
    from xstilts.experiments.store import ResultsStore

    with ResultsStore(path) as store:
        store.register_plan(plan)  # type: ignore[arg-type]
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _idle_look_ms(path: Path, ids: list[str], impl: str, workers: int, reps: int = 10) -> float:
    """Median time of a claim that finds nothing ready: ``workers`` intermediate stages are running
    (held, with a fresh heartbeat, by the other workers), the other intermediate stages failed, so
    every remaining stage waits for a running one or is blocked."""
    from xstilts.experiments.store import ResultsStore

    with ResultsStore(path) as store:
        store._conn.execute("UPDATE stages SET state = 'failed' WHERE kind = 'intermediate'")
        store._conn.execute("UPDATE stages SET state = 'running', host = 'elsewhere', pid = 1, heartbeat = ? "
                            "WHERE stage_id IN (SELECT stage_id FROM stages WHERE kind = 'intermediate' LIMIT ?)",
                            (time.time() + 3600, workers))
        store.claim_next(ids)  # loads this connection's id table (once per worker in a real run)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            got = store.claim_next(ids) if impl == "new" else old_claim_next(store, ids)
            times.append(time.perf_counter() - t0)
            assert got is None
    return statistics.median(times) * 1000


def measure(n: int, workers: int, impl: str, seconds: float, template: Path, ids: list[str], tmp: Path) -> dict[str, Any]:
    """One row: ``workers`` processes claiming from a copy of the ``template`` store for ``seconds``."""
    path = tmp / f"{impl}-{n}.sqlite"
    shutil.copy(template, path)
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), ids, impl, ready, start, seconds, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:  # every process imported and opened the store
        ready.acquire(timeout=600)
    t0 = time.perf_counter()
    start.set()
    lats = [x for _ in procs for x in out.get(timeout=seconds + 600)]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    lats_ms = sorted(x * 1000 for x in lats)
    idle_path = tmp / f"idle-{impl}-{n}.sqlite"
    shutil.copy(template, idle_path)
    return {"name": f"store claim, {n} stages, {workers} workers ({impl})", "stages": n, "workers": workers,
            "impl": impl, "claims": len(lats), "seconds": round(wall, 2), "claims_per_s": round(len(lats) / wall, 1),
            "p50_ms": round(lats_ms[len(lats_ms) // 2], 2), "p95_ms": round(lats_ms[int(len(lats_ms) * 0.95)], 2),
            "idle_look_ms": round(_idle_look_ms(idle_path, ids, impl, workers), 2)}


def store_rows(sizes: list[int], workers: int = 16, impls: tuple[str, ...] = ("new", "old"),
               seconds: float = 3.0, log: Any = None) -> list[dict[str, Any]]:
    """The benchmark rows: one per (size, implementation)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="xstilts-storebench-") as d:
        tmp = Path(d)
        for n in sizes:
            plan = synthetic_plan(n)
            ids = list(plan.stages)
            template = tmp / f"template-{n}.sqlite"
            t0 = time.perf_counter()
            _build_store(template, plan)
            if log:
                log(f"store: {len(ids)} stages registered in {time.perf_counter() - t0:.1f}s")
            for impl in impls:
                row = measure(len(ids), workers, impl, seconds, template, ids, tmp)
                if log:
                    log(f"  {row['name']}: {row['claims_per_s']} claims/s, p50 {row['p50_ms']} ms, "
                        f"p95 {row['p95_ms']} ms, idle look {row['idle_look_ms']} ms")
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,50000")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--impl", default="new,old")
    ap.add_argument("--seconds", type=float, default=3.0, help="claiming window per row")
    args = ap.parse_args(argv)
    rows = store_rows([int(x) for x in args.sizes.split(",")], args.workers, tuple(args.impl.split(",")),
                      args.seconds, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
