"""The results store: atomic completion, claims, stale-claim recovery, the analysis frames."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xstilts.experiments import open_store, parse_spec, plan_stages
from xstilts.experiments.store import METRIC_COLUMNS, STAGE_COLUMNS

SPEC = {
    "models": ["e5-small"],
    "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"}},
    "targets": [{"task": "panx", "languages": ["en", "de"]}],
    "seeds": [0],
}


@pytest.fixture()
def plan(tmp_path: Path):
    return plan_stages(parse_spec({**SPEC, "output_dir": str(tmp_path), "data_dir": str(tmp_path)}, tmp_path / "s.yaml"))


def test_claims_follow_dependencies_and_complete_atomically(plan) -> None:
    store = open_store(plan.output_dir)
    store.register_plan(plan)
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ids = list(plan.stages)
    claimed = []
    while (c := store.claim_next(ids)) is not None:
        claimed.append(c.stage_id)
        # nothing downstream of a running stage can be claimed
        assert all(d in {x for x, s in store.states().items() if s == "done"} for d in plan.stages[c.stage_id].depends_on)
        rows = [("en", "dev", "f1", 80.0), ("de", "dev", "f1", 70.0)] if c.kind == "eval" else []
        store.complete(c.stage_id, rows, {"ok": True})
    assert sorted(claimed) == sorted(ids)
    m = store.metrics_frame()
    assert list(m.columns) == METRIC_COLUMNS
    assert set(m["setup"]) == {"baseline", "anli"} and set(m["language"]) == {"en", "de"}
    s = store.stages_frame()
    assert all(c in s.columns for c in STAGE_COLUMNS)
    assert set(s["state"]) == {"done"}


def test_failed_complete_leaves_no_half_row(plan) -> None:
    store = open_store(plan.output_dir)
    store.register_plan(plan)
    sid = plan.of_kind("intermediate")[0].id
    c = store.claim_next([sid])
    assert c is not None
    with pytest.raises(TypeError):  # a bad row in the middle aborts the whole transaction
        store.complete(sid, [("en", "dev", "f1", 1.0), ("de", "dev", "f1", object())])
    assert store.states()[sid] == "running"
    assert store.metrics_frame().empty


def test_dead_worker_claim_is_reclaimed(plan, tmp_path: Path) -> None:
    sid = plan.of_kind("intermediate")[0].id
    code = (f"from xstilts.experiments.store import open_store; s=open_store({str(tmp_path)!r}); "
            f"print(s.claim_next([{sid!r}]).stage_id)")
    open_store(plan.output_dir).register_plan(plan)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == sid  # the child claimed it and exited without finishing
    store = open_store(plan.output_dir)
    assert store.states()[sid] == "running"
    c = store.claim_next([sid])
    assert c is not None and c.stage_id == sid and c.attempts == 2


def test_stale_heartbeat_is_reclaimed(plan) -> None:
    sid = plan.of_kind("intermediate")[0].id
    store = open_store(plan.output_dir, stale_after=0.2)
    store.register_plan(plan)
    assert store.claim_next([sid]) is not None
    # pretend the claim belongs to a live worker on another host that went silent
    store._conn.execute("UPDATE stages SET host = 'elsewhere', pid = 1 WHERE stage_id = ?", (sid,))
    assert store.claim_next([sid]) is None  # still fresh
    time.sleep(0.3)
    assert store.claim_next([sid]) is not None


def test_shared_stage_gets_metrics_under_a_new_spec_label(plan, tmp_path: Path) -> None:
    store = open_store(plan.output_dir)
    store.register_plan(plan)
    for sid in plan.stages:
        c = store.claim_next([sid])
        store.complete(sid, [("de", "dev", "f1", 55.0)] if c.kind == "eval" else [])
    # another spec (same output dir) calls the anli setup "nli": same stages, new label
    other = {**SPEC, "intermediate": {"nli": {"task": "anli", "split": "dev"}}}
    plan2 = plan_stages(parse_spec({**other, "output_dir": str(tmp_path), "data_dir": str(tmp_path)}, tmp_path / "t.yaml"))
    assert set(plan2.stages) <= set(plan.stages)
    store.register_plan(plan2)
    assert set(store.states(plan2.stages).values()) == {"done"}
    m = store.metrics_frame([s.id for s in plan2.of_kind("eval")])
    assert set(m["setup"]) == {"anli", "nli"} and (m["value"] == 55.0).all()
    assert os.path.exists(tmp_path / "results.sqlite")
