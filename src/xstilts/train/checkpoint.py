"""Atomic stage checkpoints: write to a temporary directory, fsync, rename.

Layout of ``OUTPUT_DIR/checkpoints/step-N/``::

    model/               MultiTaskModel.save (encoder + heads + tokenizer)
    extra_modules.pt     weights of training-only modules (the MLM head), if any
    optimizer.pt         optimizer state
    scheduler.pt         LR scheduler state
    rng-<rank>.pt        python / numpy / torch (/ cuda) RNG states of each process
    trainer_state.json   step, data-stream states, best metric, config hash (written last)

A directory without ``trainer_state.json`` is not a checkpoint. ``best/`` holds the
model with the best dev score seen so far (model/ + trainer_state.json).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xstilts.errors import CheckpointError

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


def fsync_tree(directory: Path) -> None:
    """fsync every file and directory under ``directory`` (and itself)."""
    for root, dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
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
    """Write JSON to ``path`` atomically (temp file + fsync + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def commit_dir(tmp: Path, final: Path) -> None:
    """fsync ``tmp`` and rename it to ``final`` (replacing an existing ``final`` safely)."""
    fsync_tree(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def link_tree(src: Path, dst: Path) -> None:
    """Copy a directory tree as hard links (a real copy where the file system cannot link)."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy and torch (and CUDA when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_of(path: Path) -> int | None:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Completed ``step-N`` checkpoint directories, oldest first.

    A ``step-N`` directory without its state file is not a checkpoint (it cannot have
    been produced by an atomic rename): :class:`CheckpointError`.
    """
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for p in checkpoints_dir.iterdir():
        n = step_of(p)
        if n is None or not p.is_dir():
            continue
        if not (p / STATE_FILE).is_file() or not (p / "model").is_dir():
            raise CheckpointError(f"{p} is not a checkpoint (no {STATE_FILE} or model/); remove it or use another output dir")
        found.append((n, p))
    return [p for _, p in sorted(found)]


def read_state(ckpt: Path, config_hash: str | None = None) -> dict[str, Any]:
    """Read a checkpoint's trainer state; check it belongs to the run with ``config_hash``."""
    f = ckpt / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{ckpt} is not a checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{f}: unreadable ({exc})") from None
    if config_hash is not None and state.get("config_hash") != config_hash:
        raise CheckpointError(
            f"{ckpt} was written by a run with another config (hash {state.get('config_hash')}, this config "
            f"{config_hash}); use a new output dir, or the original config to resume"
        )
    return state


def clean_temporaries(checkpoints_dir: Path) -> None:
    """Remove leftovers of interrupted checkpoint writes."""
    if checkpoints_dir.is_dir():
        for p in checkpoints_dir.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(checkpoints_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` ``step-N`` checkpoints (``best/`` is kept)."""
    ckpts = list_checkpoints(checkpoints_dir)
    for old in ckpts[:-keep_last] if keep_last > 0 else ckpts:
        shutil.rmtree(old, ignore_errors=True)
        logger.debug("removed old checkpoint %s", old)


def load_torch(path: Path) -> Any:
    """Load a torch-saved file written by this module (trusted: our own checkpoint)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)
