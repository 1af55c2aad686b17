"""The Slurm launcher's job graph, built and run with submitit's debug/local executors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.test_runner import RecordingExecutor, make_plan, records
from xstilts.experiments import open_store
from xstilts.experiments.slurm import submit_slurm


def test_job_graph_levels_and_dependencies(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    rec = tmp_path / "rec"
    sub = submit_slurm(plan, executor=RecordingExecutor(rec), cluster="debug", max_jobs_per_level=2,
                       folder=tmp_path / "slurm")
    levels = plan.levels()
    assert [lv.level for lv in sub.levels] == list(range(len(levels)))
    assert [set(lv.stage_ids) for lv in sub.levels] == [set(ids) for ids in levels]
    # roots first (intermediate + baseline targets + base-model retrieval eval), evals last
    assert "intermediate" in sub.levels[0].kinds and sub.levels[-1].kinds == ["eval"]
    assert sub.levels[0].dependency is None
    for prev, lv in zip(sub.levels, sub.levels[1:]):
        assert lv.dependency == "afterany:" + ":".join(prev.job_ids)
        assert len(lv.jobs) == min(2, len(lv.stage_ids))
    # every stage depends only on stages of earlier levels
    level_of = {sid: lv.level for lv in sub.levels for sid in lv.stage_ids}
    assert all(level_of[d] < level_of[s.id] for s in plan for d in s.depends_on)
    sub.wait()
    assert set(open_store(plan.output_dir).states(plan.stages).values()) == {"done"}
    assert records(rec, "start") == Counter({sid: 1 for sid in plan.stages})
    # re-submitting after everything is done submits nothing
    again = submit_slurm(plan, executor=RecordingExecutor(rec), cluster="debug", folder=tmp_path / "slurm")
    assert again.levels == []


def test_local_submitit_jobs_wait_for_upstream(tmp_path: Path) -> None:
    """submitit's local executor starts every level at once; workers still respect dependencies."""
    plan = make_plan(tmp_path, {"models": ["e5-small"], "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"}},
                                "targets": [{"task": "panx", "languages": ["de"]}], "seeds": [0]})
    rec = tmp_path / "rec"
    sub = submit_slurm(plan, executor=RecordingExecutor(rec), cluster="local", max_jobs_per_level=1,
                       folder=tmp_path / "slurm")
    sub.wait()
    assert set(open_store(plan.output_dir).states(plan.stages).values()) == {"done"}
    assert records(rec, "done") == Counter({sid: 1 for sid in plan.stages})
