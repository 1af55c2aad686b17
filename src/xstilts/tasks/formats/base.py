"""The format contract: everything that depends on the kind of data, in one class.

A *format* is code; a *task* is data (a catalog entry naming its format). A format owns its
whole lifecycle: reading examples from JSON lines and hub rows, whether an example is
labelled, featurize / collate / decode / score, predictions to and from JSON, and the kind
of head a model needs for it (``head_kind``, a key of the head registry in
:mod:`xstilts.models.heads`). Every format implements :class:`Format` and is registered
with :func:`xstilts.tasks.formats.register_format`; train and evaluate only talk to this
interface, so adding a format is one module here plus one head class.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xstilts.errors import XStiltsError
from xstilts.tasks.formats._records import HubRows, JsonRecord


def join_text(parts: Sequence[str | None]) -> str:
    """The non-empty ``parts`` joined by spaces (one example's input text)."""
    return " ".join(p for p in parts if p)


def _text_fields(example: Any) -> dict[str, Any]:
    """The string and (non-empty) list-of-string fields of a dataclass example, ``id`` excepted."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(example):
        value = getattr(example, f.name)
        if f.name == "id":
            continue
        if isinstance(value, str):
            out[f.name] = value
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            out[f.name] = list(value)
    return out


@dataclass(frozen=True)
class FeaturizeOptions:
    """Everything featurisation depends on (part of the tokenised-cache key)."""

    max_length: int = 128
    doc_stride: int = 128  # QA: step (in context tokens) between the starts of consecutive windows (XTREME's)
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
    QA features also hold ``max_context`` (1 on the context tokens whose maximum context is
    that window). Tagging features also hold ``word_ids`` (the word's index in the sentence,
    -1 where no word); a long sentence gives several features (windows).
    """

    name: ClassVar[str]
    #: the head kind a model needs for this format (a key of the head registry in
    #: ``xstilts.models.heads``); None for formats scored by sentence embeddings (retrieval:
    #: no head, no training)
    head_kind: ClassVar[str | None]
    #: metric names :meth:`score` accepts
    metrics: ClassVar[tuple[str, ...]] = ()
    #: the default JSON key of each example field, for the generic ``jsonl_<format>`` reader
    json_fields: ClassVar[dict[str, str]] = {}
    #: featurisation version, part of the feature-cache key: bump when features change
    version: ClassVar[int] = 1
    #: zero-shot evaluation's default ``max_length`` (None: ``FeaturizeOptions().max_length``)
    eval_max_length: ClassVar[int | None] = None

    @property
    def trainable(self) -> bool:
        """Whether models are trained on this format (it has a head)."""
        return self.head_kind is not None

    # ------------------------------------------------------------------ reading
    @abstractmethod
    def example_from_json(self, record: JsonRecord, label_list: Sequence[str] | None = None) -> Any:
        """One example from one JSON object (fields named by :attr:`json_fields`, remappable).

        Raises :class:`~xstilts.errors.DataError` (``record.error(...)``) naming the file and
        line when a field is missing or invalid.
        """

    def examples_from_hub(self, rows: HubRows, label_list: Sequence[str] | None = None,
                          language: str | None = None) -> list[Any]:
        """Examples from the rows of a hub dataset (``HubSource.fields`` maps fields to columns).

        The default reads each row as a JSON record through the field mapping; formats with
        ``ClassLabel`` columns or unlabelled rows to skip override it.
        """
        keys = {**self.json_fields, **{k: v for k, v in rows.fields.items() if isinstance(v, str)}}
        return [self.example_from_json(JsonRecord(f"hub:{rows.source}", row, keys, None, index=i), label_list)
                for i, row in rows]

    def is_labelled(self, example: Any) -> bool:
        """Whether ``example`` carries a gold label (a split without labels cannot be scored)."""
        return getattr(example, "label", None) is not None

    def require_labelled(self, examples: Sequence[Any]) -> None:
        """XStiltsError naming how many of ``examples`` carry no gold label (:meth:`is_labelled`)."""
        unlabelled = [ex.id for ex in examples if not self.is_labelled(ex)]
        if unlabelled:
            raise XStiltsError(f"{self.name}: {len(unlabelled)} examples have no gold label (e.g. '{unlabelled[0]}')")

    def input_text(self, example: Any) -> str:
        """The input text of ``example`` as one string (what a text-similarity measure reads).

        The default joins the example's string and list-of-string fields in field order,
        ``id`` excepted; formats whose examples hold gold labels as strings override it.
        Raises TypeError for an example that is not a dataclass.
        """
        if not dataclasses.is_dataclass(example):
            raise TypeError(f"cannot take text from {type(example).__name__}")
        return join_text([" ".join(v) if isinstance(v, list) else v for v in _text_fields(example).values()])

    def input_json(self, example: Any) -> dict[str, Any]:
        """The input fields of ``example`` (what the model read) as a JSON object, for readable
        prediction rows. The default: its string and list-of-string fields, ``id`` excepted."""
        return _text_fields(example) if dataclasses.is_dataclass(example) else {}

    def gold_json(self, example: Any) -> Any:
        """The gold label / answer of ``example`` as a JSON value in the shape of its prediction
        (None where the split has no gold labels). The default: its ``label`` field."""
        return getattr(example, "label", None)

    # ------------------------------------------------------------------ predictions as JSON
    def prediction_to_json(self, prediction: Any) -> Any:
        """A prediction as a JSON value (what ``predictions/<lang>.jsonl`` holds)."""
        if isinstance(prediction, np.generic):
            return prediction.item()
        if isinstance(prediction, (list, tuple)):
            return [self.prediction_to_json(p) for p in prediction]
        return prediction

    def prediction_from_json(self, value: Any) -> Any:
        """Inverse of :meth:`prediction_to_json` (what :meth:`score` takes)."""
        return value

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
        ``offset_mapping``, ``max_context``, ``word_ids``) are dropped from the batch.
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
