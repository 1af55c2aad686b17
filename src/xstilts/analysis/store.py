"""The one place analysis touches the results store (``experiments.open_store``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from xstilts.errors import DataError, DataNotFoundError

log = logging.getLogger(__name__)

METRICS_COLUMNS = ["model", "setup", "target", "language", "seed", "split", "metric", "value", "stage_id"]
STAGES_COLUMNS = ["stage_id", "kind", "state", "setup", "target", "model", "seed", "started_at", "finished_at",
                  "host", "error", "settings"]


def _open_store(output_dir: Path):
    try:
        from xstilts.experiments import open_store
    except ImportError:  # the package may not re-export it
        from xstilts.experiments.store import open_store
    return open_store(output_dir)


def load_frames(output_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics, stages) DataFrames of ``OUTPUT_DIR/results.sqlite`` via the results store.

    Raises :class:`DataNotFoundError` when the directory has no results store, and
    :class:`DataError` when a frame lacks a contracted column.
    """
    output_dir = Path(output_dir)
    if not (output_dir / "results.sqlite").is_file():
        raise DataNotFoundError(
            f"{output_dir}: no results store (results.sqlite) here; pass the OUTPUT_DIR of `xstilts run`."
        )
    store = _open_store(output_dir)
    metrics = store.metrics_frame()
    stages = store.stages_frame()
    for name, frame, cols in (("metrics", metrics, METRICS_COLUMNS), ("stages", stages, STAGES_COLUMNS)):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(output_dir / "results.sqlite", f"{name} table lacks columns {missing}")
    log.info("read %d metric rows and %d stages from %s", len(metrics), len(stages), output_dir)
    return metrics, stages
