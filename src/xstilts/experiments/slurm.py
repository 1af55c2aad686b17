"""Running a plan on a Slurm cluster through ``submitit``: Slurm owns the queue.

SQLite's WAL mode does not work across hosts on a network file system, so **jobs never open
the results store**. What runs where:

- *Submitting host* (login node, one process): :func:`submit_slurm` merges the results of
  earlier submissions into the store (:func:`collect_results`), registers the plan, groups the
  unfinished stages into jobs (:func:`job_groups`) and submits one job per group, each with
  ``--dependency=afterok:`` on the jobs of its upstream stages (and ``--kill-on-invalid-dep``,
  so a failed upstream cancels what it reaches). There is no level barrier: a target's job
  starts as soon as the job of its own intermediate stage ends.
- *Compute nodes* (one job per group): :func:`slurm_job` runs the group's stages in order with
  the real executor and writes each stage's own records into its stage directory —
  ``stage.json`` (what it is), ``OUTCOME.json`` (metrics, when it finished) or ``FAILED.json``
  (the error) — and nothing else that is shared.
- *Back on the submitting host*: :func:`collect_results` (called by
  :meth:`SlurmSubmission.wait`, by the next ``xstilts run --launcher slurm``, by ``xstilts
  status`` / ``results``) is the single writer that records those files in the store.

A group is a stage plus the stages that can only follow it: its evaluations (short, read only
its model) and a chain step that is its only dependent. Re-submitting after a crash,
preemption or failure is always safe: finished stages are collected and skipped, an
interrupted stage resumes from its own checkpoints, failed stages are retried.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xstilts.errors import XStiltsError
from xstilts.experiments.executor import StageExecutor, StageTask
from xstilts.experiments.plan import Plan
from xstilts.experiments.store import DEFAULT_STALE_AFTER_S, open_store
from xstilts.fileio import write_json_atomic
from xstilts.paths import OUTCOME_FILE, STAGE_FILE

logger = logging.getLogger(__name__)

#: a stage directory's record of a Slurm stage that did not finish: ``{"error": ..., "finished_at": ...}``
#: when it failed, ``{"blocked_by": upstream id}`` when it could not start (the store keeps it waiting)
FAILED_FILE = "FAILED.json"
#: written into OUTPUT_DIR by :func:`submit_slurm`: its results are collected by ``xstilts status`` / ``results``
SUBMITTED_FILE = ".slurm-submitted"
#: how long a job without Slurm dependencies (submitit's local executor) waits for an upstream stage
LOCAL_WAIT_S = 24 * 3600.0


class StageJobError(XStiltsError):
    """A Slurm job did not finish a stage that other jobs depend on (failed, blocked or interrupted):
    the job ends in error, so Slurm cancels the jobs after it (``afterok``)."""


@dataclass
class JobGroup:
    """Stages run one after the other in one Slurm job, and the groups they wait for."""

    index: int
    stage_ids: list[str]
    after: list[int] = field(default_factory=list)  # indexes of upstream groups
    job: Any = None
    dependency: str | None = None  # the Slurm --dependency given to its job

    @property
    def job_id(self) -> str:
        return str(self.job.job_id) if self.job is not None else ""


@dataclass
class SlurmSubmission:
    """The submitted job graph: one job per group; ``held_back`` groups were not submitted (``max_jobs``)."""

    folder: Path
    plan: Plan
    groups: list[JobGroup]
    held_back: int = 0

    def all_jobs(self) -> list[Any]:
        return [g.job for g in self.groups if g.job is not None]

    def wait(self, collect: bool = True) -> dict[str, int]:
        """Block until every job ended (in submission order: what the debug executor needs), then
        record their results in the store (``collect``); returns :func:`collect_results`' counts."""
        for g in self.groups:
            try:
                g.job.result()
            except Exception as exc:  # noqa: BLE001 - a failed job's stages are recorded as failed
                logger.warning("job %s (%d stage(s)) ended in error: %s", g.job_id, len(g.stage_ids), exc)
        return collect_results(self.plan) if collect else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the job graph


