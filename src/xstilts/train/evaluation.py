"""Dev evaluation during training, through the one shared inference loop
(:func:`xstilts.models.predict.predict`, also used by zero-shot evaluation).

With several processes every process runs its share of the length-sorted batches and one
gather gives every process all outputs, so every process decodes and scores the same
numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import logging

import numpy as np
import torch

from xstilts.train.data import StageData

logger = logging.getLogger(__name__)


def dev_predictions(model: Any, data: StageData, *, pad_token_id: int, batch_size: int, precision: str,
                    accelerator: Any = None,
                    transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
                    ) -> dict[str, dict[str, Any]]:
    """``{task: {example id: prediction}}`` of ``model`` (a MultiTaskModel) on every task's dev set.

    ``transform`` is applied to every batch on the device (the compact vocabulary's remapping).
    """
    from xstilts.models.predict import predict

    out: dict[str, dict[str, Any]] = {}
    for name, feats in data.dev.items():
        td, fmt = data.by_name[name], data.formats[name]
        logger.info("dev evaluation of %s: %d examples (eval_max_examples caps it)", name, len(td.dev))
        outputs = predict(model, name, fmt, feats, batch_size=batch_size, pad_token_id=pad_token_id,
                          precision=precision, accelerator=accelerator, transform=transform, desc=f"dev {name}")
        out[name] = fmt.decode(td.dev, feats, outputs, label_list=td.label_list)
    return out


def score_dev(data: StageData, predictions: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of dev predictions (the task's own scorer, English)."""
    by_name = data.by_name
    return {name: data.formats[name].score(by_name[name].dev, preds, by_name[name].metric, language="en")
            for name, preds in predictions.items()}


def primary_score(data: StageData, metrics: dict[str, dict[str, float]]) -> float | None:
    """Mean over tasks of each task's primary metric (what selects the best checkpoint); None without any."""
    by_name = data.by_name
    vals = [m[by_name[t].primary_metric] for t, m in metrics.items() if by_name[t].primary_metric in m]
    return float(np.mean(vals)) if vals else None
