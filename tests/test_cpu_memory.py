"""glibc malloc settings for CPU compute (xstilts.models.cpu_memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from xstilts.models import cpu_memory
from xstilts.models.predict import predict

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
                           reason="glibc only")

# a fresh process: allocate and free a 64 MB tensor 30 times (as a layer's activations are), report
# the minor page faults of those allocations and what tune_cpu_allocator applied
_FAULTS = textwrap.dedent("""
    import json, resource, sys, torch
    from xstilts.models.cpu_memory import tune_cpu_allocator
    applied = tune_cpu_allocator() if sys.argv[1] == "tuned" else None
    x = torch.ones(4096, 4096)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(30):
        y = x * 2.0
        del y
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"applied": applied, "faults": faults}))
""")


def _run(mode: str, **env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if k != cpu_memory.MALLOC_TUNING_ENV and not k.startswith("MALLOC_")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env=full, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_tensor_memory_is_reused_instead_of_faulted_in_again() -> None:
    default, tuned = _run("default"), _run("tuned")
    applied = tuned["applied"]
    assert applied["trim_threshold"] == 1 << 30 and applied["mmap_threshold"] in (1 << 30, 32 << 20)
    # glibc's defaults: every 64 MB result is a new mapping, 16k pages faulted in each time
    assert default["faults"] > 30 * 10_000
    assert tuned["faults"] < default["faults"] / 10


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
    monkeypatch.setattr(cpu_memory.os, "confstr", lambda name: "musl 1.2")
    assert "not glibc" in cpu_memory._skip_reason()
    monkeypatch.setattr(cpu_memory.sys, "platform", "darwin")
    assert "glibc only" in cpu_memory._skip_reason()


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
