"""Bitext retrieval with no training data (Tatoeba, BUCC, Mewsli-X / LAReQA pairs).

Featurisation tokenises both sides of every :class:`BitextExample` separately: two features
per example, with ``side`` = ``"source"`` or ``"target"``. The evaluate layer embeds them
(the encoder layer and pooling are its settings, see ``xstilts.models.predict``). The one
retrieval decoder, :meth:`RetrievalFormat.retrieve`, turns those embeddings into a
:class:`Retrieval` through :mod:`xstilts.metrics.retrieval`. Tatoeba, in XTREME's direction
(``third_party/utils_retrieve.py`` ``similarity_search``): every *English* (target) sentence's
nearest non-English (source) sentence, by cosine or margin; ``both_directions`` adds the
other direction (``accuracy_xx_to_en``). ``map@20`` (Mewsli-X, LAReQA): every source ranks the
pool of distinct targets. BUCC is mined over the whole comparable corpora of the official
layout (:mod:`xstilts.tasks.bucc`, :mod:`xstilts.evaluate.bucc_eval`), never among gold pairs.
:meth:`RetrievalFormat.score` scores from the predictions alone (so ``rescore`` recomputes
every number from the prediction files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from xstilts.errors import UnknownNameError, XStiltsError
from xstilts.tasks.formats._common import check_coverage, check_metric, collate_flat, column
from xstilts.tasks.formats._records import JsonRecord
from xstilts.tasks.formats.base import FeaturizeOptions, Format, join_text
from xstilts.tasks.types import BitextExample

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")
SIDES = ("source", "target")
#: "target_to_source" is XTREME's Tatoeba direction (English queries, non-English indexed)
DIRECTIONS = ("target_to_source", "source_to_target")
MAP_K = 20


class RetrievalFormat(Format):
    """Sentences of both sides as features; nearest neighbour (Tatoeba) or bitext mining (BUCC)."""

    name: ClassVar[str] = "retrieval"
    head_kind: ClassVar[str | None] = None
    metrics: ClassVar[tuple[str, ...]] = ("tatoeba", "bucc", "map@20")
    json_fields: ClassVar[dict[str, str]] = {"id": "id", "source": "source", "target": "target"}

    def example_from_json(self, record: JsonRecord, label_list: Sequence[str] | None = None) -> BitextExample:
        """``source`` (non-English) and ``target`` (English) sentences."""
        return BitextExample(id=record.id, source=record.require("source", str), target=record.require("target", str))

    def is_labelled(self, example: BitextExample) -> bool:
        """A translation pair is its own gold alignment."""
        return True

    def input_json(self, example: BitextExample) -> dict[str, Any]:
        """Both sides of the pair."""
        return {"source": example.source, "target": example.target}

    def gold_json(self, example: BitextExample) -> str:
        """The id of the aligned sentence: its own."""
        return example.id

    def input_text(self, example: BitextExample) -> str:
        """The English side of the pair (``target``)."""
        return join_text([example.target])

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
        """Decode sentence embeddings of one language into a :class:`Retrieval`.

        ``tatoeba``: XTREME's direction, every target (English) sentence's nearest source
        (non-English) sentence, by cosine (``margin=None``) or margin score over ``k``
        neighbours (``predictions``: English example id -> predicted example id);
        ``both_directions`` adds source -> target (``reverse``). ``map@20``: every source
        ranks the distinct targets (``predictions``: id -> the top 20 as example ids).
        ``bucc`` is refused here: translation pairs hold no distractors
        (:func:`xstilts.tasks.bucc.require_corpora`; corpora are mined by ``evaluate.bucc_eval``).
        """
        check_metric(self.name, metric, self.metrics)
        if metric == "bucc":
            from xstilts.tasks.bucc import require_corpora

            require_corpora("bucc", examples)
            raise XStiltsError("BUCC corpora are mined by xstilts.evaluate.bucc_eval.bucc_language, not by "
                               "RetrievalFormat.retrieve (which decodes translation pairs)")
        if not examples:
            return Retrieval(metric, {})
        src, tgt = self.side_embeddings(features, embeddings, len(examples))
        if metric == "map@20":
            return _rank_pool(examples, src, tgt, normalize=normalize)
        en_to_xx = _nearest(examples, tgt, src, margin=margin, k=k, normalize=normalize)
        xx_to_en = _nearest(examples, src, tgt, margin=margin, k=k, normalize=normalize) if both_directions else None
        return Retrieval(metric, en_to_xx, reverse=xx_to_en)

    def decode(
        self,
        examples: Sequence[BitextExample],
        features: Sequence[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        label_list: Sequence[str] | None = None,
        *,
        direction: str = "target_to_source",
        metric: str = "tatoeba",
        **options: Any,
    ) -> dict[str, str]:
        """:meth:`retrieve`'s predictions from ``outputs["embeddings"]`` [F, H].

        ``direction="target_to_source"`` (XTREME's: every English sentence looks for its
        non-English translation) returns ``{example id: id of the example whose source is
        nearest to its target}``; ``"source_to_target"`` the other direction. ``options``:
        ``margin``, ``k``, ``normalize`` of :meth:`retrieve`.
        """
        if direction not in DIRECTIONS:
            raise UnknownNameError("retrieval direction", direction, list(DIRECTIONS))
        reverse = direction == "source_to_target"
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
        """``tatoeba``: accuracy (percent) of ``{id: predicted id}`` (gold: the example itself).
        ``map@20``: MRR@20 (= mAP@20 with one relevant candidate, XTREME ``utils_mewslix.evaluate``)
        of ``{id: ranked example ids}`` against the first example sharing the query's target.
        ``bucc``: F1 / precision / recall of the mined pairs ``{source id: target id}``
        against the corpora's gold pairs."""
        check_metric(self.name, metric, self.metrics)
        from xstilts.metrics import accuracy, mean_reciprocal_rank, prf

        if metric == "bucc":
            return prf([(str(s), str(t)) for s, t in predictions.items()], _gold_pairs(examples))
        check_coverage(examples, predictions, self.name)
        if metric == "map@20":
            return {"map@20": mean_reciprocal_rank(_pool_gold(examples), predictions, k=MAP_K)}
        return {"accuracy": accuracy([predictions[ex.id] for ex in examples], [ex.id for ex in examples])}

    def score_retrieval(self, examples: Sequence[BitextExample], found: Retrieval) -> dict[str, float]:
        """Every score of a :class:`Retrieval`: :meth:`score` of its predictions (``accuracy`` in
        XTREME's direction), plus ``accuracy_xx_to_en`` when it holds the other direction."""
        scores = self.score(examples, found.predictions, found.metric)
        if found.reverse is not None:
            scores["accuracy_xx_to_en"] = self.score(examples, found.reverse, found.metric)["accuracy"]
        return scores


