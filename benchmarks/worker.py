"""One measurement in a fresh process: ``python -m benchmarks.worker BENCH SIDE CONFIG_JSON``.

Calls ``measure_<SIDE>(config, workdir)`` of ``benchmarks/<BENCH>_bench.py`` with a fresh
temporary ``workdir``, and prints one JSON line with the measurement and the process's peak
resident memory (and peak GPU memory where there is a GPU).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.common import peak_rss_mb

BENCHES = ("train", "eval", "retrieval", "gpu")


def main() -> None:
    bench, side, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if bench not in BENCHES:
        raise SystemExit(f"unknown benchmark {bench!r} (expected one of {', '.join(BENCHES)})")
    os.environ.setdefault("XSTILTS_LOG", "WARNING")  # before xstilts is imported
    logging.basicConfig(level=logging.WARNING)
    mod = importlib.import_module(f"benchmarks.{bench}_bench")
    fn = getattr(mod, f"measure_{side}", None)
    if fn is None:
        raise SystemExit(f"benchmark {bench!r} has no side {side!r}")
    with tempfile.TemporaryDirectory(prefix=f"xstilts-bench-{bench}-{side}-") as tmp:
        result = fn(config, Path(tmp))
    result["peak_rss_mb"] = peak_rss_mb()
    try:
        import torch

        if torch.cuda.is_available():
            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
