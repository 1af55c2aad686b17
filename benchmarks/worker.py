"""One measurement in a fresh process: ``python -m benchmarks.worker BENCH SIDE CONFIG_JSON``.

Prints one JSON line with the measurement and the process's peak resident memory.
"""

from __future__ import annotations

import json
import sys

from benchmarks.common import peak_rss_mb


def main() -> None:
    bench, side, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if bench == "train":
        from benchmarks import train_bench as mod
    elif bench == "eval":
        from benchmarks import eval_bench as mod
    elif bench == "gpu":
        from benchmarks import gpu_bench as mod
    elif bench == "retrieval":
        from benchmarks import retrieval_bench as mod
    else:
        raise SystemExit(f"unknown benchmark {bench!r}")
    result = mod.measure(side, config)
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
