"""The Slurm launcher: Slurm owns the queue (one job per stage group, ``afterok`` dependencies, no
level barrier), jobs never open the results store, and one writer collects their results.
Built and run with submitit's debug (in-process) and local (one process per job) executors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.test_runner import RecordingExecutor, make_plan, records
from xstilts.experiments import open_store
from xstilts.experiments.executor import StageOutcome, StageTask
from xstilts.experiments.slurm import FAILED_FILE, StageJobError, collect_results, job_groups, slurm_job, submit_slurm


class FailOnce(RecordingExecutor):
    """Fails stages of one kind (raising) while the flag file exists."""

    def __init__(self, record_dir: Path, flag: Path, kind: str = "intermediate", setup_task: str = "anli"):
        super().__init__(record_dir)
        self.flag, self.kind, self.setup_task = flag, kind, setup_task

    def __call__(self, task: StageTask) -> StageOutcome:
        if self.flag.exists() and task.kind == self.kind:
            raise RuntimeError("boom")
        return super().__call__(task)


def test_job_graph_has_no_level_barrier(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    groups = job_groups(plan, list(plan.stages))
    group_of = {sid: g.index for g in groups for sid in g.stage_ids}
    assert sorted(group_of) == sorted(plan.stages)  # every stage in exactly one job
    for g in groups:
        # a job waits exactly for the jobs of its own stages' upstream stages, all submitted before it
        upstream = {group_of[d] for sid in g.stage_ids for d in plan.stages[sid].depends_on} - {g.index}
        assert set(g.after) == upstream and all(i < g.index for i in g.after)
        # inside a job, a stage comes after the upstream stages it shares the job with
        for pos, sid in enumerate(g.stage_ids):
            assert all(d not in g.stage_ids[pos:] for d in plan.stages[sid].depends_on)
    # an evaluation runs in the job of the stage it evaluates
    for stage in plan.of_kind("eval"):
        if stage.depends_on:
            assert group_of[stage.id] == group_of[stage.depends_on[0]]
    # a target's job waits for its own intermediate's job only, never for a whole level
    first_level = plan.levels()[0]
    targets = [s for s in plan.of_kind("target") if s.depends_on]
    assert targets and len([s for s in first_level if plan.stages[s].kind == "intermediate"]) > 1
    for t in targets:
        assert groups[group_of[t.id]].after == [group_of[t.depends_on[0]]]


def test_debug_executor_runs_the_graph_and_collects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = make_plan(tmp_path)
    rec = tmp_path / "rec"
    sub = submit_slurm(plan, executor=RecordingExecutor(rec), cluster="debug", folder=tmp_path / "slurm")
    assert len(sub.groups) < len(plan.stages)
    for g in sub.groups:
        want = "afterok:" + ":".join(sub.groups[i].job_id for i in g.after) if g.after else None
        assert g.dependency == want

    # jobs never open the results store (SQLite must not be shared across hosts)
    from xstilts.experiments import store as store_mod

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Slurm job opened the results store")

    with monkeypatch.context() as m:
        m.setattr(store_mod.ResultsStore, "__init__", refuse)
        sub.wait(collect=False)
    with open_store(plan.output_dir) as s:
        assert "done" not in s.states(plan.stages).values()  # nothing recorded until collected
    counts = collect_results(plan)
    assert counts == {"done": len(plan.stages), "failed": 0}
    with open_store(plan.output_dir) as s:
        assert set(s.states(plan.stages).values()) == {"done"}
        assert not s.metrics_frame().empty
    assert records(rec, "start") == Counter({sid: 1 for sid in plan.stages})
    # re-submitting after everything is done submits nothing
    again = submit_slurm(plan, executor=RecordingExecutor(rec), cluster="debug", folder=tmp_path / "slurm")
    assert again.groups == []


def test_failed_stage_blocks_only_what_needs_it_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pdb

    monkeypatch.setattr(pdb, "post_mortem", lambda *a: None)  # submitit's debug executor debugs a failed job
    plan = make_plan(tmp_path)
    rec, flag = tmp_path / "rec", tmp_path / "fail"
    flag.touch()
    sub = submit_slurm(plan, executor=FailOnce(rec, flag), cluster="debug", folder=tmp_path / "slurm")
    counts = sub.wait()
    failed = {s.id for s in plan.of_kind("intermediate") if not s.depends_on}  # chain steps after them are blocked
    reached = set().union(*(plan.downstream(s) for s in failed))
    with open_store(plan.output_dir) as s:
        states = s.states(plan.stages)
    assert {sid for sid, st in states.items() if st == "failed"} == failed
    assert all(states[sid] == "waiting" for sid in reached)
    assert all(states[sid] == "done" for sid in plan.stages if sid not in failed | reached)
    assert counts["failed"] == len(failed)
    assert all((plan.stage_dir(sid) / FAILED_FILE).is_file() for sid in failed)
    # the job of a failed stage others need ends in error (Slurm cancels the jobs after it)
    with pytest.raises(StageJobError, match="did not finish"):
        slurm_job(plan, [next(iter(failed))], FailOnce(rec, flag))
    flag.unlink()
    before = records(rec, "done")
    sub2 = submit_slurm(plan, executor=FailOnce(rec, flag), cluster="debug", folder=tmp_path / "slurm")
    assert {sid for g in sub2.groups for sid in g.stage_ids} == failed | reached
    sub2.wait()
    with open_store(plan.output_dir) as s:
        assert set(s.states(plan.stages).values()) == {"done"}
    assert records(rec, "done") - before == Counter({sid: 1 for sid in failed | reached})


def test_max_jobs_holds_back_the_rest(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    rec = tmp_path / "rec"
    sub = submit_slurm(plan, executor=RecordingExecutor(rec), cluster="debug", folder=tmp_path / "slurm", max_jobs=2)
    assert len(sub.groups) == 2 and sub.held_back > 0
    sub.wait()
    rest = submit_slurm(plan, executor=RecordingExecutor(rec), cluster="debug", folder=tmp_path / "slurm")
    rest.wait()
    with open_store(plan.output_dir) as s:
        assert set(s.states(plan.stages).values()) == {"done"}
    assert records(rec, "start") == Counter({sid: 1 for sid in plan.stages})


def test_local_submitit_jobs_wait_for_upstream(tmp_path: Path) -> None:
    """submitit's local executor starts every job at once; jobs still wait for their upstream stages."""
    plan = make_plan(tmp_path, {"models": ["e5-small"], "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"}},
                                "targets": [{"task": "panx", "languages": ["de"]}], "seeds": [0]})
    rec = tmp_path / "rec"
    sub = submit_slurm(plan, executor=RecordingExecutor(rec), cluster="local", folder=tmp_path / "slurm")
    sub.wait()
    with open_store(plan.output_dir) as s:
        assert set(s.states(plan.stages).values()) == {"done"}
    assert records(rec, "done") == Counter({sid: 1 for sid in plan.stages})
