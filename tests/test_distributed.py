"""xstilts' entry points end the process group a launched process set up (xstilts.distributed).

A process that exits with its gloo group alive can abort after its work is done
("terminate called without an active exception"), which the launcher reports as a failed
stage; CI saw it once in the two-process predict test. Each test sets up a real one-process
gloo group and checks who destroys it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from xstilts.distributed import release_process_group


@pytest.fixture
def group(tmp_path: Path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_release_without_a_group_does_nothing():
    assert not dist.is_initialized()
    assert release_process_group() is False


def test_release_destroys_the_group(group):
    assert release_process_group() is True
    assert not dist.is_initialized()


def test_cli_releases_the_group_when_a_command_succeeds(group, monkeypatch):
    from xstilts.cli import main

    monkeypatch.setattr(sys, "argv", ["xstilts", "--help"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (None, 0)
    assert not dist.is_initialized()


def test_cli_leaves_the_group_after_an_error(group, monkeypatch):
    """A peer may still wait on a collective: only a clean finish tears the group down."""
    from xstilts.cli import main

    monkeypatch.setattr(sys, "argv", ["xstilts", "no-such-command"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code not in (None, 0)
    assert dist.is_initialized()


def test_launched_stage_entry_releases_the_group_after_training(group, monkeypatch, tmp_path):
    import xstilts.train
    from xstilts.experiments import executor
    from xstilts.train.config import TrainConfig

    trained = []
    monkeypatch.setattr(TrainConfig, "model_validate_json", classmethod(lambda cls, text: text))
    monkeypatch.setattr(xstilts.train, "train_stage", lambda config, out: trained.append((config, out)))
    spec = tmp_path / "stage_config.json"
    spec.write_text("{}")
    assert executor._main([str(spec), str(tmp_path / "stage")]) == 0
    assert trained == [("{}", tmp_path / "stage")]
    assert not dist.is_initialized()


def test_finishing_a_stage_with_trackers_keeps_the_group(group, tiny_model_dir, tmp_path):
    """The engine finishes its trackers but leaves the group (accelerate's end_training would
    destroy it under a process that may go on to evaluate on it)."""
    from tests.test_train_support import stage_config, synthetic
    from xstilts.train import train_stage

    out = tmp_path / "stage"
    res = train_stage(stage_config(tiny_model_dir, max_steps=2, trackers=["tensorboard"]), out,
                      task_data=synthetic("copycls"))
    assert res.steps == 2
    assert any(out.rglob("events.out.tfevents*"))  # the tracker ran and was finished
    assert dist.is_initialized()
