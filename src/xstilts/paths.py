"""Where xstilts keeps its cache (built models, tokenised datasets) and finds data."""

from __future__ import annotations

import os
from pathlib import Path


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