@dataclass
class Retrieval:
    """What the retrieval decoder found in one language (what ``predictions/<lang>.jsonl`` holds).

    ``predictions``: tatoeba: every example id -> the id whose source (non-English) sentence is
    nearest to its target (English) sentence (XTREME's direction); map@20: every example id ->
    the ranked ids of its top 20 distinct targets; bucc: the mined pairs kept (source id ->
    target id), best first. ``reverse``: example id -> the id whose target is nearest to its
    source (tatoeba with both directions). ``pair_scores``: bucc's
    margin score of each kept pair (by source id); ``threshold``: the score threshold used.
    """

    metric: str
    predictions: dict[str, Any]
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
        preds = {str(r["id"]): ([str(x) for x in r["prediction"]] if isinstance(r["prediction"], list)
                                else str(r["prediction"])) for r in rows}
        reverse = None
        if rows and all("prediction_reverse" in r for r in rows):
            reverse = {str(r["id"]): str(r["prediction_reverse"]) for r in rows}
        scores = {str(r["id"]): float(r["score"]) for r in rows if "score" in r}
        return cls(metric, preds, reverse=reverse, pair_scores=scores)


def _gold_pairs(examples: Sequence[Any]) -> set[tuple[str, str]]:
    """The gold id pairs of BUCC corpora (:class:`xstilts.tasks.bucc.BuccCorpus`)."""
    from xstilts.tasks.bucc import require_corpora

    return set().union(*(corpus.gold or set() for corpus in require_corpora("bucc", examples)))


def _pool_gold(examples: Sequence[BitextExample]) -> dict[str, str]:
    """``{example id: id of the first example with the same target}`` (its relevant candidate)."""
    first: dict[str, str] = {}
    return {ex.id: first.setdefault(ex.target, ex.id) for ex in examples}


def _rank_pool(examples: Sequence[BitextExample], src: np.ndarray, tgt: np.ndarray, *,
               normalize: bool) -> Retrieval:
    """map@20: every source ranks the distinct targets (deduplicated by text)."""
    from xstilts.metrics import pair_pool_ranking

    ranked, _ = pair_pool_ranking(src, tgt, [ex.target for ex in examples], k=MAP_K, normalize=normalize)
    return Retrieval("map@20", {ex.id: [examples[int(r)].id for r in row] for ex, row in zip(examples, ranked)})


def _nearest(examples: Sequence[BitextExample], queries: np.ndarray, keys: np.ndarray, *, margin: str | None,
             k: int, normalize: bool) -> dict[str, str]:
    """``{id of query row i: id of its nearest key row}`` (rows are examples)."""
    from xstilts.metrics import nearest_neighbours

    best = nearest_neighbours(queries, keys, margin=margin, k=k, normalize=normalize)
    return {examples[i].id: examples[int(j)].id for i, j in enumerate(best)}

