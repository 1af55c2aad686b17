"""Running a plan on a Slurm cluster through ``submitit``.

The plan's stages are grouped into levels (every stage of level k depends only on levels
< k: intermediate chain steps, then target training, then evaluation). Each level becomes
one job array of worker jobs that run the same claim-from-the-store loop as local workers
(:func:`~xstilts.experiments.runner.run_worker`) over that level's stages; level k's array
depends (``afterany``) on level k-1's jobs, so a failed stage blocks only what it reaches,
and re-submitting after a crash is always safe (finished stages are skipped, stale claims
taken back). Levels with nothing left to do are not submitted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xstilts.experiments.executor import StageExecutor
from xstilts.experiments.plan import Plan
from xstilts.experiments.store import DEFAULT_STALE_AFTER_S, open_store

logger = logging.getLogger(__name__)


@dataclass
class LevelJobs:
    """One level of the plan and the worker jobs submitted for it."""

    level: int
    kinds: list[str]
    stage_ids: list[str]
    jobs: list[Any] = field(default_factory=list)
    dependency: str | None = None  # the Slurm --dependency given to this level's jobs

    @property
    def job_ids(self) -> list[str]:
        return [str(j.job_id) for j in self.jobs]


@dataclass
class SlurmSubmission:
    """The submitted job graph, level by level."""

    folder: Path
    levels: list[LevelJobs]

    def all_jobs(self) -> list[Any]:
        return [j for lv in self.levels for j in lv.jobs]

    def wait(self) -> None:
        """Block until every job ended (level order: what the debug executor needs to run them)."""
        for lv in self.levels:
            for job in lv.jobs:
                job.result()


def slurm_worker(plan: Plan, stage_ids: list[str], executor: StageExecutor | None, stale_after: float) -> dict[str, Any]:
    """The function each Slurm job runs: a store-claiming worker over one level's stages.

    Slurm's SIGTERM (preemption, time limit, ``scancel``) gives the running stage back at once
    (submitit would only log it, and the claim would wait ``stale_after`` after the SIGKILL);
    re-submitting resumes it from its checkpoints."""
    import os

    from xstilts.experiments.runner import interrupt_signals, run_worker

    task = os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get("SUBMITIT_LOCAL_GLOBAL_RANK") or "0"
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_DEBUG_JOB_ID") or str(os.getpid())
    name = f"slurm-{job}-{task}"
    try:
        with interrupt_signals():
            summary = run_worker(plan, executor=executor, worker=name, stage_ids=stage_ids, stale_after=stale_after)
    except KeyboardInterrupt:
        logger.warning("[%s] stopped by a signal; its stage went back to waiting", name)
        return {"worker": name, "ran": [], "failed": [], "interrupted": True}
    return {"worker": summary.worker, "ran": summary.ran, "failed": summary.failed, "lost": summary.lost}


def submit_slurm(plan: Plan, *, executor: StageExecutor | None = None, folder: str | Path | None = None,
                 max_jobs_per_level: int = 8, cluster: str | None = None, gpus_per_stage: int = 1,
                 slurm_parameters: dict[str, Any] | None = None, stale_after: float = DEFAULT_STALE_AFTER_S,
                 command: str = "") -> SlurmSubmission:
    """Submit ``plan`` as one job array per level with dependencies between levels.

    ``cluster`` is passed to ``submitit.AutoExecutor`` (None: auto-detect Slurm; "local" or
    "debug" run the same graph on this machine, for tests). ``slurm_parameters`` go to
    ``executor.update_parameters`` (e.g. ``{"slurm_partition": "gpu", "timeout_min": 720}``).
    """
    import submitit

    folder = Path(folder) if folder is not None else Path(plan.output_dir) / "slurm"
    store = open_store(plan.output_dir, stale_after=stale_after)
    try:
        store.register_plan(plan)
        store.start_run(plan, command or "slurm")
        states = store.states(plan.stages)
    finally:
        store.close()
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"timeout_min": 24 * 60, "nodes": 1, "tasks_per_node": 1, "name": "xstilts"}
    if ex.cluster == "slurm":
        params["slurm_gpus_per_task"] = gpus_per_stage
    params.update(slurm_parameters or {})
    ex.update_parameters(**params)

    submission = SlurmSubmission(folder=folder, levels=[])
    previous: list[Any] = []
    for level, ids in enumerate(plan.levels()):
        todo = [sid for sid in ids if states.get(sid) != "done"]
        if not todo:
            continue
        n_jobs = max(1, min(max_jobs_per_level, len(todo)))
        dependency = f"afterany:{':'.join(str(j.job_id) for j in previous)}" if previous else None
        if ex.cluster == "slurm":
            extra = dict((slurm_parameters or {}).get("slurm_additional_parameters", {}))
            if dependency:
                extra["dependency"] = dependency
            else:
                extra.pop("dependency", None)
            ex.update_parameters(slurm_additional_parameters=extra, slurm_array_parallelism=n_jobs)
        with ex.batch():
            jobs = [ex.submit(slurm_worker, plan, todo, executor, stale_after) for _ in range(n_jobs)]
        kinds = sorted({plan.stages[s].kind for s in todo})
        submission.levels.append(LevelJobs(level, kinds, todo, jobs, dependency))
        logger.info("level %d (%s): %d stage(s), %d job(s)%s", level, "/".join(kinds), len(todo), n_jobs,
                    f", after {dependency}" if dependency else "")
        previous = jobs
    return submission
