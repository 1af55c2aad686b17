"""glibc malloc settings for CPU compute (xstilts.models.cpu_memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from xstilts.models import cpu_memory
from xstilts.models.predict import predict

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
                           reason="glibc only")

# a fresh process: how many bytes glibc has in mmapped blocks (mallinfo2().hblkhd) while a 64 MiB
# result is alive, after a 64 MiB block was freed, made in the main thread and in a thread started
# after the settings (as predict's CPU streams are); and what tune_cpu_allocator applied
_MAPPED = textwrap.dedent("""
    import ctypes, json, sys, threading, torch
    from xstilts.models.cpu_memory import tune_cpu_allocator

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        print(json.dumps({"skip": "no mallinfo2 (glibc < 2.33)"})); sys.exit()
    libc.mallinfo2.restype = Info
    applied = tune_cpu_allocator() if sys.argv[1] == "tuned" else None
    x = torch.ones(4096, 4096)
    del x  # freed: the next block of that size can reuse it
    def grown():
        before = libc.mallinfo2().hblkhd
        y = torch.ones(4096, 4096) * 2.0
        return libc.mallinfo2().hblkhd - before
    main = grown()
    box = []
    t = threading.Thread(target=lambda: box.append(grown()))
    t.start(); t.join()
    print(json.dumps({"applied": applied, "main": main, "thread": box[0]}))
""")


def _run(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in (cpu_memory.MALLOC_TUNING_ENV, "LD_PRELOAD", "GLIBC_TUNABLES") and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _MAPPED, mode], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


@glibc
def test_large_blocks_come_from_the_heap_instead_of_new_mappings() -> None:
    """Fails without the settings: glibc maps every 64 MiB block afresh (and faults its pages in)."""
    default = _run("default")
    assert default["main"] >= 64 << 20 and default["thread"] >= 64 << 20
    tuned = _run("tuned")
    if tuned["applied"] is None:
        pytest.skip("this glibc refuses a 1 GiB mmap threshold: nothing set")
    assert tuned["applied"] == {"mmap_threshold": 1 << 30, "trim_threshold": 1 << 30, "arena_max": 1}
    assert tuned["main"] < 1 << 20 and tuned["thread"] < 1 << 20


@glibc
@pytest.mark.parametrize("env", [{cpu_memory.MALLOC_TUNING_ENV: "0"}, {"MALLOC_ARENA_MAX": "4"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000"},
                                 {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}])
def test_left_alone_when_switched_off_or_the_user_chose_an_allocator(env: dict[str, str], monkeypatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cpu_memory._skip_reason() is not None
    cpu_memory.tune_cpu_allocator.cache_clear()
    try:
        assert cpu_memory.tune_cpu_allocator() is None
    finally:
        cpu_memory.tune_cpu_allocator.cache_clear()


def test_nothing_set_where_the_c_library_is_not_glibc(monkeypatch) -> None:
    monkeypatch.delenv(cpu_memory.MALLOC_TUNING_ENV, raising=False)
    monkeypatch.setattr(cpu_memory.os, "confstr", lambda name: "musl 1.2")
    assert "not glibc" in cpu_memory._skip_reason()
    monkeypatch.setattr(cpu_memory.sys, "platform", "darwin")
    assert "glibc only" in cpu_memory._skip_reason()


def test_nothing_set_where_glibc_refuses_the_threshold(monkeypatch) -> None:
    """An older glibc caps the mmap threshold at 32 MiB (what its dynamic threshold reaches): no gain, so
    neither the trim threshold nor the arena limit is set."""
    calls = []

    def mallopt(param, value):  # a function, as ctypes' (argtypes and restype are set on it)
        calls.append(param)
        return 0 if param == cpu_memory.M_MMAP_THRESHOLD else 1

    monkeypatch.setattr(cpu_memory, "_skip_reason", lambda: None)
    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda name: types.SimpleNamespace(mallopt=mallopt))
    cpu_memory.tune_cpu_allocator.cache_clear()
    try:
        assert cpu_memory.tune_cpu_allocator() is None
    finally:
        cpu_memory.tune_cpu_allocator.cache_clear()
    assert calls == [cpu_memory.M_MMAP_THRESHOLD]


class _Fmt:
    @staticmethod
    def collate(rows, pad_token_id):
        return {"x": torch.tensor([r["input_ids"] for r in rows], dtype=torch.float32)}


class _Model(torch.nn.Module):
    head_specs = {"h": None}

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, head, x):
        return {"logits": self.lin(x)}


def test_the_inference_loop_sets_them_on_the_cpu(monkeypatch) -> None:
    import xstilts.models.predict as P

    calls = []
    monkeypatch.setattr(P, "tune_cpu_allocator", lambda: calls.append(1))
    out = predict(_Model(), "h", _Fmt(), [{"input_ids": [1.0, 2.0]}, {"input_ids": [3.0, 4.0]}], device="cpu")
    assert out["logits"].shape == (2, 1) and calls


def test_the_training_engine_sets_them_on_the_cpu_only(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from tests.test_gpu_path import _FakeDeviceAccelerator
    from tests.test_train_support import stage_config, synthetic
    from xstilts.train import engine as engine_mod
    from xstilts.train.engine import StageTrainer

    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))
    calls = []
    monkeypatch.setattr(engine_mod, "tune_cpu_allocator", lambda: calls.append(1))
    trainer = StageTrainer(stage_config(tiny_model_dir, max_steps=1), tmp_path / "cpu", task_data=synthetic("copycls"))
    trainer.setup()
    assert calls == [1]
    real = engine_mod.make_accelerator
    monkeypatch.setattr(engine_mod, "make_accelerator", lambda *a, **k: _FakeDeviceAccelerator(real(*a, **k)))
    trainer = StageTrainer(stage_config(tiny_model_dir, max_steps=1), tmp_path / "dev", task_data=synthetic("copycls"))
    trainer.setup()  # the model on another device (meta, as CUDA): not set
    assert calls == [1]
