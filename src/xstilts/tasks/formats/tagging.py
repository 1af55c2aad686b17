"""Sequence tagging of pre-split words (UD-POS, PAN-X/WikiANN NER, CCG supertags).

Words are tokenised with ``is_split_into_words=True``; the word's tag goes on its first
sub-token and the other sub-tokens get -100 (or the word's tag too, with
``FeaturizeOptions.label_all_subtokens``). Features keep ``word_ids`` (-1 on special tokens).

Over-long sentences are **truncated** to ``max_length`` tokens (no windows). Decoding
returns exactly one tag per word: a word that lost all its sub-tokens to truncation (or
that the tokenizer turned into no token at all) is tagged ``"O"`` when ``"O"`` is in the
label set, else with the first label of the label set. The number of such words is
logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from xstilts.errors import XStiltsError
from xstilts.tasks.formats._common import (
    IGNORE_INDEX,
    check_coverage,
    check_metric,
    collate_flat,
    column,
    group_features,
    label_index,
    require_label_list,
)
from xstilts.tasks.formats._records import HubRows, JsonRecord
from xstilts.tasks.formats.base import FeaturizeOptions, Format
from xstilts.tasks.types import TaggingExample

logger = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")
NO_WORD = -1


def fallback_tag(label_list: Sequence[str]) -> str:
    """The tag given to words the model never saw: ``"O"`` if the label set has it, else its first label."""
    return "O" if "O" in label_list else label_list[0]


def first_subtoken_positions(word_ids: Sequence[int]) -> dict[int, int]:
    """``{word index: position of its first sub-token}``."""
    first: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w != NO_WORD and w not in first:
            first[int(w)] = pos
    return first


class TaggingFormat(Format):
    """One tag per word; label on the first sub-token, ``word_ids`` kept for decoding."""

    name: ClassVar[str] = "tagging"
    head_kind: ClassVar[str | None] = "tagging"
    metrics: ClassVar[tuple[str, ...]] = ("ner_f1", "pos")
    json_fields: ClassVar[dict[str, str]] = {"id": "id", "tokens": "tokens", "tags": "tags"}

    def example_from_json(self, record: JsonRecord, label_list: Sequence[str] | None = None) -> TaggingExample:
        """``tokens`` (list), optional ``tags`` (as many, each in label_list)."""
        tokens = record.require("tokens", list)
        tags = record.opt("tags")
        if tags is not None:
            if not isinstance(tags, list) or len(tags) != len(tokens):
                raise record.error(f"'tags' should be a list as long as 'tokens' ({len(tokens)})")
            tags = [record.label(t, label_list) for t in tags]
        return TaggingExample(id=record.id, tokens=[str(t) for t in tokens], tags=tags)

    def examples_from_hub(self, rows: HubRows, label_list: Sequence[str] | None = None,
                          language: str | None = None) -> list[TaggingExample]:
        """``tokens`` and ``tags`` columns; ``ClassLabel`` tag ids become their names."""
        names = rows.label_names("tags")
        out: list[TaggingExample] = []
        for i, row in rows:
            tags = rows.get(row, "tags")
            if tags is not None and names:
                tags = [names[t] for t in tags]
            out.append(TaggingExample(id=str(i), tokens=list(rows.get(row, "tokens")), tags=list(tags) if tags else None))
        return out

    def is_labelled(self, example: TaggingExample) -> bool:
        """Whether the sentence has tags."""
        return example.tags is not None

    def featurize(
        self,
        examples: Sequence[TaggingExample],
        tokenizer: Any,
        options: FeaturizeOptions,
        label_list: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One feature per sentence (truncated to ``max_length``); ``labels`` when any example has tags."""
        if not examples:
            return []
        if not getattr(tokenizer, "is_fast", False):
            raise XStiltsError("tagging needs a fast tokenizer (word ids)")
        for ex in examples:
            if ex.tags is not None and len(ex.tags) != len(ex.tokens):
                raise XStiltsError(
                    f"tagging: example '{ex.id}' has {len(ex.tokens)} words but {len(ex.tags)} tags"
                )
        labelled = any(ex.tags is not None for ex in examples)
        labels = require_label_list(label_list, self.name) if labelled else None
        enc = tokenizer(
            [list(ex.tokens) for ex in examples],
            is_split_into_words=True,
            truncation=True,
            max_length=options.max_length,
        )
        features: list[dict[str, Any]] = []
        n_cut = 0
        for i, ex in enumerate(examples):
            word_ids = [NO_WORD if w is None else int(w) for w in enc.word_ids(i)]
            feat: dict[str, Any] = {k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            feat["example_index"] = i
            feat["word_ids"] = word_ids
            n_cut += len({w for w in word_ids if w != NO_WORD}) < len(ex.tokens)
            if labels is not None:
                feat["labels"] = self._token_labels(ex, word_ids, labels, options.label_all_subtokens)
            features.append(feat)
        if n_cut:
            logger.info(
                "tagging: %d of %d sentences lost words to max_length=%d (those words decode to the fallback tag)",
                n_cut, len(examples), options.max_length,
            )
        return features

    def _token_labels(self, example: TaggingExample, word_ids: Sequence[int], labels: Sequence[str],
                      all_subtokens: bool) -> list[int]:
        """Tag ids on each word's first sub-token (every sub-token with ``all_subtokens``), -100 elsewhere."""
        if example.tags is None:
            return [IGNORE_INDEX] * len(word_ids)
        tag_ids = [label_index(labels, t, example.id, self.name) for t in example.tags]
        row = []
        prev = NO_WORD
        for w in word_ids:
            first = w != prev or all_subtokens
            row.append(tag_ids[w] if w != NO_WORD and first else IGNORE_INDEX)
            prev = w
        return row

    def collate(self, features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """``[B, L_max]`` inputs and ``labels`` (padded with -100)."""
        return collate_flat(features, pad_token_id, MODEL_KEYS)

    def decode(
        self,
        examples: Sequence[TaggingExample],
        features: Sequence[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        label_list: Sequence[str] | None = None,
        **options: Any,
    ) -> dict[str, list[str]]:
        """The argmax at each word's first sub-token of ``logits`` [F, L, K]; one tag per word."""
        labels = require_label_list(label_list, self.name)
        logits = outputs["logits"]
        if len(logits) != len(features):
            raise XStiltsError(f"tagging: {len(logits)} logit rows for {len(features)} features")
        fallback = fallback_tag(labels)
        all_word_ids = column(features, "word_ids")
        predictions: dict[str, list[str]] = {}
        for ex_idx, feat_ids in enumerate(group_features(features, len(examples))):
            if not feat_ids:
                continue
            example = examples[ex_idx]
            tags = [fallback] * len(example.tokens)
            for f in feat_ids:
                first = first_subtoken_positions(all_word_ids[f])
                if not first:
                    continue
                row = np.asarray(logits[f])
                if row.shape[-1] != len(labels):
                    raise XStiltsError(
                        f"tagging: logits have {row.shape[-1]} classes but the label set has {len(labels)}"
                    )
                for w, pos in first.items():
                    if w < len(tags):
                        tags[w] = labels[int(np.argmax(row[pos]))]
            predictions[example.id] = tags
        return predictions

    def score(
        self,
        examples: Sequence[TaggingExample],
        predictions: dict[str, Any],
        metric: str,
        language: str | None = None,
    ) -> dict[str, float]:
        """``ner_f1`` (entity-level, seqeval semantics) or ``pos`` (XTREME UD-POS) scores."""
        check_metric(self.name, metric, self.metrics)
        check_coverage(examples, predictions, self.name)
        preds, golds = [], []
        for ex in examples:
            if ex.tags is None:
                raise XStiltsError(f"tagging: example '{ex.id}' has no gold tags (e.g. PAN-X test); score its dev split")
            pred = list(predictions[ex.id])
            if len(pred) != len(ex.tags):
                raise XStiltsError(
                    f"tagging: prediction for '{ex.id}' has {len(pred)} tags but the sentence has {len(ex.tags)} words"
                )
            preds.append(pred)
            golds.append(list(ex.tags))
        from xstilts import metrics

        if metric == "ner_f1":
            return dict(metrics.ner_scores(preds, golds))
        return dict(metrics.pos_scores(preds, golds))
