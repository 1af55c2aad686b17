"""Retrieval throughput: Tatoeba over every local language with e5-small, sentences/s.

One ``zero_shot_eval`` call embeds both sides of every language's pairs (sorted,
dynamically padded batches under ``inference_mode``) and scores nearest-neighbour
accuracy; sentences/s counts both sides. The accuracy is reported too, as a check that
the fast path is also the right one.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any


def measure(side: str, config: dict[str, Any]) -> dict[str, Any]:
    if side != "ours":
        raise ValueError("retrieval has one side")
    os.environ.setdefault("XSTILTS_LOG", "WARNING")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from xstilts import paths
    from xstilts.evaluate import zero_shot_eval
    from xstilts.models import prepare_e5_small

    model = str(prepare_e5_small()) if config["model"] == "e5-small" else config["model"]
    with tempfile.TemporaryDirectory(prefix="xstilts-bench-retrieval-") as tmp:
        cold = Path(tmp) / "features"
        paths.features_cache_dir = lambda: cold  # type: ignore[assignment]  # tokenising is timed
        t0 = time.perf_counter()
        rep = zero_shot_eval(model, "tatoeba", languages="all", data_dir=config.get("data_dir"),
                             max_examples=config.get("max_examples"), batch_size=config["batch_size"])
        elapsed = time.perf_counter() - t0
    pairs = sum(rep.n_examples.values())
    return {"seconds": elapsed, "languages": len(rep.per_language), "pairs": pairs,
            "sentences_per_s": 2 * pairs / elapsed, "average_accuracy": rep.average.get("accuracy")}
