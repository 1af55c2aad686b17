"""The GPU path of the stage trainer, tested on the CPU.

A fake accelerator moves the prepared model to the ``meta`` device (as ``accelerator.prepare``
moves it to CUDA), so placement bugs show without a GPU: the compact vocabulary's full
embedding and id tables must follow the model (they stayed on the CPU, and the first
checkpoint copied device values into a CPU tensor). Also: DDP shard weighting when the
global batch is smaller than the number of processes, gradient checkpointing (same weights),
the attention-kernel setting, TF32, and the operational keys leave stage ids alone.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_train_support import stage_config, synthetic
from xstilts.errors import ConfigError
from xstilts.train import train_stage
from xstilts.train import engine as engine_mod
from xstilts.train.engine import StageTrainer
from xstilts.models.predict import to_device
from xstilts.train.modeling import configure_tf32, set_attention
from xstilts.train.sampling import shard_batch, shard_loss_weight


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))


class _FakeDeviceAccelerator:
    """A real (CPU) accelerator whose ``prepare`` moves the module to ``meta``, as a CUDA one
    moves it to the GPU (parameters keep their identity, so the optimizer still holds them)."""

    device = torch.device("meta")

    def __init__(self, acc):
        self._acc = acc

    def __getattr__(self, name):
        return getattr(self._acc, name)

    def prepare(self, module, optimizer):
        module, optimizer = self._acc.prepare(module, optimizer)
        swap = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            module.to("meta")
        finally:
            torch.__future__.set_swap_module_params_on_conversion(swap)
        return module, optimizer


@pytest.fixture
def fake_device(monkeypatch):
    real = engine_mod.make_accelerator
    monkeypatch.setattr(engine_mod, "make_accelerator", lambda *a, **k: _FakeDeviceAccelerator(real(*a, **k)))


def _tensors(trainer: StageTrainer) -> dict[str, torch.Tensor]:
    """Every tensor the trainer keeps for the model: parameters, buffers, optimizer state, compact vocabulary."""
    out = {f"module.{k}": v for k, v in trainer.module.state_dict(keep_vars=True).items()}
    for i, group in enumerate(trainer.optimizer.param_groups):
        out.update({f"optimizer.group{i}.param{j}": p for j, p in enumerate(group["params"])})
    for j, state in enumerate(trainer.optimizer.state.values()):
        out.update({f"optimizer.state{j}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim()})
    cv = trainer.compact
    out.update({"compact.full": cv.full.weight, "compact.remap_table": cv.remap_table, "compact.present": cv._present})
    return out


def test_everything_follows_the_model_device_after_prepare(tiny_model_dir, tmp_path, fake_device):
    """Fails on the old code: the full embedding and the remap table stayed on the CPU."""
    trainer = StageTrainer(stage_config(tiny_model_dir, max_steps=2, compact_vocab=True), tmp_path / "stage",
                           task_data=synthetic("copycls"))
    trainer.setup()
    assert trainer.compact is not None
    wrong = {k: str(v.device) for k, v in _tensors(trainer).items() if v.device.type != "meta"}
    assert not wrong, f"tensors left off the model's device: {wrong}"
    # what a checkpoint does first: scatter the compact rows into the full matrix on the device
    trainer.compact.sync_full()
    assert trainer.compact.full_weight().device.type == "meta"
    ids = torch.tensor([[0, 5, 2]], device="meta")
    assert trainer.compact.remap(ids).device.type == "meta"
    restored = trainer.compact.restore()  # the model gets its full embedding back on its own device
    assert restored.weight.device.type == "meta"
    assert trainer.model.encoder.get_input_embeddings() is restored


def test_batches_are_remapped_on_the_device(tiny_model_dir, tmp_path, monkeypatch):
    """Training batches go to the device first and are remapped there (one table, on the device)."""
    moved = []
    real = engine_mod.to_device
    monkeypatch.setattr(engine_mod, "to_device", lambda b, d: moved.append(sorted(b)) or real(b, d))
    trainer = StageTrainer(stage_config(tiny_model_dir, max_steps=1), tmp_path / "stage", task_data=synthetic("copycls"))
    trainer.setup()
    batch, n = trainer._next_batch("copycls", 0)
    assert moved and "input_ids" in moved[0] and n == trainer.config.batch_size
    assert int(batch["input_ids"].max()) < trainer.compact.size  # compact ids


@pytest.mark.parametrize("global_size,world", [(4, 8), (1, 2), (5, 4), (3, 2), (8, 4), (7, 1)])
def test_shard_loss_weights_count_every_example_once(global_size, world):
    """DDP averages the processes' losses; the weights make that the mean over the global batch's
    examples, with processes that rerun an item (batch smaller than the world) weighted 0."""
    per_example = torch.arange(1.0, global_size + 1.0, dtype=torch.float64) ** 2
    batch = list(range(global_size))
    ddp_mean = 0.0
    for rank in range(world):
        share = shard_batch(batch, rank, world)
        assert share  # every process has work (DDP needs every rank to step)
        local_mean = per_example[share].mean()
        ddp_mean += float(local_mean) * shard_loss_weight(global_size, rank, world) / world
    assert ddp_mean == pytest.approx(float(per_example.mean()), rel=1e-12)
    if global_size % world == 0:
        assert all(shard_loss_weight(global_size, r, world) == 1.0 for r in range(world))


def test_gradient_checkpointing_gives_the_same_weights(tiny_model_dir, tmp_path):
    """Recomputing activations replays the dropout masks: same weights with and without it."""
    weights = {}
    for gc in (False, True):
        cfg = stage_config(tiny_model_dir, max_steps=4, gradient_checkpointing=gc)
        res = train_stage(cfg, tmp_path / f"gc-{gc}", task_data=synthetic("copycls"))
        from safetensors.torch import load_file

        weights[gc] = load_file(str(res.model_dir / "encoder" / "model.safetensors"))
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=0, atol=1e-6, msg=key)


def test_operational_keys_keep_the_stage_id(tiny_model_dir):
    base = stage_config(tiny_model_dir)
    for key, value in (("gradient_checkpointing", True), ("attn_implementation", "eager"), ("tf32", False)):
        assert stage_config(tiny_model_dir, **{key: value}).hash() == base.hash(), key


def test_attention_implementation_setting(tiny_model_dir):
    from xstilts.models import load_encoder

    encoder, _ = load_encoder(str(tiny_model_dir))
    default = encoder.config._attn_implementation
    set_attention(encoder, "auto")
    assert encoder.config._attn_implementation == default
    set_attention(encoder, "eager")
    assert encoder.config._attn_implementation == "eager"
    set_attention(encoder, "sdpa")
    assert encoder.config._attn_implementation == "sdpa"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="attn_implementation"):
            set_attention(encoder, "flash_attention_2")


def test_eager_and_sdpa_train_to_the_same_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    weights = {}
    for impl in ("eager", "sdpa"):
        res = train_stage(stage_config(tiny_model_dir, max_steps=3, attn_implementation=impl), tmp_path / impl,
                          task_data=synthetic("copycls"))
        weights[impl] = load_file(str(res.model_dir / "encoder" / "model.safetensors"))
    for key, value in weights["eager"].items():
        torch.testing.assert_close(weights["sdpa"][key], value, rtol=0, atol=1e-5, msg=key)


def test_tf32_only_on_cuda(tiny_model_dir):
    before = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    try:
        configure_tf32(stage_config(tiny_model_dir), torch.device("cpu"))
        assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32) == before
        configure_tf32(stage_config(tiny_model_dir), torch.device("cuda"))  # the default: TF32 on
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
        configure_tf32(stage_config(tiny_model_dir, tf32=False), torch.device("cuda"))
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]


def test_to_device_pins_and_copies_without_blocking_on_cuda(monkeypatch):
    """On CUDA every batch tensor goes through pinned memory with a non-blocking copy (no host
    sync per tensor); on the CPU it is a plain ``.to``. (Checked with a recording tensor type.)"""
    calls = []

    class Rec(torch.Tensor):
        def pin_memory(self, *a, **k):
            calls.append("pin")
            return self

        def to(self, *a, **k):
            calls.append(("to", str(a[0]), k.get("non_blocking", False)))
            return torch.Tensor(self)

    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long).as_subclass(Rec)}
    to_device(batch, torch.device("cuda"))
    assert calls == ["pin", ("to", "cuda", True)]
    calls.clear()
    to_device(batch, torch.device("cpu"))
    assert calls == [("to", "cpu", False)]
