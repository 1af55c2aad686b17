"""Crash-safe small-file writes shared by the layers that keep state on disk.

A JSON record (a stage's identity and outcome, a checkpoint's training state, a DONE
summary) is written to a temporary name beside its target, flushed to disk and renamed over
the target, and the directory entry is synced: a reader sees the old file or the whole new
one, never half of one, even when the process is killed or the machine loses power.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Sync a directory's entries (a rename in it) to disk; a no-op where that is unsupported."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file + fsync + rename + directory
    sync). Keys are sorted; values JSON cannot hold are written with ``str``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
