"""Accuracy for classification, multiple choice and Tatoeba-style retrieval."""

from __future__ import annotations

from collections.abc import Sequence

from xstilts.errors import XStiltsError


def accuracy(predictions: Sequence, golds: Sequence) -> float:
    """Percentage of positions where ``predictions[i] == golds[i]`` (0-100).

    As google-research/xtreme ``evaluate.py`` ``accuracy``: plain equality, both sequences
    must have the same length.
    """
    if len(predictions) != len(golds):
        raise XStiltsError(f"accuracy: {len(predictions)} predictions for {len(golds)} gold labels; they must be aligned one to one")
    if not golds:
        raise XStiltsError("accuracy: no examples to score")
    correct = sum(int(p == g) for p, g in zip(predictions, golds))
    return 100.0 * correct / len(golds)
