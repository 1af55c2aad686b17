"""Atomic stage checkpoints and the typed training state they carry.

Layout of ``OUTPUT_DIR/checkpoints/step-N/``::

    model/               MultiTaskModel.save (encoder + heads + tokenizer)
    extra_modules.pt     weights of training-only modules (the MLM head), if any
    optimizer.pt         optimizer state (tensors and plain values only)
    scheduler.pt         LR scheduler state (plain values only)
    rng-<rank>.pt        python / numpy / torch (/ cuda) RNG states of each process
    trainer_state.json   :class:`TrainState`: step, data-stream states, best metric, config hash (written last)

A checkpoint is written to ``.tmp-step-N/``, fsynced and renamed to ``step-N/``, so a
``step-N`` directory is complete unless something outside xstilts broke it. Old
checkpoints are pruned by renaming them to ``.trash-step-N-<pid>`` first and deleting the
renamed tree, so a kill during a prune never leaves a half-deleted ``step-N``. Restoring
(:func:`load_newest`) tries the newest checkpoint first and falls back, with a warning, to
older ones when a checkpoint is incomplete or corrupt (truncated weights, a missing or
unreadable optimizer state); only a checkpoint of *another config* is an error.

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: tensors, numbers,
strings and containers only, so a crafted pickle placed in a checkpoint directory is
refused (:class:`CheckpointError`) instead of executed. ``best/`` holds the model with
the best dev score seen so far (``model/`` + ``trainer_state.json``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from xstilts.errors import CheckpointError, XStiltsError
from xstilts.fileio import fsync_dir, write_json_atomic
from xstilts.paths import BEST_CHECKPOINT, MODEL_DIR, TRAINER_STATE_FILE
from xstilts.train.sampling import StreamState

logger = logging.getLogger(__name__)

STATE_FILE = TRAINER_STATE_FILE
BEST_DIR = BEST_CHECKPOINT
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
EXTRA_MODULES_FILE = "extra_modules.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")
_TEMP_PREFIXES = (".tmp-", ".old-", ".trash-")


class ForeignCheckpointError(CheckpointError):
    """A checkpoint written by a run with another config: never a reason to fall back silently."""


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs (``trainer_state.json``)."""

    step: int = 0
    micro_batches: int = 0
    total_steps: int = 0
    config_hash: str = ""
    streams: dict[str, StreamState] = field(default_factory=dict)
    best_score: float | None = None
    best_step: int | None = None
    world_size: int = 1
    compact_decay_factor: float = 1.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the streams as plain dicts)."""
        data = asdict(self)
        data["streams"] = {k: s.to_dict() for k, s in self.streams.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        """Parse what :meth:`to_json` wrote (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["streams"] = {k: StreamState(**v) for k, v in data.get("streams", {}).items()}
        return cls(**values)


@dataclass
class Checkpoint:
    """A checkpoint read back in full (see :func:`load_checkpoint`)."""

    path: Path
    state: TrainState
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[int, dict[str, Any]]  # RNG states by process rank
    extra_modules: dict[str, Any] | None = None

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    def rng_for(self, rank: int) -> dict[str, Any]:
        """Process ``rank``'s RNG states (rank 0's when the run had fewer processes)."""
        return self.rng.get(rank, self.rng[0])


# ---------------------------------------------------------------------------- atomic files
def fsync_tree(directory: Path) -> None:
    """fsync every file and directory under ``directory`` (and itself)."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def discard_dir(path: Path) -> None:
    """Delete a directory tree without ever leaving it half-deleted under its own name.

    The tree is first renamed to ``.trash-<name>-<pid>`` (atomic), then deleted; a kill in
    between leaves only a trash directory, which :func:`clean_temporaries` removes.
    """
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def commit_dir(tmp: Path, final: Path) -> None:
    """fsync ``tmp`` and rename it to ``final`` (replacing an existing ``final`` safely)."""
    fsync_tree(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path`` (a leftover of an interrupted write is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def link_tree(src: Path, dst: Path) -> None:
    """Copy a directory tree as hard links (a real copy where the file system cannot link)."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


# ---------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy and torch (and CUDA when present), as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state` (or by versions that stored numpy's state as is)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(directory: Path, rank: int) -> Path:
    """The RNG file of process ``rank`` in a checkpoint."""
    return directory / f"rng-{rank}.pt"


def _numpy_array_globals() -> list[Any]:
    """What a plain numpy array needs to unpickle (RNG files of earlier versions hold numpy's
    state as an array); an array of objects would need more and is still refused."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_rng_states(directory: Path) -> dict[int, dict[str, Any]]:
    """Every process's RNG states in a checkpoint (rank 0's must be there)."""
    states = {}
    for f in directory.glob("rng-*.pt"):
        rank = f.stem.removeprefix("rng-")
        if rank.isdigit():
            with torch.serialization.safe_globals(_numpy_array_globals()):
                states[int(rank)] = load_torch(f)
    if 0 not in states:
        raise CheckpointError(f"checkpoint file missing: {rng_file(directory, 0)}")
    return states


# ---------------------------------------------------------------------------- reading
def load_torch(path: Path) -> Any:
    """Load a torch-saved file of a checkpoint: tensors and plain values only, never arbitrary objects.

    A missing, truncated or unsafe file (a pickle that would build any other object) is a
    :class:`CheckpointError`; nothing in the file is executed.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} holds objects other than tensors and plain values; refusing to load it "
                              f"({first[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None


