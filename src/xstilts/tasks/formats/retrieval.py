"""Bitext retrieval with no training data (Tatoeba, BUCC).

Featurisation tokenises both sides of every :class:`BitextExample` separately: two features
per example, with ``side`` = ``"source"`` or ``"target"``. The evaluate layer embeds them
(the encoder layer and pooling are its settings, see ``xstilts.models.predict``). The one
retrieval decoder, :meth:`RetrievalFormat.retrieve`, turns those embeddings into a
:class:`Retrieval` through :mod:`xstilts.metrics.retrieval`: for Tatoeba every source sentence's
nearest target (cosine or margin; optionally the reverse direction too), for BUCC the pairs
mined over the pool above a threshold. :meth:`RetrievalFormat.score` scores either from the
predictions alone (so ``rescore`` recomputes every number from the prediction files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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


class RetrievalFormat(Format):
    """Sentences of both sides as features; nearest neighbour (Tatoeba) or bitext mining (BUCC)."""

    name: ClassVar[str] = "retrieval"
    head_kind: ClassVar[str | None] = None
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

    # ------------------------------------------------------------------ decoding (the one retrieval decoder)
    def side_embeddings(self, features: Sequence[dict[str, Any]], embeddings: np.ndarray,
                        n_examples: int) -> tuple[np.ndarray, np.ndarray]:
        """``(source, target)`` embedding matrices ``[n_examples, H]``, row ``i`` = example ``i``,
        from the embeddings of the features (``[F, H]``, aligned with ``features``)."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(features):
            raise XStiltsError(f"retrieval: embeddings of shape {emb.shape} do not match {len(features)} features")
        rows = {side: np.full(n_examples, -1, dtype=np.int64) for side in SIDES}
        for f, (side, ex_idx) in enumerate(zip(column(features, "side"), column(features, "example_index"))):
            rows[side][int(ex_idx)] = f
        for side in SIDES:
            if (rows[side] < 0).any():
                raise XStiltsError(f"retrieval: {int((rows[side] < 0).sum())} of {n_examples} examples have no "
                                   f"{side} feature: decode with the examples the features were made from")
        return emb[rows["source"]], emb[rows["target"]]

    def retrieve(
        self,
        examples: Sequence[BitextExample],
        features: Sequence[dict[str, Any]],
        embeddings: np.ndarray,
        metric: str = "tatoeba",
        *,
        margin: str | None = None,
        k: int = 4,
        normalize: bool = True,
        both_directions: bool = False,
    ) -> Retrieval:
        """Decode sentence embeddings of one language into a :class:`Retrieval` (Tatoeba and BUCC).

        ``tatoeba``: every source (non-English) sentence's nearest target (English) sentence,
        by cosine (``margin=None``) or margin score over ``k`` neighbours; ``both_directions``
        adds target -> source. ``bucc``: bitext mining over the pool of all sentences
        (:func:`~xstilts.metrics.mine_bitext`, margin ``margin`` or ``"ratio"``); the kept
        pairs are those scoring above the F1-optimal threshold on these examples' gold pairs
        (an oracle threshold, as ``bucc_f1`` without a threshold).
        """
        check_metric(self.name, metric, self.metrics)
        if not examples:
            return Retrieval(metric, {})
        src, tgt = self.side_embeddings(features, embeddings, len(examples))
        if metric == "bucc":
            return _mine(examples, src, tgt, margin=margin or "ratio", k=k, normalize=normalize)
        fwd = _nearest(examples, src, tgt, margin=margin, k=k, normalize=normalize)
        bwd = _nearest(examples, tgt, src, margin=margin, k=k, normalize=normalize) if both_directions else None
        return Retrieval(metric, fwd, reverse=bwd)

    def decode(
        self,
        examples: Sequence[BitextExample],
        features: Sequence[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        label_list: Sequence[str] | None = None,
        *,
        direction: str = "source_to_target",
        metric: str = "tatoeba",
        **options: Any,
    ) -> dict[str, str]:
        """:meth:`retrieve`'s predictions from ``outputs["embeddings"]`` [F, H].

        ``direction="source_to_target"`` (every non-English sentence looks for its English
        translation) returns ``{source example id: id of the example whose target is
        nearest}``; ``"target_to_source"`` the reverse. ``options``: ``margin``, ``k``,
        ``normalize`` of :meth:`retrieve`.
        """
        if direction not in DIRECTIONS:
            raise UnknownNameError("retrieval direction", direction, list(DIRECTIONS))
        reverse = direction == "target_to_source"
        known = {key: options[key] for key in ("margin", "k", "normalize") if key in options}
        found = self.retrieve(examples, features, outputs["embeddings"], metric, both_directions=reverse, **known)
        return (found.reverse or {}) if reverse else found.predictions

    def score(
        self,
        examples: Sequence[BitextExample],
        predictions: dict[str, Any],
        metric: str,
        language: str | None = None,
    ) -> dict[str, float]:
        """``tatoeba``: accuracy (percent) of ``{id: predicted target id}`` (gold: the example
        itself). ``bucc``: F1 / precision / recall of the mined pairs ``{source id: target id}``
        against the gold pairs (every example with itself)."""
        check_metric(self.name, metric, self.metrics)
        from xstilts.metrics import accuracy, prf

        if metric == "bucc":
            return prf([(str(s), str(t)) for s, t in predictions.items()], _gold_pairs(examples))
        check_coverage(examples, predictions, self.name)
        return {"accuracy": accuracy([predictions[ex.id] for ex in examples], [ex.id for ex in examples])}

    def score_retrieval(self, examples: Sequence[BitextExample], found: Retrieval) -> dict[str, float]:
        """Every score of a :class:`Retrieval`: :meth:`score` of its predictions, plus
        ``accuracy_reverse`` and ``accuracy_both`` (their mean) when it holds the reverse direction."""
        scores = self.score(examples, found.predictions, found.metric)
        if found.reverse is not None:
            scores["accuracy_reverse"] = self.score(examples, found.reverse, found.metric)["accuracy"]
            scores["accuracy_both"] = (scores["accuracy"] + scores["accuracy_reverse"]) / 2
        return scores


@dataclass
class Retrieval:
    """What the retrieval decoder found in one language (what ``predictions/<lang>.jsonl`` holds).

    ``predictions``: tatoeba: every source example id -> the id whose target is nearest; bucc:
    the mined pairs kept (source id -> target id), best first. ``reverse``: target example id ->
    the id whose source is nearest (tatoeba with both directions). ``pair_scores``: bucc's
    margin score of each kept pair (by source id); ``threshold``: the score threshold used.
    """

    metric: str
    predictions: dict[str, str]
    reverse: dict[str, str] | None = None
    pair_scores: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None

    def to_rows(self) -> list[dict[str, Any]]:
        """JSON rows ``{"id", "prediction"}`` (+ ``"prediction_reverse"`` / ``"score"``)."""
        rows: list[dict[str, Any]] = []
        for qid, pid in self.predictions.items():
            row: dict[str, Any] = {"id": qid, "prediction": pid}
            if self.reverse is not None:
                row["prediction_reverse"] = self.reverse[qid]
            if qid in self.pair_scores:
                row["score"] = self.pair_scores[qid]
            rows.append(row)
        return rows

    @classmethod
    def from_rows(cls, metric: str, rows: Sequence[dict[str, Any]]) -> Retrieval:
        """Inverse of :meth:`to_rows` (the threshold is not in the rows)."""
        preds = {str(r["id"]): str(r["prediction"]) for r in rows}
        reverse = None
        if rows and all("prediction_reverse" in r for r in rows):
            reverse = {str(r["id"]): str(r["prediction_reverse"]) for r in rows}
        scores = {str(r["id"]): float(r["score"]) for r in rows if "score" in r}
        return cls(metric, preds, reverse=reverse, pair_scores=scores)


def _gold_pairs(examples: Sequence[BitextExample]) -> set[tuple[str, str]]:
    return {(ex.id, ex.id) for ex in examples}


def _nearest(examples: Sequence[BitextExample], queries: np.ndarray, keys: np.ndarray, *, margin: str | None,
             k: int, normalize: bool) -> dict[str, str]:
    """``{id of query row i: id of its nearest key row}`` (rows are examples)."""
    from xstilts.metrics import nearest_neighbours

    best = nearest_neighbours(queries, keys, margin=margin, k=k, normalize=normalize)
    return {examples[i].id: examples[int(j)].id for i, j in enumerate(best)}


def _mine(examples: Sequence[BitextExample], src: np.ndarray, tgt: np.ndarray, *, margin: str, k: int,
          normalize: bool) -> Retrieval:
    """BUCC: mined pairs scoring above the F1-optimal threshold on the examples' gold pairs."""
    from xstilts.metrics import mine_bitext, optimize_threshold

    ids = [ex.id for ex in examples]
    mined = [(ids[s], ids[t], score) for s, t, score in mine_bitext(src, tgt, k=k, margin=margin, normalize=normalize)]
    threshold = float(optimize_threshold([((s, t), score) for s, t, score in mined], _gold_pairs(examples)))
    kept = [(s, t, score) for s, t, score in mined if score > threshold]
    return Retrieval("bucc", {s: t for s, t, _ in kept}, pair_scores={s: score for s, _, score in kept},
                     threshold=threshold)
