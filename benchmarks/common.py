"""Shared machinery: run one side of a comparison in a fresh subprocess, interleave, summarise.

Every measurement runs in its own Python process (``python -m benchmarks.worker``), so its
peak resident memory is its own, and the two sides of a comparison alternate
(A B A B ... with the order flipped each repetition) so that drift in a shared machine's
load hits both alike. Ratios are computed per repetition pair and summarised by their
median and range: absolute times on shared machines are noise, paired ratios much less so.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def machine_info() -> dict[str, Any]:
    """The machine, library versions and thread settings, recorded with every result."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), None)
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        info["cpu"] = cpu
        info["cpu_bf16"] = "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    from importlib.metadata import version

    for dep in ("transformers", "datasets", "accelerate", "xstilts"):
        try:
            info[dep] = version(dep)
        except Exception:  # noqa: BLE001 - informational only
            info[dep] = None
    return info


def run_side(bench: str, side: str, config: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run one measurement in a fresh process; returns its JSON result (+ ``peak_rss_mb``)."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    cmd = [sys.executable, "-m", "benchmarks.worker", bench, side, json.dumps(config)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark {bench}/{side} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    out = json.loads(line)
    out["process_wall_s"] = time.perf_counter() - t0
    return out


@dataclass
class Comparison:
    """Paired repetitions of two sides (``ours`` and ``baseline``) of one benchmark."""

    name: str
    metric: str  # the throughput key compared, higher is better (e.g. "examples_per_s")
    ours: list[dict[str, Any]] = field(default_factory=list)
    baseline: list[dict[str, Any]] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [o[self.metric] / b[self.metric] for o, b in zip(self.ours, self.baseline) if b[self.metric]]

    def summary(self) -> dict[str, Any]:
        r = self.ratios()

        def stat(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
            vals = [x[key] for x in rows if x.get(key) is not None]
            if not vals:
                return None
            return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

        keys = sorted({k for row in self.ours + self.baseline for k, v in row.items() if isinstance(v, (int, float))})
        return {
            "name": self.name,
            "metric": self.metric,
            "repetitions": len(r),
            "ratio_median": statistics.median(r) if r else None,
            "ratio_min": min(r) if r else None,
            "ratio_max": max(r) if r else None,
            "ours": {k: stat(self.ours, k) for k in keys},
            "baseline": {k: stat(self.baseline, k) for k in keys},
        }


def interleaved(bench: str, config: dict[str, Any], reps: int, metric: str, name: str | None = None, log=print,
                vary_seed: bool = False) -> Comparison:
    """Run ``reps`` paired repetitions, alternating which side goes first. ``vary_seed``: repetition
    ``i`` runs both sides with seed ``config["seed"] + i``, so the spread of a quality metric over
    repetitions shows seed noise (both sides of a pair share the seed)."""
    comp = Comparison(name or bench, metric)
    for i in range(reps):
        order = ("ours", "baseline") if i % 2 == 0 else ("baseline", "ours")
        conf = config | {"seed": config.get("seed", 0) + i} if vary_seed else config
        for side in order:
            res = run_side(bench, side, conf)
            getattr(comp, side).append(res)
            log(f"  {bench} rep {i + 1}/{reps} {side:8s} {metric}={res[metric]:.2f} peak_rss={res.get('peak_rss_mb', 0):.0f}MB")
    return comp


def cold_feature_cache(workdir: Path) -> None:
    """Point this process's tokenised-feature cache at an empty folder, so tokenising is measured."""
    from xstilts import paths

    cold = workdir / "features"
    paths.features_cache_dir = lambda: cold  # type: ignore[assignment]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
