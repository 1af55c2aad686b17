"""Where a result came from: library versions, the git commit of the code, the device and the config.

:func:`provenance` is the one record every writer of a result attaches: the training stage's
``DONE`` record, every ``metrics.json`` of an evaluation and every stage's ``stage.json``::

    {"created_at": "2026-11-30T08:30:00Z", "host": "node-3",
     "python": "3.11.9", "packages": {"torch": "2.13.0", "transformers": "5.24.0", "datasets": ...,
                                      "accelerate": ..., "xstilts": "0.1.0"},
     "git": {"commit": "9972120...", "dirty": false} | null,     # null: not run from a checkout
     "device": {"type": "cuda", "name": "NVIDIA H200", "count": 1} ,
     "config": {...}}                                            # the resolved config, when given

The git commit is read with ``git rev-parse HEAD`` in the package's own directory, and only
when the package's files are tracked by that repository (an installed copy inside some
other checkout, e.g. a virtual environment in a project, has no commit). ``dirty``: tracked
files differ from the commit. Library versions and git state are read once per process.
"""

from __future__ import annotations

import functools
import logging
import platform
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: the distributions whose versions every result records
PACKAGES = ("torch", "transformers", "datasets", "accelerate", "xstilts")
_GIT_TIMEOUT_S = 5.0


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`PACKAGES` (None when one is not installed)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if out["xstilts"] is None:
        from xstilts import __version__

        out["xstilts"] = __version__
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    """Output of ``git ARGS`` in ``cwd`` (stripped), or None when git fails or is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_state(package_dir: str | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout the package runs from; None when it is not run
    from a checkout (an installed wheel, no git, or package files the repository does not track)."""
    here = Path(package_dir) if package_dir else Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], here)
    if not commit:
        return None
    if _git(["ls-files", "--error-unmatch", "__init__.py"], here) is None:
        return None  # the package lies inside some repository that does not track it
    status = _git(["status", "--porcelain", "--untracked-files=no"], here)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def warm_caches() -> None:
    """Read the library versions and the git state now (each is read once per process), so that
    a later :func:`provenance` costs no subprocess or metadata scan (the runner calls this before
    it claims a stage, keeping the time between a claim and the stage's start short)."""
    package_versions()
    git_state()
    cpu_name()


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's name (``platform.processor()`` may run ``uname -p``: read once)."""
    return platform.processor() or platform.machine()


def device_info(device: Any = None) -> dict[str, Any]:
    """The device a result was computed on: ``{"type", "name", "count"}`` (``device``: a torch
    device or its name; None: the GPU when torch sees one, else the CPU). A device given by name
    in a process that has not imported torch is described without importing it (the runner
    records the device a stage asked for before the stage starts; seconds matter there)."""
    if "torch" not in sys.modules and isinstance(device, str):
        kind = device.split(":")[0]
        return {"type": kind, "name": cpu_name() if kind == "cpu" else None, "count": 1}
    import torch

    kind = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    kind = kind.split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        index = torch.device(str(device)).index if device is not None and ":" in str(device) else 0
        return {"type": "cuda", "name": torch.cuda.get_device_name(index or 0), "count": torch.cuda.device_count(),
                "cuda": torch.version.cuda}
    if kind == "mps":
        return {"type": "mps", "name": platform.machine(), "count": 1}
    return {"type": kind, "name": cpu_name(), "count": 1,
            "threads": torch.get_num_threads()}


def provenance(config: Any = None, device: Any = None) -> dict[str, Any]:
    """The provenance record of a result (see the module docstring).

    ``config``: the resolved configuration (a pydantic model, a dataclass or a mapping), stored
    as JSON under ``"config"`` when given. ``device``: what :func:`device_info` takes.
    """
    record: dict[str, Any] = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "packages": dict(package_versions()),
        "git": git_state(),
        "device": device_info(device),
    }
    if config is not None:
        record["config"] = _jsonable(config)
    return record


def _jsonable(config: Any) -> Any:
    """``config`` as JSON-ready data (pydantic models, dataclasses, paths and mappings)."""
    import json
    from dataclasses import asdict, is_dataclass

    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    elif is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    return json.loads(json.dumps(config, default=str))
