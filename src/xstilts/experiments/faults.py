"""Recognising a full file system, however the library that hit it reports it.

A full disk reaches the runner as ``OSError(ENOSPC)`` (Python, the feature cache), as
torch's ``PytorchStreamWriter failed writing file`` / ``unexpected pos`` (``torch.save``), as
safetensors' ``os error 28`` or as SQLite's ``database or disk is full``. :func:`disk_full_error`
turns any of them into one :class:`~xstilts.errors.DiskFullError` that names the file system
that is full (the one, among the places a run writes, with the least space left) and what to do.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from xstilts.errors import DiskFullError

#: texts by which libraries report a failed write on a full disk
_MARKERS = ("no space left on device", "os error 28", "errno 28", "database or disk is full",
            "unexpected pos", "failed writing file", "file write failed")


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) reports a full file system."""
    for e in _chain(exc):
        if isinstance(e, DiskFullError):
            return True
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e).lower()
        if any(m in text for m in _MARKERS):
            return True
    return False


def _existing(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = _existing(path)
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def fullest(paths: Iterable[str | Path], hint: str = "") -> tuple[Path, int] | None:
    """Among ``paths``, the one the error ``hint`` names, else the one whose file system has least space left."""
    usable: list[tuple[int, Path]] = []
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        try:
            usable.append((shutil.disk_usage(_existing(p)).free, p))
        except OSError:
            continue
    if not usable:
        return None
    named = [(free, p) for free, p in usable if str(p) in hint]
    free, path = min(named or usable, key=lambda fp: fp[0])
    return path, free


def disk_full_error(exc: BaseException, paths: Iterable[str | Path], what: str = "") -> DiskFullError:
    """One clear :class:`DiskFullError` for ``exc``: which file system is full and what to do."""
    if isinstance(exc, DiskFullError):
        return exc
    hint = " ".join(str(e) for e in _chain(exc)) + " " + " ".join(
        str(getattr(e, "filename", "") or "") for e in _chain(exc))
    found = fullest(paths, hint)
    where = ""
    if found is not None:
        path, free = found
        where = f" on the file system of {path} (mounted at {_mount_point(path)}, {_human(free)} free)"
    doing = f" while {what}" if what else ""
    return DiskFullError(
        f"no space left on device{where}{doing} ({type(exc).__name__}: {str(exc).strip()[:200]}). Free space there, or point "
        "XSTILTS_HOME (models, feature cache) and the run's output_dir at a larger disk, then run the same command "
        "again: finished stages are kept and an interrupted stage resumes from its last checkpoint.")