def job_groups(plan: Plan, stage_ids: list[str]) -> list[JobGroup]:
    """Group ``stage_ids`` (in plan order) into Slurm jobs.

    A stage joins the group of its one unfinished upstream stage when it is an evaluation or
    that upstream stage's only dependent (a chain step); otherwise it starts a group that waits
    for the groups of its unfinished upstream stages. Groups come in topological order."""
    todo = set(stage_ids)
    dependents: dict[str, int] = {}
    for sid in stage_ids:
        for d in plan.stages[sid].depends_on:
            dependents[d] = dependents.get(d, 0) + 1
    group_of: dict[str, int] = {}
    groups: list[JobGroup] = []
    for stage in plan:
        if stage.id not in todo:
            continue
        upstream = [d for d in stage.depends_on if d in todo]
        if len(upstream) == 1 and (stage.kind == "eval" or dependents.get(upstream[0]) == 1):
            g = groups[group_of[upstream[0]]]
            g.stage_ids.append(stage.id)
        else:
            after = sorted({group_of[d] for d in upstream})
            g = JobGroup(len(groups), [stage.id], after)
            groups.append(g)
        group_of[stage.id] = g.index
    return groups


# --------------------------------------------------------------------------- on a compute node


def stage_finished(stage_dir: Path) -> bool:
    """Whether a stage's directory records it finished (``OUTCOME.json``)."""
    return (stage_dir / OUTCOME_FILE).is_file()


def _upstream_state(plan: Plan, stage_id: str, wait_s: float) -> str | None:
    """None when every upstream stage finished; else the first one that failed or is missing
    (after waiting up to ``wait_s`` for stages still running elsewhere)."""
    from xstilts.experiments.runner import Backoff

    idle = Backoff(0.2, 5.0)
    deadline = time.monotonic() + wait_s
    for d in plan.stages[stage_id].depends_on:
        while not stage_finished(plan.stage_dir(d)):
            if (plan.stage_dir(d) / FAILED_FILE).is_file() or time.monotonic() >= deadline:
                return d
            idle.sleep()
    return None


def run_stage_job(plan: Plan, stage_id: str, executor: StageExecutor, devices: int) -> str:
    """Run one stage in a Slurm job, recording only into its stage directory; "ran" or "failed"."""
    from xstilts.experiments.runner import check_outcome
    from xstilts.experiments.store import Claim

    stage = plan.stages[stage_id]
    stage_dir = plan.stage_dir(stage_id)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / FAILED_FILE).unlink(missing_ok=True)
    write_json_atomic(stage_dir / STAGE_FILE, stage.to_json())
    task = StageTask(stage_id, stage.kind, stage.settings, stage_dir, plan.output_dir, plan.data_dir, devices)
    try:
        outcome = executor(task)
        check_outcome(Claim(stage_id, stage.kind, stage.settings, 0), outcome)
    except Exception as exc:  # noqa: BLE001 - recorded; the job goes on with what does not need it
        logger.error("stage %s failed: %s", stage_id, exc)
        write_json_atomic(stage_dir / FAILED_FILE, {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                                                    "finished_at": time.time()})
        return "failed"
    write_json_atomic(stage_dir / OUTCOME_FILE, {"metrics": outcome.metrics, "result": outcome.result})
    logger.info("stage %s done", stage_id)
    return "ran"


