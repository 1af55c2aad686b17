"""Fault injection on stage checkpoints (issue 18, items 1 and 10).

A run is interrupted in-process (a ``BaseException`` raised from inside the checkpoint code,
which nothing in xstilts catches: the same state a SIGKILL at that moment leaves), its
checkpoints are damaged, and the resumed run must end with exactly the weights and dev
metrics of an uninterrupted run:

- a kill while an old checkpoint is being pruned (the new prune renames it to a trash name
  first; a ``step-N`` half-deleted in place by an older version is skipped and removed);
- a corrupt newest checkpoint (truncated weights, missing or truncated optimizer state, a
  missing state file) -> the older intact one is used, with a warning;
- a crafted pickle as ``optimizer.pt`` is never executed: it is refused with a clear
  CheckpointError, and resuming falls back to an intact checkpoint.
"""

from __future__ import annotations

import builtins
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_support import stage_config, synthetic
from xstilts.errors import CheckpointError
from xstilts.train import checkpoint as ckpt
from xstilts.train import train_stage

OVERRIDES = {"max_steps": 12, "save_every": 3, "keep_last": 2, "eval_every": 4}


class Killed(BaseException):
    """Stands for a SIGKILL: nothing in xstilts catches it."""


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = dict(load_file(str(model_dir / "encoder" / "model.safetensors")))
    out.update({f"heads.{k}": v for k, v in load_file(str(model_dir / "heads.safetensors")).items()})
    return out


def _assert_same_result(ref, res) -> None:
    assert res.steps == ref.steps and not res.skipped
    w_ref, w_res = _weights(ref.model_dir), _weights(res.model_dir)
    assert w_ref.keys() == w_res.keys()
    different = [k for k in w_ref if not torch.equal(w_ref[k], w_res[k])]
    assert not different, different[:5]
    assert res.dev_metrics == ref.dev_metrics


def _config(model_dir: Path):
    return stage_config(model_dir, **OVERRIDES)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """An uninterrupted run."""
    return train_stage(_config(tiny_model_dir), tmp_path_factory.mktemp("ref") / "out", task_data=synthetic("copycls"))


@pytest.fixture(scope="module")
def killed_after_step_9(tiny_model_dir, tmp_path_factory) -> Path:
    """A run killed right after it committed checkpoint step-9 (before pruning): step-3, -6, -9 exist."""
    out = tmp_path_factory.mktemp("killed") / "out"
    real = ckpt.prune_checkpoints

    def prune(directory: Path, keep_last: int) -> None:
        if (directory / "step-9").is_dir():
            raise Killed
        real(directory, keep_last)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(Killed):
        mp.setattr(ckpt, "prune_checkpoints", prune)
        train_stage(_config(tiny_model_dir), out, task_data=synthetic("copycls"))
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-3", "step-6", "step-9"]
    assert not (out / "DONE").exists()
    return out