def step_of(path: Path) -> int | None:
    """N of a ``step-N`` directory name, else None."""
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def is_complete(path: Path) -> bool:
    """Whether a ``step-N`` directory has the parts an atomic write always leaves (state file and model)."""
    return (path / STATE_FILE).is_file() and (path / MODEL_DIR).is_dir()


def _step_dirs(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    if not checkpoints_dir.is_dir():
        return []
    found = [(step_of(p), p) for p in checkpoints_dir.iterdir() if p.is_dir()]
    return sorted((n, p) for n, p in found if n is not None)


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete ``step-N`` checkpoint directories, oldest first.

    An incomplete ``step-N`` (no state file or no model: e.g. half-deleted by an older
    version's prune) is skipped with a warning; :func:`clean_temporaries` removes it.
    """
    complete = []
    for _, p in _step_dirs(checkpoints_dir):
        if is_complete(p):
            complete.append(p)
        else:
            logger.warning("%s is an incomplete checkpoint (no %s or %s/); ignoring it", p, STATE_FILE, MODEL_DIR)
    return complete


def read_state(ckpt: Path, config_hash: str | None = None) -> TrainState:
    """Read a checkpoint's :class:`TrainState`; check it belongs to the run with ``config_hash``.

    An unreadable state file is a :class:`CheckpointError`; a state of another config a
    :class:`ForeignCheckpointError`.
    """
    f = ckpt / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{ckpt} is not a checkpoint (no {STATE_FILE})")
    try:
        state = TrainState.from_json(json.loads(f.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{f}: unreadable ({exc})") from None
    if config_hash is not None and state.config_hash != config_hash:
        raise ForeignCheckpointError(
            f"{ckpt} was written by a run with another config (hash {state.config_hash}, this config "
            f"{config_hash}); use a new output dir, or the original config to resume"
        )
    return state


def load_checkpoint(path: Path, config_hash: str, *, extra_modules: bool = False) -> Checkpoint:
    """Read every file of one checkpoint (not the model weights: see :func:`load_newest`).

    Raises :class:`CheckpointError` when anything is missing or unreadable.
    """
    state = read_state(path, config_hash)
    if not (path / MODEL_DIR).is_dir():
        raise CheckpointError(f"{path} has no {MODEL_DIR}/")
    return Checkpoint(
        path=path, state=state,
        optimizer=load_torch(path / OPTIMIZER_FILE),
        scheduler=load_torch(path / SCHEDULER_FILE),
        rng=load_rng_states(path),
        extra_modules=load_torch(path / EXTRA_MODULES_FILE) if extra_modules else None,
    )


def check_owner(checkpoints_dir: Path, config_hash: str) -> None:
    """:class:`ForeignCheckpointError` when the newest checkpoint belongs to another config (a
    cheap check before any model is loaded; an unreadable state is left to :func:`load_newest`)."""
    found = list_checkpoints(checkpoints_dir)
    if not found:
        return
    try:
        read_state(found[-1], config_hash)
    except ForeignCheckpointError:
        raise
    except CheckpointError:
        pass


def load_newest(checkpoints_dir: Path, config_hash: str, load_weights: Callable[[Checkpoint], None], *,
                extra_modules: bool = False) -> Checkpoint | None:
    """The newest checkpoint that reads back in full.

    ``load_weights(checkpoint)`` loads the model weights from ``checkpoint.model_dir`` (and
    ``checkpoint.extra_modules``) and raises on a corrupt file. A checkpoint that fails is
    skipped with a warning and the next older one is tried; a checkpoint of another config
    raises :class:`ForeignCheckpointError`. Returns None when no checkpoint is usable: the
    stage starts from the beginning, with the RNGs as they were before the attempts. A
    broken checkpoint is left in place (replaced when the run writes that step again, or pruned).
    """
    broken = 0
    before = rng_state()  # a failed attempt may draw (e.g. initialising weights it then cannot load)
    for path in reversed(list_checkpoints(checkpoints_dir)):
        try:
            ckpt = load_checkpoint(path, config_hash, extra_modules=extra_modules)
            load_weights(ckpt)
        except ForeignCheckpointError:
            raise
        except (XStiltsError, SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            # XStiltsError covers CheckpointError and ModelLoadError; the others are what
            # safetensors / torch / transformers raise on a truncated or inconsistent file
            logger.warning("checkpoint %s cannot be used (%s); trying an older one", path, str(exc)[:300])
            broken += 1
            continue
        return ckpt
    if broken:
        logger.warning("no usable checkpoint in %s: the stage starts from the beginning", checkpoints_dir)
        set_rng_state(before)  # exactly as if there had been no checkpoint
    return None


# ---------------------------------------------------------------------------- writing
def write_checkpoint_files(directory: Path, state: TrainState, optimizer: dict[str, Any], scheduler: dict[str, Any],
                           extra_modules: dict[str, Any] | None = None) -> None:
    """Write the main process's files of a checkpoint into ``directory`` (the state file last)."""
    if extra_modules is not None:
        torch.save(extra_modules, directory / EXTRA_MODULES_FILE)
    torch.save(optimizer, directory / OPTIMIZER_FILE)
    torch.save(scheduler, directory / SCHEDULER_FILE)
    write_json_atomic(directory / STATE_FILE, state.to_json())


def write_rng(directory: Path, rank: int) -> None:
    """Write this process's RNG states into a checkpoint directory."""
    torch.save(rng_state(), rng_file(directory, rank))


def clean_temporaries(checkpoints_dir: Path) -> None:
    """Remove leftovers of interrupted writes and prunes, and incomplete ``step-N`` directories."""
    if not checkpoints_dir.is_dir():
        return
    for p in checkpoints_dir.iterdir():
        if p.name.startswith(_TEMP_PREFIXES):
            shutil.rmtree(p, ignore_errors=True)
        elif step_of(p) is not None and p.is_dir() and not is_complete(p):
            logger.warning("removing incomplete checkpoint %s", p)
            discard_dir(p)


def prune_checkpoints(checkpoints_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` ``step-N`` checkpoints (``best/`` is kept).

    Each is renamed to a trash name before it is deleted (see :func:`discard_dir`).
    """
    ckpts = [p for _, p in _step_dirs(checkpoints_dir)]
    for old in ckpts[:-keep_last] if keep_last > 0 else ckpts:
        discard_dir(old)
        logger.debug("removed old checkpoint %s", old)
