"""Classification of one text or a text pair (NLI, paraphrase): one label per example."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from xstilts.errors import XStiltsError
from xstilts.tasks.formats._common import (
    IGNORE_INDEX,
    check_coverage,
    check_metric,
    collate_flat,
    group_features,
    label_index,
    require_label_list,
)
from xstilts.tasks.formats._records import HubRows, JsonRecord
from xstilts.tasks.formats.base import FeaturizeOptions, Format, join_text
from xstilts.tasks.types import ClassificationExample

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class ClassificationFormat(Format):
    """``text_a`` (+ ``text_b``) -> ``labels`` = index of the label in ``label_list``."""

    name: ClassVar[str] = "classification"
    head_kind: ClassVar[str | None] = "classification"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    json_fields: ClassVar[dict[str, str]] = {"id": "id", "text_a": "text_a", "text_b": "text_b", "label": "label"}

    def example_from_json(self, record: JsonRecord, label_list: Sequence[str] | None = None) -> ClassificationExample:
        """``text_a``, optional ``text_b``, optional ``label`` (string or int, checked against label_list)."""
        label = record.opt("label")
        return ClassificationExample(id=record.id, text_a=record.require("text_a", str), text_b=record.opt("text_b"),
                                     label=None if label is None else record.label(label, label_list))

    def examples_from_hub(self, rows: HubRows, label_list: Sequence[str] | None = None,
                          language: str | None = None) -> list[ClassificationExample]:
        """Rows with a gold label (-1 / None, as in SNLI and GLUE test splits, are dropped);
        ``ClassLabel`` ints become their names."""
        names = rows.label_names("label")
        out: list[ClassificationExample] = []
        for i, row in rows:
            label = rows.get(row, "label")
            if label is None or label == -1:
                continue
            label = names[label] if names and isinstance(label, int) else str(label)
            if label_list and label not in label_list:
                raise rows.error(f"label {label!r} not in {list(label_list)}", record=str(i))
            out.append(ClassificationExample(id=rows.id(row, i), text_a=rows.get(row, "text_a"),
                                             text_b=rows.get(row, "text_b"), label=label))
        return out

    def input_json(self, example: ClassificationExample) -> dict[str, Any]:
        """``text_a`` and, for a pair, ``text_b``."""
        return {"text_a": example.text_a, **({"text_b": example.text_b} if example.text_b is not None else {})}

    def input_text(self, example: ClassificationExample) -> str:
        """The text and, for a pair, the second text (the label is not input)."""
        return join_text([example.text_a, example.text_b])

    def featurize(
        self,
        examples: Sequence[ClassificationExample],
        tokenizer: Any,
        options: FeaturizeOptions,
        label_list: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Tokenise (pairs truncated longest-first to ``max_length``); ``labels`` when any example has one."""
        if not examples:
            return []
        has_pair = [ex.text_b is not None for ex in examples]
        if any(has_pair) and not all(has_pair):
            raise XStiltsError("classification: examples mix single texts and text pairs; use one kind per task")
        text_a = [ex.text_a for ex in examples]
        text_b = [ex.text_b for ex in examples] if has_pair[0] else None
        enc = tokenizer(text_a, text_b, truncation=True, max_length=options.max_length)
        labelled = any(ex.label is not None for ex in examples)
        if labelled:
            label_list = require_label_list(label_list, self.name)
        features = []
        for i, ex in enumerate(examples):
            feat: dict[str, Any] = {k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            feat["example_index"] = i
            if labelled:
                feat["labels"] = (
                    label_index(label_list, ex.label, ex.id, self.name) if ex.label is not None else IGNORE_INDEX
                )
            features.append(feat)
        return features

    def collate(self, features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """``[B, L_max]`` inputs, ``labels`` ``[B]``."""
        return collate_flat(features, pad_token_id, MODEL_KEYS)

    def decode(
        self,
        examples: Sequence[ClassificationExample],
        features: Sequence[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        label_list: Sequence[str] | None = None,
        **options: Any,
    ) -> dict[str, str]:
        """Argmax of ``logits`` [F, K] -> the label string."""
        labels = require_label_list(label_list, self.name)
        logits = np.asarray(outputs["logits"])
        if logits.shape[0] != len(features) or logits.shape[-1] != len(labels):
            raise XStiltsError(
                f"classification: logits of shape {logits.shape} do not match {len(features)} features "
                f"x {len(labels)} labels"
            )
        predictions: dict[str, str] = {}
        for ex_idx, feats in enumerate(group_features(features, len(examples))):
            if feats:
                predictions[examples[ex_idx].id] = labels[int(np.argmax(logits[feats[0]]))]
        return predictions

    def score(
        self,
        examples: Sequence[ClassificationExample],
        predictions: dict[str, Any],
        metric: str,
        language: str | None = None,
    ) -> dict[str, float]:
        """Accuracy (percent) of predicted label strings against the gold labels."""
        check_metric(self.name, metric, self.metrics)
        check_coverage(examples, predictions, self.name)
        self.require_labelled(examples)
        from xstilts.metrics import accuracy

        return {"accuracy": accuracy([predictions[ex.id] for ex in examples], [ex.label for ex in examples])}