def _copy_of(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "resumed"
    shutil.copytree(run, dst)
    return dst


def test_kill_during_prune_then_resume_gives_identical_weights(tiny_model_dir, tmp_path, reference, monkeypatch):
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        path = Path(path)
        if path.name.startswith(".trash-step-"):  # killed half-way through deleting a pruned checkpoint
            (path / "model" / "encoder" / "model.safetensors").unlink()
            raise Killed
        return real_rmtree(path, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        train_stage(_config(tiny_model_dir), out, task_data=synthetic("copycls"))
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    ckpts = out / "checkpoints"
    assert [p.name for p in ckpts.glob(".trash-step-*")], "the kill did not hit a prune"
    assert all(ckpt.is_complete(p) for p in ckpts.glob("step-*"))  # no half-deleted step-N under its own name

    resumed = train_stage(_config(tiny_model_dir), out, task_data=synthetic("copycls"))
    _assert_same_result(reference, resumed)
    assert not list(ckpts.glob(".trash-*")) and len(list(ckpts.glob("step-*"))) <= 2


def test_step_dir_half_deleted_in_place_does_not_block_resume(tiny_model_dir, tmp_path, reference,
                                                               killed_after_step_9):
    """What an older version's in-place rmtree left when killed: a step-N without its state file."""
    out = _copy_of(killed_after_step_9, tmp_path)
    (out / "checkpoints" / "step-3" / ckpt.STATE_FILE).unlink()
    (out / "checkpoints" / "step-3" / "model" / "heads.safetensors").unlink()
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-6", "step-9"]
    resumed = train_stage(_config(tiny_model_dir), out, task_data=synthetic("copycls"))
    _assert_same_result(reference, resumed)
    assert not (out / "checkpoints" / "step-3").exists()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


CORRUPTIONS = {
    "truncated encoder weights": lambda d: _truncate(d / "model" / "encoder" / "model.safetensors"),
    "truncated head weights": lambda d: _truncate(d / "model" / "heads.safetensors"),
    "missing optimizer state": lambda d: (d / "optimizer.pt").unlink(),
    "truncated optimizer state": lambda d: _truncate(d / "optimizer.pt"),
    "missing rng state": lambda d: (d / "rng-0.pt").unlink(),
    "garbled trainer state": lambda d: (d / ckpt.STATE_FILE).write_text('{"step": 9, "str'),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_older(tiny_model_dir, tmp_path, reference, killed_after_step_9,
                                                       corruption, caplog):
    out = _copy_of(killed_after_step_9, tmp_path)
    CORRUPTIONS[corruption](out / "checkpoints" / "step-9")
    with caplog.at_level(logging.WARNING, logger="xstilts.train.checkpoint"):
        resumed = train_stage(_config(tiny_model_dir), out, task_data=synthetic("copycls"))
    _assert_same_result(reference, resumed)
    warned = [r.getMessage() for r in caplog.records if "step-9" in r.getMessage()]
    assert warned and "cannot be used" in warned[0], [r.getMessage() for r in caplog.records]
    resumed_from = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed_from] == sorted(r["step"] for r in resumed_from)


class _Payload:
    """A pickle that runs code when it is loaded (writes a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('executed')",)


def _plant(path: Path, marker: Path) -> None:
    torch.save({"state": {}, "param_groups": [], "payload": _Payload(marker)}, path)


def test_crafted_pickle_is_refused_not_executed(tmp_path):
    marker, evil = tmp_path / "marker", tmp_path / "optimizer.pt"
    _plant(evil, marker)
    # the payload is live: an unrestricted unpickler runs it
    torch.load(evil, weights_only=False)
    assert marker.is_file()
    marker.unlink()
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt.load_torch(evil)
    assert not marker.exists()


def test_crafted_pickle_in_checkpoint_is_not_executed_on_resume(tiny_model_dir, tmp_path, reference,
                                                                 killed_after_step_9):
    out = _copy_of(killed_after_step_9, tmp_path)
    marker = tmp_path / "marker"
    _plant(out / "checkpoints" / "step-9" / "optimizer.pt", marker)
    resumed = train_stage(_config(tiny_model_dir), out, task_data=synthetic("copycls"))
    assert not marker.exists()
    _assert_same_result(reference, resumed)


@pytest.mark.parametrize("damage", ["crafted optimizer state", "truncated head weights"])
def test_no_usable_checkpoint_restarts_from_the_beginning(tiny_model_dir, tmp_path, reference, killed_after_step_9,
                                                          damage):
    out = _copy_of(killed_after_step_9, tmp_path)
    marker = tmp_path / "marker"
    for step in (3, 6, 9):
        d = out / "checkpoints" / f"step-{step}"
        if damage == "crafted optimizer state":
            _plant(d / "optimizer.pt", marker)
        else:
            CORRUPTIONS[damage](d)
    resumed = train_stage(_config(tiny_model_dir), out, task_data=synthetic("copycls"))
    assert not marker.exists()
    _assert_same_result(reference, resumed)  # the failed attempts left the random generators untouched


def test_checkpoint_of_another_config_is_still_an_error(tiny_model_dir, tmp_path, killed_after_step_9):
    out = _copy_of(killed_after_step_9, tmp_path)
    other = stage_config(tiny_model_dir, **{**OVERRIDES, "learning_rate": 1e-3})
    with pytest.raises(CheckpointError, match="another config"):
        train_stage(other, out, task_data=synthetic("copycls"))


def test_rng_file_of_an_earlier_version_still_restores(tmp_path):
    """Earlier versions pickled numpy's RNG state as an array: such a file loads (plain numpy
    arrays only) and restores every generator, so a stage interrupted before the upgrade resumes."""
    import random

    import numpy as np

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    (tmp_path / "step-3").mkdir()
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
               tmp_path / "step-3" / "rng-0.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    rng = ckpt.load_rng_states(tmp_path / "step-3")
    ckpt.set_rng_state(rng[0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
