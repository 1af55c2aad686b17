"""The format contract: how examples of one format become features, and outputs predictions.

A *format* is code (five of them); a *task* is data (a catalog entry naming its format).
Every format implements :class:`Format`. Train and evaluate only talk to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class FeaturizeOptions:
    """Everything featurisation depends on (part of the tokenised-cache key)."""

    max_length: int = 128
    doc_stride: int = 128  # QA: overlap (in tokens) between consecutive windows of a long context
    max_query_length: int = 64  # QA: question truncated to this many tokens
    label_all_subtokens: bool = False  # tagging: label only the first sub-token of each word (default)


class Format(ABC):
    """Base class of the five formats.

    Features are plain dicts of python ints / lists of ints (so they can be stored in Arrow).
    Keys every format emits: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when
    the tokenizer returns them), ``example_index`` (index of the source example in the
    ``examples`` sequence), and, when the examples carry gold labels, ``labels``
    (classification: int; multiple choice: int; tagging: list[int] with -100 on ignored
    positions) or ``start_positions`` / ``end_positions`` (QA). Multiple choice features hold
    ``input_ids`` etc. as ``list[list[int]]`` (one row per choice). QA features also hold
    ``offset_mapping`` (list of [start, end] char offsets, [-1, -1] outside the context).
    Tagging features also hold ``word_ids`` (-1 where no word).
    """

    name: ClassVar[str]
    #: the head kind a model needs for this format: "classification", "multiple_choice",
    #: "extractive_qa", "tagging"; None for retrieval (no head, no training)
    head_kind: ClassVar[str | None]

    @abstractmethod
    def featurize(
        self,
        examples: Sequence[Any],
        tokenizer: Any,
        options: FeaturizeOptions,
        label_list: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Tokenise ``examples`` into model features (see class docstring for the keys)."""

    @abstractmethod
    def collate(self, features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """Pad a list of features dynamically to the longest in the batch; return torch tensors.

        Only model inputs and labels are tensors; metadata keys (``example_index``,
        ``offset_mapping``, ``word_ids``) are dropped from the batch.
        """

    @abstractmethod
    def decode(
        self,
        examples: Sequence[Any],
        features: Sequence[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        label_list: Sequence[str] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Turn model outputs into one prediction per example id.

        ``outputs`` holds numpy arrays aligned with ``features``: ``logits`` (classification
        [F, K], multiple choice [F, C], tagging [F, L, K], padded), or ``start_logits`` /
        ``end_logits`` ([F, L]) for QA. Returns ``{example.id: prediction}`` where a
        prediction is a label string (classification), a choice index (multiple choice), an
        answer string ("" for no answer; QA) or a list of tags, one per word (tagging).
        """

    @abstractmethod
    def score(
        self,
        examples: Sequence[Any],
        predictions: dict[str, Any],
        metric: str,
        language: str | None = None,
    ) -> dict[str, float]:
        """Score predictions against the examples' gold labels with the named metric.

        Returns percentages (0-100) keyed by metric name, e.g. ``{"accuracy": 81.2}`` or
        ``{"f1": 70.1, "exact_match": 55.0}``. Raises :class:`~xstilts.errors.XStiltsError`
        naming the missing ids when predictions do not cover the examples.
        """