def _job_stage(plan: Plan, sid: str, executor: StageExecutor, devices: int, wait_s: float,
               unfinished: set[str]) -> str:
    """One stage of a job: "done" (already), "blocked" (an upstream stage did not finish), "ran", "failed"."""
    if stage_finished(plan.stage_dir(sid)):
        return "done"
    missing = next((d for d in plan.stages[sid].depends_on if d in unfinished), None)
    missing = missing or _upstream_state(plan, sid, wait_s)
    if missing is not None:
        logger.warning("stage %s not run: upstream stage %s did not finish", sid, missing)
        stage_dir = plan.stage_dir(sid)
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stage_dir / FAILED_FILE, {"blocked_by": missing, "finished_at": time.time()})
        return "blocked"
    return run_stage_job(plan, sid, executor, devices)


def slurm_job(plan: Plan, stage_ids: list[str], executor: StageExecutor | None = None,
              wait_upstream_s: float = 0.0) -> dict[str, Any]:
    """What each Slurm job runs: its group's stages in order, each recorded in its stage directory.

    Upstream stages run by other jobs are finished when Slurm starts this one (``afterok``);
    without Slurm (submitit's local executor) the job waits up to ``wait_upstream_s`` for them.
    A failed stage does not stop the others of the group that do not need it. The job ends in
    :class:`StageJobError` when a stage that another job needs did not finish, or when SIGTERM
    (preemption, time limit, ``scancel``) stopped it — the interrupted stage keeps its
    checkpoints and resumes on the next submission."""
    from xstilts.experiments.executor import TrainEvalExecutor
    from xstilts.experiments.runner import interrupt_signals, visible_gpus

    executor = executor or TrainEvalExecutor()
    devices = len(visible_gpus())
    mine = set(stage_ids)
    summary: dict[str, list[str]] = {"ran": [], "failed": [], "blocked": [], "done": []}
    try:
        with interrupt_signals():
            for sid in stage_ids:
                unfinished = set(summary["failed"]) | set(summary["blocked"])
                summary[_job_stage(plan, sid, executor, devices, wait_upstream_s, unfinished)].append(sid)
    except KeyboardInterrupt as exc:
        raise StageJobError(f"stopped by a signal ({exc}) after {len(summary['ran'])} stage(s); re-submit to resume "
                            "(the interrupted stage keeps its checkpoints)") from None
    needed = {d for s in plan for d in s.depends_on if s.id not in mine}
    lost = [s for s in summary["failed"] + summary["blocked"] if s in needed]
    if lost:
        raise StageJobError(f"stage(s) {', '.join(lost)} did not finish and other jobs need them "
                            f"(see {FAILED_FILE} in their stage directories)")
    return summary


# --------------------------------------------------------------------------- on the submitting host


def collect_results(plan: Plan) -> dict[str, int]:
    """Record in the store every stage of ``plan`` that a Slurm job finished or failed since the last
    collection (from ``OUTCOME.json`` / ``FAILED.json``); the single writer, run on one host.
    Returns ``{"done": n, "failed": n}`` newly recorded."""
    from xstilts.experiments.rebuild import finished_outcome

    counts = {"done": 0, "failed": 0}
    with open_store(plan.output_dir) as store:
        store.register_plan(plan, retry_failed=False)
        states = store.states(plan.stages)
        for stage in plan:
            if states.get(stage.id) in ("done", "running"):
                continue
            stage_dir = plan.stage_dir(stage.id)
            finished = finished_outcome(stage_dir, stage.kind) if stage_finished(stage_dir) else None
            if finished is not None:
                store.record_done(stage.id, *finished)
                counts["done"] += 1
                continue
            failed = _read_json(stage_dir / FAILED_FILE)
            if isinstance(failed, dict) and "error" in failed and states.get(stage.id) != "failed":
                store.record_failed(stage.id, str(failed.get("error", "failed in a Slurm job")))
                counts["failed"] += 1
    if any(counts.values()):
        logger.info("collected Slurm results: %d done, %d failed", counts["done"], counts["failed"])
    return counts


def collect_if_submitted(plan: Plan) -> dict[str, int]:
    """:func:`collect_results` when Slurm jobs were submitted for ``plan``'s output dir (else nothing)."""
    if not (Path(plan.output_dir) / SUBMITTED_FILE).is_file():
        return {}
    return collect_results(plan)


