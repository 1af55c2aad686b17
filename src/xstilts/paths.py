"""Where xstilts keeps its cache (built models, tokenised datasets) and finds data, and the
names of the files and directories that several layers write and read.

The name constants are the one truth for the on-disk layout: a layer that writes a file and
a layer that reads it both import the name from here (this module imports nothing of xstilts).

Layout of an output dir (``xstilts run``)::

    OUTPUT_DIR/results.sqlite                    STORE_FILE (experiments.store)
    OUTPUT_DIR/stages/<stage_id>/                STAGES_DIR (experiments.plan.stage_dir)
        model/                                   MODEL_DIR: a saved MultiTaskModel (models)
            encoder/  heads.safetensors  xstilts_model.json
        checkpoints/step-N/, checkpoints/best/   CHECKPOINTS_DIR, BEST_CHECKPOINT (train)
            trainer_state.json                   TRAINER_STATE_FILE
        log.jsonl                                TRAIN_LOG_FILE (train; read for progress)
        DONE                                     DONE_FILE: JSON summary, written last (train)
        metrics.json  predictions/<lang>.jsonl   METRICS_FILE, PREDICTIONS_DIR (evaluate)
        stage.json  OUTCOME.json                 STAGE_FILE, OUTCOME_FILE (experiments.runner: the stage's
                                                 identity, and its metrics written before the store's
                                                 "done"; `xstilts store rebuild` reads both)
        task_emb/<task>.npy                      TASK_EMB_DIR (analysis: cached Fisher TaskEmb)
    OUTPUT_DIR/analysis/similarity_cache.json    ANALYSIS_DIR, SIMILARITY_CACHE_FILE
    OUTPUT_DIR/report/report.html                REPORT_DIR
"""

from __future__ import annotations

import os
from pathlib import Path

# --------------------------------------------------------------------------- file names

STORE_FILE = "results.sqlite"
STAGES_DIR = "stages"
MODEL_DIR = "model"
ENCODER_SUBDIR = "encoder"
HEADS_FILE = "heads.safetensors"
XSTILTS_MODEL_FILE = "xstilts_model.json"
CHECKPOINTS_DIR = "checkpoints"
BEST_CHECKPOINT = "best"
TRAINER_STATE_FILE = "trainer_state.json"
TRAIN_LOG_FILE = "log.jsonl"
DONE_FILE = "DONE"
METRICS_FILE = "metrics.json"
STAGE_FILE = "stage.json"
OUTCOME_FILE = "OUTCOME.json"
PREDICTIONS_DIR = "predictions"
TASK_EMB_DIR = "task_emb"
ANALYSIS_DIR = "analysis"
SIMILARITY_CACHE_FILE = "similarity_cache.json"
REPORT_DIR = "report"


def xstilts_home() -> Path:
    """Cache root: ``$XSTILTS_HOME``, else ``$XDG_CACHE_HOME/xstilts``, else ``~/.cache/xstilts``."""
    if os.environ.get("XSTILTS_HOME"):
        return Path(os.environ["XSTILTS_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "xstilts"


def models_dir() -> Path:
    """Directory holding models xstilts builds itself (e.g. the offline ``e5-small``)."""
    return xstilts_home() / "models"


def features_cache_dir() -> Path:
    """Directory holding tokenised datasets (Arrow), shared by every stage and run."""
    return xstilts_home() / "features"


def tokenizers_cache_dir() -> Path:
    """Directory holding snapshots of loaded tokenizers (see ``models.loading``)."""
    return xstilts_home() / "tokenizers"


def _candidate_shared_data() -> list[Path]:
    here = Path(__file__).resolve()
    cands = [Path.cwd() / ".." / "shared" / "data", Path.cwd() / "shared" / "data"]
    # a source checkout: <repo>/src/xstilts/paths.py -> <repo>/../shared/data
    for parent in here.parents[:4]:
        cands.append(parent / ".." / "shared" / "data")
    return cands


def default_data_dir() -> Path | None:
    """``$XSTILTS_DATA_DIR`` if set, else ``../shared/data`` when it exists, else None."""
    env = os.environ.get("XSTILTS_DATA_DIR")
    if env:
        return Path(env).expanduser()
    for cand in _candidate_shared_data():
        if cand.is_dir():
            return cand.resolve()
    return None


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """An explicit ``--data-dir`` wins; otherwise :func:`default_data_dir`."""
    if data_dir is not None:
        return Path(data_dir).expanduser().resolve()
    return default_data_dir()
