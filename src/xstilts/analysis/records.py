"""Typed stage records: what each stage of a results store trained or evaluated, and where.

The analysis layer reads the experiment layer's records instead of guessing key names: a
stage's ``settings`` are what :mod:`xstilts.experiments.plan` wrote (a
:class:`~xstilts.train.config.TrainConfig` dump for training stages, the
``zero_shot_eval`` arguments for eval stages), its state is one of the store's
:data:`~xstilts.experiments.store.STATES`, and its model lives at
``stage_dir(OUTPUT_DIR, id) / MODEL_DIR``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from xstilts.experiments.plan import stage_dir
from xstilts.experiments.spec import BASELINE
from xstilts.experiments.store import DONE
from xstilts.paths import MODEL_DIR, XSTILTS_MODEL_FILE

log = logging.getLogger(__name__)

TRAIN_KINDS = ("intermediate", "target")


@dataclass(frozen=True)
class StageRecord:
    """One stage of the store, typed: what it trained (or evaluated), on which languages and
    splits, and its model directory (training stages of a known output dir)."""

    stage_id: str
    kind: str
    state: str
    setup: str | None = None
    target: str | None = None
    model: str | None = None
    seed: int | None = None
    tasks: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    model_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

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


def _trained(settings: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(tasks, languages, splits) of a training stage from its TrainConfig's ``tasks`` mixtures."""
    from xstilts.train.config import TaskMixture

    tasks: list[str] = []
    langs: list[str] = []
    splits: list[str] = []
    for raw in settings.get("tasks") or []:
        mix = TaskMixture.model_validate(raw)
        tasks.append(mix.task)
        langs += [lang for lang in mix.languages if lang not in langs]
        if mix.split not in splits:
            splits.append(mix.split)
    return tuple(tasks), tuple(langs), tuple(splits)


def _evaluated(settings: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(task, languages, split) of an eval stage from its ``zero_shot_eval`` arguments."""
    task, split, langs = settings.get("task"), settings.get("split"), settings.get("languages")
    return ((str(task),) if task else (), tuple(map(str, langs)) if isinstance(langs, list) else (),
            (str(split),) if split else ())


def _optional(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def stage_record(row: dict[str, Any], output_dir: str | Path | None = None) -> StageRecord:
    """The typed record of one row of ``ResultsStore.stages_frame()``."""
    settings = parse_settings(row.get("settings"))
    kind = str(row.get("kind") or "")
    try:
        tasks, langs, splits = _trained(settings) if kind in TRAIN_KINDS else _evaluated(settings)
    except ValueError as exc:  # a settings dump of another version: keep the row, without its tasks
        log.debug("stage %s: settings not readable as %s stage (%s)", row.get("stage_id"), kind, exc)
        tasks, langs, splits = (), (), ()
    sid = str(row.get("stage_id"))
    model_dir = stage_dir(Path(output_dir), sid) / MODEL_DIR if output_dir is not None and kind in TRAIN_KINDS else None
    seed = _optional(row.get("seed"))
    return StageRecord(
        stage_id=sid, kind=kind, state=str(row.get("state") or ""), setup=_optional(row.get("setup")),
        target=_optional(row.get("target")), model=_optional(row.get("model")),
        seed=int(seed) if seed is not None else None, tasks=tasks, languages=langs, splits=splits,
        model_dir=model_dir, settings=settings,
    )


def stage_records(stages: pd.DataFrame | None, output_dir: str | Path | None = None) -> list[StageRecord]:
    """Typed records of every row of a stages frame (one per use of a stage)."""
    if stages is None or stages.empty:
        return []
    return [stage_record(r, output_dir) for r in stages.to_dict("records")]


def setup_tasks(records: Sequence[StageRecord], setups: Sequence[str],
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


def setup_languages(records: Sequence[StageRecord], setup: str) -> list[str]:
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


def task_models(records: Sequence[StageRecord], tasks_by_setup: dict[str, list[str]]) -> dict[str, TaskModel]:
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
            found[name] = TaskModel(name, r.tasks[0], r.model_dir, r.stage_id)
    return found


def unfinished(records: Sequence[StageRecord]) -> list[StageRecord]:
    """Records of stages that are not done (waiting, running or failed)."""
    return [r for r in records if not r.finished]
