"""Bitext retrieval with no training data (Tatoeba, BUCC).

Featurisation tokenises both sides of every :class:`BitextExample` separately: two features
per example, with ``side`` = ``"source"`` or ``"target"``. The evaluate layer embeds them
(the encoder layer, pooling and normalisation are its settings); :meth:`RetrievalFormat.decode`
then pairs every query with its nearest neighbour by cosine similarity, and
:meth:`RetrievalFormat.score` computes Tatoeba accuracy from those pairs. BUCC's margin
scoring over a candidate pool lives in the evaluate/metrics layers, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from xstilts.errors import UnknownNameError, XStiltsError
from xstilts.tasks.formats._common import check_coverage, check_metric, collate_flat, column
from xstilts.tasks.formats._records import JsonRecord
from xstilts.tasks.formats.base import FeaturizeOptions, Format
from xstilts.tasks.types import BitextExample

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")
SIDES = ("source", "target")
DIRECTIONS = ("source_to_target", "target_to_source")


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class RetrievalFormat(Format):
    """Sentences of both sides as features; nearest neighbour by cosine; Tatoeba accuracy."""

    name: ClassVar[str] = "retrieval"
    head_kind: ClassVar[str | None] = None
    #: ``bucc`` is scored by mining over the candidate pool (evaluate layer), not by :meth:`score`
    metrics: ClassVar[tuple[str, ...]] = ("tatoeba", "bucc")
    json_fields: ClassVar[dict[str, str]] = {"id": "id", "source": "source", "target": "target"}

    def example_from_json(self, record: JsonRecord, label_list: Sequence[str] | None = None) -> BitextExample:
        """``source`` (non-English) and ``target`` (English) sentences."""
        return BitextExample(id=record.id, source=record.require("source", str), target=record.require("target", str))

    def is_labelled(self, example: BitextExample) -> bool:
        """A translation pair is its own gold alignment."""
        return True

    def featurize(
        self,
        examples: Sequence[BitextExample],
        tokenizer: Any,
        options: FeaturizeOptions,
        label_list: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Two features per example (``side`` "source" then "target"), truncated to ``max_length``."""
        if not examples:
            return []
        texts = [ex.source for ex in examples] + [ex.target for ex in examples]
        enc = tokenizer(texts, truncation=True, max_length=options.max_length)
        n = len(examples)
        features: list[dict[str, Any]] = []
        for i in range(n):
            for side_idx, side in enumerate(SIDES):
                row = i + side_idx * n
                feat: dict[str, Any] = {
                    k: enc[k][row] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc
                }
                feat["example_index"] = i
                feat["side"] = side
                features.append(feat)
        return features

    def collate(self, features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """``[B, L_max]`` ``input_ids`` / ``attention_mask`` (no labels)."""
        return collate_flat(features, pad_token_id, MODEL_KEYS)

    def decode(
        self,
        examples: Sequence[BitextExample],
        features: Sequence[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        label_list: Sequence[str] | None = None,
        *,
        direction: str = "source_to_target",
        **options: Any,
    ) -> dict[str, str]:
        """Nearest neighbour by cosine of ``embeddings`` [F, H] (aligned with ``features``).

        ``direction="source_to_target"`` (XTREME's: every non-English sentence looks for its
        English translation) returns ``{source example id: id of the example whose target is
        nearest}``; ``"target_to_source"`` the reverse.
        """
        if direction not in DIRECTIONS:
            raise UnknownNameError("retrieval direction", direction, list(DIRECTIONS))
        emb = np.asarray(outputs["embeddings"], dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(features):
            raise XStiltsError(f"retrieval: embeddings of shape {emb.shape} do not match {len(features)} features")
        rows: dict[str, dict[int, int]] = {side: {} for side in SIDES}
        for f, (side, ex_idx) in enumerate(zip(column(features, "side"), column(features, "example_index"))):
            rows[side][int(ex_idx)] = f
        query_side, key_side = ("source", "target") if direction == "source_to_target" else ("target", "source")
        q_idx = sorted(rows[query_side])
        k_idx = sorted(rows[key_side])
        if not q_idx or not k_idx:
            return {}
        queries = _normalise(emb[[rows[query_side][i] for i in q_idx]])
        keys = _normalise(emb[[rows[key_side][i] for i in k_idx]])
        nearest = np.argmax(queries @ keys.T, axis=1)
        return {examples[q].id: examples[k_idx[int(j)]].id for q, j in zip(q_idx, nearest)}

    def score(
        self,
        examples: Sequence[BitextExample],
        predictions: dict[str, Any],
        metric: str,
        language: str | None = None,
    ) -> dict[str, float]:
        """``tatoeba``: accuracy (percent) of ``{id: predicted target id}`` (gold: the example itself)."""
        check_metric(self.name, metric, ("tatoeba",))
        check_coverage(examples, predictions, self.name)
        from xstilts.metrics import accuracy

        return {"accuracy": accuracy([predictions[ex.id] for ex in examples], [ex.id for ex in examples])}
