"""Stage records as analysis reads them: which cell each stage served, what it trained, where its model is.

The analysis layer reads the experiment layer's records instead of guessing key names: a
stage's :class:`~xstilts.experiments.plan.StageRecord` (tasks, splits, languages, model
directory) is derived from its settings by the planner's own
:meth:`~xstilts.experiments.plan.StageRecord.from_settings`, its state is one of the store's
:data:`~xstilts.experiments.store.STATES`, and a stage row of ``ResultsStore.stages_frame()``
(one per use of a stage) adds the (model, setup, target, seed) label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from xstilts.experiments.plan import TRAIN_KINDS, StageRecord
from xstilts.experiments.spec import BASELINE
from xstilts.experiments.store import DONE
from xstilts.paths import MODEL_DIR, STAGES_DIR, XSTILTS_MODEL_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageUse:
    """One row of the stages frame, typed: a stage's label, state and record (None when its
    settings cannot be read as a record, e.g. a store written by another version)."""

    stage_id: str
    kind: str
    state: str
    setup: str | None = None
    target: str | None = None
    model: str | None = None
    seed: int | None = None
    record: StageRecord | None = None
    model_dir: Path | None = None  # the record's model dir under a known output dir (training stages)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.record.tasks if self.record else ()

    @property
    def languages(self) -> tuple[str, ...]:
        return self.record.languages if self.record else ()

    @property
    def splits(self) -> tuple[str, ...]:
        return self.record.splits if self.record else ()

    @property
    def trains(self) -> bool:
        return self.kind in TRAIN_KINDS

    @property
    def finished(self) -> bool:
        return self.state == DONE

    def has_model(self) -> bool:
        """Whether the stage's model directory holds a saved xstilts model."""
        return self.model_dir is not None and (self.model_dir / XSTILTS_MODEL_FILE).is_file()


def parse_settings(raw: Any) -> dict[str, Any]:
    """A stage's settings as a dict (the store keeps them as JSON text); {} when absent or invalid."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.strip():
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def _optional(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _record(stage_id: str, kind: str, settings: dict[str, Any]) -> StageRecord | None:
    try:
        return StageRecord.from_settings(stage_id, kind, settings)
    except (KeyError, TypeError, AttributeError) as exc:
        log.debug("stage %s: settings not readable as a %s stage record (%s)", stage_id, kind, exc)
        return None


def stage_use(row: dict[str, Any], output_dir: str | Path | None = None) -> StageUse:
    """The typed form of one row of ``ResultsStore.stages_frame()``."""
    sid, kind = str(row.get("stage_id")), str(row.get("kind") or "")
    record = _record(sid, kind, parse_settings(row.get("settings")))
    model_dir = None
    if output_dir is not None and record is not None and record.model_dir is not None:
        model_dir = Path(output_dir) / record.model_dir
    seed = _optional(row.get("seed"))
    return StageUse(
        stage_id=sid, kind=kind, state=str(row.get("state") or ""), setup=_optional(row.get("setup")),
        target=_optional(row.get("target")), model=_optional(row.get("model")),
        seed=int(seed) if seed is not None else None, record=record, model_dir=model_dir,
    )


def stage_uses(stages: pd.DataFrame | None, output_dir: str | Path | None = None) -> list[StageUse]:
    """Typed rows of a stages frame (one per use of a stage)."""
    if stages is None or stages.empty:
        return []
    return [stage_use(r, output_dir) for r in stages.to_dict("records")]


def setup_tasks(records: Sequence[StageUse], setups: Sequence[str],
                override: dict[str, list[str]] | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """The intermediate task(s) of each setup, from its intermediate stages (or ``override``).

    Returns ({setup: tasks}, notes); a setup with no intermediate stage record is named in a note.
    """
    out: dict[str, list[str]] = {}
    notes: list[str] = []
    for setup in setups:
        if override and setup in override:
            out[setup] = list(override[setup])
            continue
        found: list[str] = []
        for r in records:
            if r.setup == setup and r.kind == "intermediate":
                found += [t for t in r.tasks if t not in found]
        if found:
            out[setup] = found
        else:
            notes.append(f"setup '{setup}': no intermediate stage records it, so its intermediate task is unknown "
                         "and it has no task similarity values.")
    return out, notes


def setup_languages(records: Sequence[StageUse], setup: str) -> list[str]:
    """The languages of a setup's intermediate training data (English first)."""
    langs = ["en"]
    for r in records:
        if r.setup == setup and r.kind == "intermediate":
            langs += [lang for lang in r.languages if lang not in langs]
    return langs


@dataclass(frozen=True)
class TaskModel:
    """A model fine-tuned on one task: the stage's model dir and the head (= trained task) to use."""

    task: str  # the task the report names (an intermediate task or a target)
    head: str  # the task it was trained on (its head's name): a target's train_task, e.g. xnli -> mnli
    model_dir: Path
    stage_id: str
    split: str = "train"  # the split of ``head`` it was trained on (its data for the Fisher)


def task_models(records: Sequence[StageUse], tasks_by_setup: dict[str, list[str]]) -> dict[str, TaskModel]:
    """A single-task model for each task: intermediate stages that trained only that task, and
    the baseline's target stages (a target fine-tuned from the base model)."""
    found: dict[str, TaskModel] = {}
    for r in records:
        if r.model_dir is None or len(r.tasks) != 1:
            continue
        if r.kind == "target" and r.setup == BASELINE and r.target:
            name = r.target
        elif r.kind == "intermediate" and tasks_by_setup.get(str(r.setup)) == list(r.tasks) and r.stage_id:
            name = r.tasks[0]
        else:
            continue
        if name not in found:
            found[name] = TaskModel(name, r.tasks[0], r.model_dir, r.stage_id, r.splits[0] if r.splits else "train")
    return found


def model_sources(records: Sequence[StageUse]) -> dict[str, str]:
    """{model label: the name or path the spec gave it}, from the stages that start from the base model."""
    out: dict[str, str] = {}
    for r in records:
        source = r.record.input_model if r.record is not None else ""
        if r.model and r.trains and source and r.model not in out and not _is_stage_model(source):
            out[r.model] = source
    return out


def _is_stage_model(source: str) -> bool:
    """Whether an input model is an upstream stage's model ("stages/<id>/model")."""
    parts = Path(source).parts
    return len(parts) == 3 and parts[0] == STAGES_DIR and parts[2] == MODEL_DIR


def unfinished(records: Sequence[StageUse]) -> list[StageUse]:
    """Records of stages that are not done (waiting, running or failed)."""
    return [r for r in records if not r.finished]
