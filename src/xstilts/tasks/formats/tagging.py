"""Sequence tagging of pre-split words (UD-POS, PAN-X/WikiANN NER, CCG supertags).

Words are tokenised with ``is_split_into_words=True``; the word's tag goes on its first
sub-token and the other sub-tokens get -100 (or the word's tag too, with
``FeaturizeOptions.label_all_subtokens``). Features keep ``word_ids``: the index of each
token's word **in the whole sentence** (-1 on special tokens).

Long sentences are **split into windows before the model**, as XTREME does
(google-research/xtreme ``utils_preprocess.py``, ``panx_tokenize`` / ``udpos_tokenize``,
whose output ``run_tag.py`` then reads): words are packed greedily, in order, into
consecutive windows of at most ``max_length - special tokens`` sub-tokens, cut only at word
boundaries, with no overlap. A sentence yields one feature per window (``example_index``
is shared), and :meth:`TaggingFormat.decode` reassembles exactly one prediction per word
from them. Every word is scored: no word is lost to ``max_length``.

Why disjoint windows and not sliding windows merged by context: it is the reference
protocol, so scores stay comparable with XTREME, and every word has exactly one window,
so decoding needs no merge rule. Training featurisation uses **all** windows of every
sentence (XTREME preprocesses its training files the same way).

Two corner cases, as in XTREME: a word the tokenizer turns into no token at all is fed as
the tokenizer's unknown token (so it is scored), and a single word longer than a whole
window gets a window of its own, truncated to ``max_length`` (XTREME replaces such a word
with the unknown token; here its first sub-tokens are kept; both score it). The special
tokens counted are the tokenizer's own for one sequence (XTREME reserves 3 for XLM-R, whose
single sequences use 2, so its XLM-R windows hold one sub-token fewer). Should a word
still reach decoding without any token, it is tagged ``"O"`` (or the label set's first
label) and a warning counts such words.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from xstilts.errors import ConfigError, XStiltsError
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
from xstilts.tasks.formats.base import FeaturizeOptions, Format, join_text
from xstilts.tasks.types import TaggingExample

logger = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")
NO_WORD = -1


def fallback_tag(label_list: Sequence[str]) -> str:
    """The tag of a word that reached the model as no token at all (should not happen: see the
    module docstring): ``"O"`` if the label set has it, else its first label."""
    return "O" if "O" in label_list else label_list[0]


def first_subtoken_positions(word_ids: Sequence[int]) -> dict[int, int]:
    """``{word index: position of its first sub-token}``."""
    first: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w != NO_WORD and w not in first:
            first[int(w)] = pos
    return first


def window_budget(tokenizer: Any, max_length: int) -> int:
    """Sub-tokens of words one window holds: ``max_length`` less the special tokens of a single sequence."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise ConfigError(f"max_length={max_length} leaves no room for words after the special tokens; "
                          "raise max_length", key="max_length")
    return budget


def word_token_counts(word_ids: Sequence[int | None], n_words: int) -> list[int]:
    """Sub-tokens per word, from one encoding's word ids (None / -1 on special tokens)."""
    counts = [0] * n_words
    for w in word_ids:
        if w is not None and w != NO_WORD and w < n_words:
            counts[w] += 1
    return counts


