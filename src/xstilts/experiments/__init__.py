"""Experiments: spec -> plan of content-hashed stages -> resumable runs -> results store.

Public API::

    load_spec(path, *, overrides=None) -> Spec            # validated; errors name file + key
    plan_stages(spec) -> Plan                             # DAG of Stage (ids = content hashes)
    open_store(output_dir) -> ResultsStore                # results.sqlite (WAL)
    ResultsStore.metrics_frame(), .stages_frame()         # what analysis reads
    run_worker(plan, executor=...), run_local(plan, workers=N), submit_slurm(plan, ...)
    StageExecutor / StageTask / StageOutcome, TrainEvalExecutor (train_stage + zero_shot_eval)
"""

from xstilts.experiments.executor import StageExecutor, StageOutcome, StageTask, TrainEvalExecutor
from xstilts.experiments.plan import Label, Plan, Stage, plan_stages, stage_dir, stage_id
from xstilts.experiments.runner import WorkerSummary, run_local, run_worker
from xstilts.experiments.spec import BASELINE, Spec
from xstilts.experiments.store import ResultsStore, open_store
from xstilts.experiments.validate import load_spec, parse_spec

__all__ = [
    "BASELINE",
    "Label",
    "Plan",
    "ResultsStore",
    "Spec",
    "Stage",
    "StageExecutor",
    "StageOutcome",
    "StageTask",
    "TrainEvalExecutor",
    "WorkerSummary",
    "load_spec",
    "open_store",
    "parse_spec",
    "plan_stages",
    "run_local",
    "run_worker",
    "stage_dir",
    "stage_id",
]