def _executor_for(folder: Path, cluster: str | None, gpus_per_stage: int,
                  slurm_parameters: dict[str, Any] | None) -> Any:
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"timeout_min": 24 * 60, "nodes": 1, "tasks_per_node": 1, "name": "xstilts"}
    if ex.cluster == "slurm":
        params["slurm_gpus_per_task"] = gpus_per_stage
    params.update(slurm_parameters or {})
    ex.update_parameters(**params)
    return ex


def _submit_group(ex: Any, plan: Plan, g: JobGroup, groups: list[JobGroup], executor: StageExecutor | None,
                  extra: dict[str, Any]) -> None:
    """Submit one group's job, after its upstream groups' jobs (``afterok``)."""
    upstream = [groups[i].job_id for i in g.after]
    g.dependency = f"afterok:{':'.join(upstream)}" if upstream else None
    wait_s = 0.0
    if ex.cluster == "slurm":
        params = dict(extra)
        if g.dependency:
            params.update(dependency=g.dependency, kill_on_invalid_dep="yes")
        ex.update_parameters(slurm_additional_parameters=params)
    else:  # no scheduler enforces the order: the job waits for its upstream stages itself
        wait_s = LOCAL_WAIT_S
    g.job = ex.submit(slurm_job, plan, g.stage_ids, executor, wait_s)


def submit_slurm(plan: Plan, *, executor: StageExecutor | None = None, folder: str | Path | None = None,
                 max_jobs: int | None = None, cluster: str | None = None, gpus_per_stage: int = 1,
                 slurm_parameters: dict[str, Any] | None = None, stale_after: float = DEFAULT_STALE_AFTER_S,
                 command: str = "") -> SlurmSubmission:
    """Submit the unfinished stages of ``plan`` as one Slurm job per :func:`job_groups` group.

    ``cluster`` is passed to ``submitit.AutoExecutor`` (None: auto-detect Slurm; "local" or
    "debug" run the same jobs on this machine, for tests). ``slurm_parameters`` go to
    ``executor.update_parameters`` (e.g. ``{"slurm_partition": "gpu", "timeout_min": 720}``).
    ``max_jobs`` submits only the first groups (upstream first; the cluster's ``MaxJobCount``
    may be lower than a grid's job count): submit again once they ran for the rest.
    ``stale_after`` is kept for callers of the earlier store-worker launcher (unused: jobs hold no claims).
    """
    folder = Path(folder) if folder is not None else Path(plan.output_dir) / "slurm"
    collect_results(plan)
    with open_store(plan.output_dir) as store:
        store.register_plan(plan)  # failed stages wait again: they are retried
        store.start_run(plan, command or "slurm")
        states = store.states(plan.stages)
    todo = [s.id for s in plan if states.get(s.id) != "done"]
    for sid in todo:  # a retried stage's old failure must not block jobs waiting for it (local executor)
        (plan.stage_dir(sid) / FAILED_FILE).unlink(missing_ok=True)
    groups = job_groups(plan, todo)
    (Path(plan.output_dir) / SUBMITTED_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    held = 0
    if max_jobs is not None and 0 < max_jobs < len(groups):
        held, groups = len(groups) - max_jobs, groups[:max_jobs]  # topological: upstream groups come first
    ex = _executor_for(folder, cluster, gpus_per_stage, slurm_parameters)
    extra = dict((slurm_parameters or {}).get("slurm_additional_parameters", {}))
    for g in groups:
        _submit_group(ex, plan, g, groups, executor, extra)
    logger.info("submitted %d stage(s) in %d job(s)%s", sum(len(g.stage_ids) for g in groups), len(groups),
                f"; {held} job(s) held back (max_jobs): submit again once these ran" if held else "")
    return SlurmSubmission(folder=folder, plan=plan, groups=groups, held_back=held)
