"""What a stage writes about itself: the training log (``log.jsonl`` and accelerate trackers)
and the ``DONE`` record that marks it finished."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from xstilts.errors import CheckpointError
from xstilts.fileio import write_json_atomic
from xstilts.paths import DONE_FILE


@dataclass
class DoneRecord:
    """The ``DONE`` file of a finished stage (JSON; written last, atomically)."""

    steps: int
    config_hash: str
    dev_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    best_score: float | None = None
    best_step: int | None = None
    finished_at: str = ""
    world_size: int = 1
    task_batches: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False  # early stopping ended training before its last step
    dev_holdout: dict[str, int] = field(default_factory=dict)  # task -> examples held out of training (heldout.json)
    provenance: dict[str, Any] = field(default_factory=dict)  # xstilts.provenance.provenance(): versions, git, device
    #: task -> {metric: value} of the heads of earlier chain stages on their dev examples (train.carried)
    carried_dev_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DoneRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("steps", 0)
        values.setdefault("config_hash", "")
        return cls(**values)


def read_done(output_dir: Path) -> DoneRecord | None:
    """The stage's ``DONE`` record, or None when the stage has not finished."""
    f = output_dir / DONE_FILE
    if not f.is_file():
        return None
    try:
        return DoneRecord.from_json(json.loads(f.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{f} is unreadable ({exc}); delete it to finish the stage again") from None


def write_done(output_dir: Path, record: DoneRecord) -> None:
    """Mark the stage finished (``finished_at`` is set to now)."""
    record.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json_atomic(output_dir / DONE_FILE, asdict(record))


def _flatten(record: dict[str, Any]) -> dict[str, float]:
    """Numbers of a log record as tracker scalars (``eval/<task>/<metric>`` for nested scores)."""
    flat: dict[str, float] = {}
    for k, v in record.items():
        if isinstance(v, (int, float)) and k != "step":
            flat[k] = v
        elif isinstance(v, dict):
            for task, scores in v.items():
                if isinstance(scores, dict):
                    flat.update({f"{k}/{task}/{m}": s for m, s in scores.items() if isinstance(s, (int, float))})
    return flat


class StageLog:
    """Appends JSON lines to ``log.jsonl`` (main process only) and scalars to accelerate trackers."""

    def __init__(self, path: Path, accelerator: Any, enabled: bool):
        self.path, self.acc, self.enabled = path, accelerator, enabled

    def start_fresh(self) -> None:
        """Remove the log of an earlier attempt that left no checkpoint."""
        if self.enabled and self.path.exists():
            self.path.unlink()

    def truncate_after(self, step: int) -> None:
        """Drop records a killed run wrote after its last checkpoint (they are redone)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if rec.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any], step: int) -> None:
        """Write one record (``step`` is the optimizer step it belongs to)."""
        if self.enabled:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
        flat = _flatten(record)
        if self.acc.trackers and flat:
            self.acc.log(flat, step=step)
