"""Where a training step's time goes: ``torch.profiler`` over each side's training loop.

    python -m benchmarks.profile_train                      # bf16, 400 PAN-X en sentences
    python -m benchmarks.profile_train --precision fp32 --n-train 1000 --side ours

The job is the training benchmark's (``benchmarks/train_bench.py``: same data, model, optimizer
and settings). Profiled: xstilts's loop (``StageTrainer.train`` up to ``finish``: no saving) and
the ``Trainer``'s ``train()`` (optimizer set-up included, a few ms), so feature tokenising, model
loading and the dev evaluation stay outside. Prints, per side, the self CPU time of each group of
operators (matrix products, dropout's random masks, dtype casts, the optimizer, ...) and the top
operators. Profiling adds overhead to every operator, so shares are indicative, not timings; the
benchmark's throughput numbers come from ``python -m benchmarks.run``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any
from unittest import mock

#: operator groups (first match wins); everything else is "other"
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product")),
    ("dropout masks (RNG)", ("aten::bernoulli", "aten::native_dropout", "aten::uniform_")),
    ("optimizer", ("aten::_fused_adamw", "aten::_foreach_", "aten::addcdiv", "aten::lerp")),
    ("dtype casts and copies", ("aten::copy_", "aten::_to_copy")),
    ("embedding", ("aten::embedding", "aten::index")),  # index, index_add, index_put, index_select
    ("gradient clipping norms", ("aten::linalg_vector_norm", "aten::norm")),
    ("softmax / GELU / LayerNorm", ("aten::_softmax", "aten::gelu", "aten::native_layer_norm", "aten::_log_softmax")),
]


def _group(name: str) -> str:
    for group, prefixes in GROUPS:
        if name.startswith(prefixes):
            return group
    return "other"


def _profile(run, hooks) -> dict[str, Any]:
    """Run ``run()`` with ``hooks(profiler)`` (patches that start and stop it) in place; op totals in ms."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    with contextlib.ExitStack() as stack:
        for patch in hooks(prof):
            stack.enter_context(patch)
        result = run()
    ops = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    groups: dict[str, float] = defaultdict(float)
    for name, ms in ops.items():
        groups[_group(name)] += ms
    return {"result": result, "total_ms": sum(ops.values()), "groups": dict(groups),
            "top": sorted(ops.items(), key=lambda kv: -kv[1])[:12]}


def _hooks_ours(prof) -> list[Any]:
    """Profile ``StageTrainer.train`` from its start to ``finish`` (which saves the model: left out)."""
    from xstilts.train.engine import StageTrainer

    train, finish = StageTrainer.train, StageTrainer.finish

    def profiled_train(self):
        prof.start()
        return train(self)

    def profiled_finish(self, loop_seconds: float = 0.0):
        prof.stop()
        return finish(self, loop_seconds)

    return [mock.patch.object(StageTrainer, "train", profiled_train), mock.patch.object(StageTrainer, "finish", profiled_finish)]


def _hooks_trainer(prof) -> list[Any]:
    """Profile the whole of ``Trainer.train``."""
    from transformers import Trainer

    train = Trainer.train

    def profiled_train(self, *args, **kwargs):
        with prof:
            return train(self, *args, **kwargs)

    return [mock.patch.object(Trainer, "train", profiled_train)]


def _print(side: str, prof: dict[str, Any]) -> None:
    total = prof["total_ms"]
    res = prof["result"]
    print(f"\n{side}: {res['steps']} steps, loop {res['seconds']:.1f} s under the profiler "
          f"({res['examples_per_s']:.1f} examples/s with its overhead), operators' self CPU time {total / 1e3:.1f} s")
    print(f"  {'group':30s} {'s':>7s} {'share':>7s}")
    for group, ms in sorted(prof["groups"].items(), key=lambda kv: -kv[1]):
        print(f"  {group:30s} {ms / 1e3:7.2f} {100 * ms / total:6.1f}%")
    print("  top operators: " + ", ".join(f"{name} {100 * ms / total:.1f}%" for name, ms in prof["top"][:8]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--side", choices=["both", "ours", "trainer"], default="both")
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None, help="also write the op groups to this file")
    args = ap.parse_args(argv)

    from benchmarks import train_bench

    config = {"model": args.model, "n_train": args.n_train, "n_dev": 20, "batch_size": 16, "max_length": 128, "lr": 2e-4,
              "seed": 0, "precision": args.precision, "data_dir": args.data_dir}
    out: dict[str, Any] = {"config": config}
    sides = [("ours", train_bench.measure_ours, _hooks_ours), ("trainer", train_bench.measure_baseline, _hooks_trainer)]
    for side, measure, hooks in sides:
        if args.side not in ("both", side):
            continue
        with tempfile.TemporaryDirectory(prefix=f"xstilts-prof-{side}-") as tmp:
            prof = _profile(lambda: measure(config, Path(tmp)), hooks)
        _print(side, prof)
        out[side] = {"total_ms": prof["total_ms"], "groups": prof["groups"], "top": prof["top"]}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
