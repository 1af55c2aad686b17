"""Rebuilding a damaged results store from the stage directories (``xstilts store rebuild``).

Every stage directory records what it is and what it produced: ``stage.json`` (written by the
runner when the stage starts: kind, settings, upstream stages, labels), ``OUTCOME.json``
(its metrics, written just before the store marks it done), and the layers' own records —
a training stage's ``DONE`` and an evaluation's ``metrics.json``. A new store is built from
them: finished stages are done with their metrics, every other stage waits (its checkpoints
are kept, so the next run resumes it). Stage directories from before ``stage.json`` existed
are restored from the spec(s) whose plan holds them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xstilts.errors import DataNotFoundError
from xstilts.experiments.plan import Label, Plan, Stage
from xstilts.experiments.store import open_store, store_path
from xstilts.paths import DONE_FILE, METRICS_FILE, OUTCOME_FILE, STAGE_FILE, STAGES_DIR

logger = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    """What :func:`rebuild_store` did."""

    store: Path
    moved_aside: list[Path] = field(default_factory=list)
    stages: int = 0
    done: int = 0
    unknown: list[str] = field(default_factory=list)  # stage dirs with no stage.json and in no given plan


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_from_json(data: dict[str, Any]) -> Stage:
    """A :class:`Stage` from what ``Stage.to_json`` wrote (``stage.json``)."""
    return Stage(id=data["id"], kind=data["kind"], settings=data.get("settings") or {},
                 depends_on=tuple(data.get("depends_on") or ()),
                 labels=[Label(**lab) for lab in data.get("labels") or []], description=data.get("description", ""))


def finished_outcome(stage_dir: Path, kind: str) -> tuple[list[tuple[str, str, str, float]], dict[str, Any]] | None:
    """``(metric rows, result)`` of a finished stage from its directory; None if it did not finish."""
    outcome = _read_json(stage_dir / OUTCOME_FILE)
    if isinstance(outcome, dict):
        return [tuple(r) for r in outcome.get("metrics") or []], outcome.get("result") or {}  # type: ignore[misc]
    if kind == "eval":
        from xstilts.evaluate.zero_shot import EvalReport
        from xstilts.experiments.executor import eval_rows

        data = _read_json(stage_dir / METRICS_FILE)
        if not isinstance(data, dict):
            return None
        report = EvalReport.from_json(data)
        rows = eval_rows(report)
        return (rows, {"average": report.average, "skipped": report.skipped}) if rows else None
    done = _read_json(stage_dir / DONE_FILE)
    if not isinstance(done, dict):
        return None
    keep = ("steps", "dev_metrics", "carried_dev_metrics", "best_score", "best_step", "seconds", "finished_at")
    return [], {"model_dir": str(stage_dir / "model"), **{k: done.get(k) for k in keep}}


def _collect(output_dir: Path, plans: Sequence[Plan], report: RebuildReport) -> dict[str, Stage]:
    """Every stage known from the stage directories' ``stage.json`` and from ``plans`` (labels merged)."""
    stages: dict[str, Stage] = {}
    root = output_dir / STAGES_DIR
    dirs = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    for d in dirs:
        data = _read_json(d / STAGE_FILE)
        if isinstance(data, dict) and data.get("id") == d.name:
            stages[d.name] = stage_from_json(data)
    for plan in plans:
        for stage in plan:
            have = stages.setdefault(stage.id, Stage(stage.id, stage.kind, stage.settings, stage.depends_on, [],
                                                     stage.description))
            have.labels.extend(lab for lab in stage.labels if lab not in have.labels)
    report.unknown = [d.name for d in dirs if d.name not in stages]
    return stages


def _move_aside(path: Path) -> list[Path]:
    """Rename the store file and its WAL/SHM companions to ``*.old-<time>``; returns the new names."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        f = Path(str(path) + suffix)
        if f.exists():
            target = f.with_name(f"{path.name}.old-{stamp}{suffix}")
            os.replace(f, target)
            moved.append(target)
    return moved


def rebuild_store(output_dir: str | Path, plans: Sequence[Plan] = ()) -> RebuildReport:
    """Build a fresh ``results.sqlite`` for ``output_dir`` from its stage directories (and ``plans``).

    The old store file (damaged or not) is kept beside it as ``results.sqlite.old-<time>``.
    """
    output_dir = Path(output_dir)
    if not (output_dir / STAGES_DIR).is_dir() and not store_path(output_dir).exists():
        raise DataNotFoundError(f"{output_dir}: neither a results store nor stage directories to rebuild it from "
                                f"(is {output_dir} the run's output_dir?)")
    report = RebuildReport(store=store_path(output_dir))
    stages = _collect(output_dir, plans, report)
    report.moved_aside = _move_aside(report.store)
    pseudo = Plan(stages=stages, output_dir=output_dir, data_dir=None)
    with open_store(output_dir) as store:
        store.register_plan(pseudo, retry_failed=False)
        for sid, stage in stages.items():
            finished = finished_outcome(output_dir / STAGES_DIR / sid, stage.kind)
            if finished is not None:
                store.record_done(sid, *finished)
                report.done += 1
    report.stages = len(stages)
    logger.info("rebuilt %s: %d stage(s), %d done", report.store, report.stages, report.done)
    return report
