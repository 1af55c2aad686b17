"""The one place analysis touches the results store (``experiments.open_store``)."""

from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path

import pandas as pd

from xstilts.errors import DataError, DataNotFoundError
from xstilts.experiments.store import METRIC_COLUMNS, STAGE_COLUMNS, ResultsStore, open_store, store_path

log = logging.getLogger(__name__)


def _open_store(output_dir: Path) -> ResultsStore:
    return open_store(output_dir)


def load_frames(output_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics, stages) DataFrames of ``OUTPUT_DIR/results.sqlite`` via the results store.

    Raises :class:`DataNotFoundError` when the directory has no results store, and
    :class:`DataError` when a frame lacks a contracted column.
    """
    output_dir = Path(output_dir)
    path = store_path(output_dir)
    if not path.is_file():
        raise DataNotFoundError(f"{output_dir}: no results store ({path.name}) here; pass the OUTPUT_DIR of `xstilts run`.")
    with closing(_open_store(output_dir)) as store:
        metrics = store.metrics_frame()
        stages = store.stages_frame()
    for name, frame, cols in (("metrics", metrics, METRIC_COLUMNS), ("stages", stages, STAGE_COLUMNS)):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(path, f"{name} table lacks columns {missing}")
    log.info("read %d metric rows and %d stages from %s", len(metrics), len(stages), output_dir)
    return metrics, stages