def sentence_windows(counts: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Word ranges ``[start, end)`` that pack words greedily, in order, into windows of at most
    ``budget`` sub-tokens (``counts[i]``: sub-tokens of word ``i``), cut at word boundaries only.

    A window ends when the next word would not fit; a word longer than ``budget`` is a window of
    its own. This is XTREME's split of long tagging sentences (``utils_preprocess.py``).
    """
    windows: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, c in enumerate(counts):
        if used and used + c > budget:
            windows.append((start, i))
            start, used = i, 0
        used += c
    if start < len(counts):
        windows.append((start, len(counts)))
    return windows


def plan_windows(examples: Sequence[TaggingExample], full: Any, tokenizer: Any, budget: int
                 ) -> tuple[list[int], list[tuple[int, int, list[str]]]]:
    """Which sentences fit one window as encoded in ``full`` (their indices), and the windows
    ``(example index, first word, words)`` of the others (see :func:`sentence_windows`)."""
    short: list[int] = []
    pieces: list[tuple[int, int, list[str]]] = []
    for i, ex in enumerate(examples):
        counts = word_token_counts(full.word_ids(i), len(ex.tokens))
        if min(counts, default=1) > 0 and sum(counts) <= budget:
            short.append(i)
            continue
        words = with_unknown_words(ex.tokens, counts, tokenizer)
        pieces.extend((i, a, words[a:b]) for a, b in sentence_windows([max(c, 1) for c in counts], budget))
    return short, pieces


def token_labels(word_ids: Sequence[int], tag_ids: Sequence[int], all_subtokens: bool) -> list[int]:
    """``tag_ids[w]`` on the first sub-token of word ``w`` (on every sub-token with
    ``all_subtokens``), -100 on special tokens and the other sub-tokens."""
    row = []
    prev = NO_WORD
    for w in word_ids:
        first = w != prev or all_subtokens
        row.append(tag_ids[w] if w != NO_WORD and first else IGNORE_INDEX)
        prev = w
    return row


def with_unknown_words(words: Sequence[str], counts: Sequence[int], tokenizer: Any) -> list[str]:
    """``words`` with the tokenizer's unknown token in place of each word that yields no token."""
    unk = getattr(tokenizer, "unk_token", None)
    return [w if c > 0 or unk is None else unk for w, c in zip(words, counts)]


class TaggingFormat(Format):
    """One tag per word; label on the first sub-token, ``word_ids`` kept for decoding."""

    name: ClassVar[str] = "tagging"
    head_kind: ClassVar[str | None] = "tagging"
    metrics: ClassVar[tuple[str, ...]] = ("ner_f1", "pos")
    json_fields: ClassVar[dict[str, str]] = {"id": "id", "tokens": "tokens", "tags": "tags"}
    #: 2: long sentences split into windows at word boundaries (was: truncated)
    version: ClassVar[int] = 2

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

    def input_json(self, example: TaggingExample) -> dict[str, Any]:
        """The sentence's words."""
        return {"tokens": list(example.tokens)}

    def gold_json(self, example: TaggingExample) -> list[str] | None:
        """The tags (None: an untagged split)."""
        return list(example.tags) if example.tags is not None else None

    def input_text(self, example: TaggingExample) -> str:
        """The sentence's words (not the tags)."""
        return join_text([" ".join(example.tokens)])

    def featurize(
        self,
        examples: Sequence[TaggingExample],
        tokenizer: Any,
        options: FeaturizeOptions,
        label_list: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One feature per window of each sentence (see module docstring); ``labels`` when any example has tags."""
        if not examples:
            return []
        self._check_inputs(examples, tokenizer)
        labelled = any(ex.tags is not None for ex in examples)
        labels = require_label_list(label_list, self.name) if labelled else None
        tag_ids = [self._tag_ids(ex, labels) for ex in examples]
        full = tokenizer([list(ex.tokens) for ex in examples], is_split_into_words=True)
        short, pieces = plan_windows(examples, full, tokenizer, window_budget(tokenizer, options.max_length))
        per_example: list[list[dict[str, Any]]] = [[] for _ in examples]
        for i in short:
            per_example[i].append(self._feature(full, i, i, 0, tag_ids[i], options))
        if pieces:
            enc = tokenizer([p[2] for p in pieces], is_split_into_words=True, truncation=True,
                            max_length=options.max_length)
            for j, (i, first, _) in enumerate(pieces):
                per_example[i].append(self._feature(enc, j, i, first, tag_ids[i], options))
            logger.info(
                "tagging: %d of %d sentences are longer than max_length=%d and were split at word boundaries "
                "into %d windows (every word scored)",
                len(examples) - len(short), len(examples), options.max_length, len(pieces),
            )
        return [feat for feats in per_example for feat in feats]

    def _check_inputs(self, examples: Sequence[TaggingExample], tokenizer: Any) -> None:
        """A fast tokenizer (word ids) and as many tags as words."""
        if not getattr(tokenizer, "is_fast", False):
            raise XStiltsError("tagging needs a fast tokenizer (word ids)")
        for ex in examples:
            if ex.tags is not None and len(ex.tags) != len(ex.tokens):
                raise XStiltsError(
                    f"tagging: example '{ex.id}' has {len(ex.tokens)} words but {len(ex.tags)} tags"
                )

    def _tag_ids(self, example: TaggingExample, labels: Sequence[str] | None) -> list[int] | None:
        """The example's tags as label ids; None when the batch has no tags at all (no ``labels``
        key), all -100 for an untagged example of a tagged batch."""
        if labels is None:
            return None
        if example.tags is None:
            return [IGNORE_INDEX] * len(example.tokens)
        return [label_index(labels, t, example.id, self.name) for t in example.tags]

    def _feature(self, enc: Any, row: int, example_index: int, first_word: int, tag_ids: list[int] | None,
                 options: FeaturizeOptions) -> dict[str, Any]:
        """Row ``row`` of a batch encoding as a feature; its word ids shifted to sentence positions.

        ``labels`` (when ``tag_ids`` is not None): each word's tag id on its first sub-token,
        -100 elsewhere.
        """
        word_ids = [NO_WORD if w is None else int(w) + first_word for w in enc.word_ids(row)]
        feat: dict[str, Any] = {k: enc[k][row] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        feat["example_index"] = example_index
        feat["word_ids"] = word_ids
        if tag_ids is not None:
            feat["labels"] = token_labels(word_ids, tag_ids, options.label_all_subtokens)
        return feat

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
        """One tag per word: the argmax of ``logits`` [F, L, K] at the word's first sub-token,
        gathered over all the windows (features) of its sentence."""
        labels = require_label_list(label_list, self.name)
        logits = outputs["logits"]
        if len(logits) != len(features):
            raise XStiltsError(f"tagging: {len(logits)} logit rows for {len(features)} features")
        n_classes = np.asarray(logits[0]).shape[-1] if len(logits) else len(labels)
        if n_classes != len(labels):
            raise XStiltsError(f"tagging: logits have {n_classes} classes but the label set has {len(labels)}")
        all_word_ids = column(features, "word_ids")
        predictions: dict[str, list[str]] = {}
        unscored = 0
        for ex_idx, feat_ids in enumerate(group_features(features, len(examples))):
            if not feat_ids:
                continue
            example = examples[ex_idx]
            tags: list[str | None] = [None] * len(example.tokens)
            for f in feat_ids:
                for w, pos in first_subtoken_positions(all_word_ids[f]).items():
                    if w < len(tags):
                        tags[w] = labels[int(np.argmax(logits[f][pos]))]
            unscored += tags.count(None)
            predictions[example.id] = [fallback_tag(labels) if t is None else t for t in tags]
        if unscored:
            logger.warning("tagging: %d words had no token in any window and were tagged %r",
                           unscored, fallback_tag(labels))
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
