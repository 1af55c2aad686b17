"""Fisher TaskEmb as its own cached step: computed once per (stage model, task), read by the report.

TaskEmb (Vu et al. 2020, §3.2) needs a model fine-tuned on each task and its gradients, so it
is far too slow for report time. :func:`compute_task_embeddings` computes it for every task
that has a single-task model in a results store (``xstilts report OUTPUT_DIR --compute-taskemb``,
or the runner after training) and saves it beside that stage's model::

    OUTPUT_DIR/stages/<stage_id>/task_emb/<task>.npy    the diagonal empirical Fisher (float32)
    OUTPUT_DIR/stages/<stage_id>/task_emb/<task>.json   how it was computed

:func:`load_task_embeddings` reads them back; the report only ever reads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xstilts.analysis.records import StageUse, TaskModel, setup_tasks, stage_uses, task_models
from xstilts.errors import XStiltsError
from xstilts.paths import TASK_EMB_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskEmbSettings:
    """How a TaskEmb is computed (recorded beside it)."""

    max_examples: int = 100
    max_length: int = 128
    seed: int = 0


def task_emb_path(model: TaskModel) -> Path:
    """Where the TaskEmb of ``model.task`` is cached: ``<stage dir>/task_emb/<task>.npy``."""
    return model.model_dir.parent / TASK_EMB_DIR / f"{model.task}.npy"


def _save(path: Path, vector: np.ndarray, model: TaskModel, settings: TaskEmbSettings) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, vector.astype(np.float32))
    os.replace(tmp, path)
    meta = {"task": model.task, "head": model.head, "split": model.split, "stage_id": model.stage_id,
            **asdict(settings)}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def compute_task_embedding(model: TaskModel, settings: TaskEmbSettings = TaskEmbSettings(), *,
                           data_dir: str | Path | None = None, force: bool = False) -> Path:
    """Compute (unless cached) and save the TaskEmb of one task model; returns its path.

    The Fisher is taken with the head the stage trained (``model.head``) on the English data it
    trained on (``model.split``; see :func:`xstilts.analysis.similarity.fisher_task_embedding`).
    """
    from xstilts.analysis.similarity import fisher_task_embedding

    path = task_emb_path(model)
    if path.is_file() and not force:
        return path
    log.info("TaskEmb of %s (head %s) from %s", model.task, model.head, model.model_dir)
    vector = fisher_task_embedding(model.model_dir, model.head, max_examples=settings.max_examples,
                                   max_length=settings.max_length, seed=settings.seed, data_dir=data_dir,
                                   split=model.split)
    _save(path, vector, model, settings)
    return path


def find_task_models(records: Sequence[StageUse], setups: Sequence[str] | None = None,
                     override: dict[str, list[str]] | None = None) -> dict[str, TaskModel]:
    """The single-task models of a store's records, by task (finished stages with a saved model)."""
    names = sorted({r.setup for r in records if r.setup}) if setups is None else list(setups)
    tasks_by_setup, _ = setup_tasks(records, names, override)
    done = [r for r in records if r.finished and r.has_model()]
    return task_models(done, tasks_by_setup)


@dataclass
class TaskEmbRun:
    """What :func:`compute_task_embeddings` did."""

    computed: dict[str, Path]
    failed: dict[str, str]


def compute_task_embeddings(output_dir: str | Path, *, settings: TaskEmbSettings = TaskEmbSettings(),
                            data_dir: str | Path | None = None, force: bool = False,
                            spec: str | Path | None = None) -> TaskEmbRun:
    """Compute and cache the TaskEmb of every task with a single-task model in ``output_dir``'s store
    (``spec``: only the stages of that spec's current plan). Failures are recorded, not raised."""
    from xstilts.analysis.report import restrict_to_spec
    from xstilts.analysis.store import load_frames

    metrics, stages = load_frames(output_dir)
    if spec is not None:
        metrics, stages = restrict_to_spec(metrics, stages, spec, output_dir)
    run = TaskEmbRun({}, {})
    for task, model in sorted(find_task_models(stage_uses(stages, output_dir)).items()):
        try:
            run.computed[task] = compute_task_embedding(model, settings, data_dir=data_dir, force=force)
        except (XStiltsError, OSError, ValueError, KeyError) as exc:
            run.failed[task] = f"{type(exc).__name__}: {exc}"
            log.warning("TaskEmb of %s failed: %s", task, exc)
    return run


def load_task_embeddings(models: dict[str, TaskModel]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Cached TaskEmb vectors of the tasks in ``models`` and, for the others, why there is none."""
    vectors: dict[str, np.ndarray] = {}
    missing: dict[str, str] = {}
    for task, model in sorted(models.items()):
        path = task_emb_path(model)
        if path.is_file():
            vectors[task] = np.load(path)
        else:
            missing[task] = f"not computed (no {path.relative_to(model.model_dir.parent.parent.parent)})"
    return vectors, missing
