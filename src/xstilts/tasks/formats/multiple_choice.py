"""Multiple choice (HellaSwag, CosmosQA, CommonsenseQA, COPA/XCOPA, SIQA).

Each choice is encoded as a pair, as HF's ``run_swag`` does: the first segment is the
context, the second ``question + " " + choice``. When an example has no context
(CommonsenseQA) the pair is ``(question, choice)``. Pairs are truncated longest-first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from xstilts.errors import XStiltsError
from xstilts.tasks.formats._common import (
    IGNORE_INDEX,
    PAD_VALUES,
    check_coverage,
    check_metric,
    group_features,
    pad_2d,
)
from xstilts.tasks.formats._records import HubRows, JsonRecord
from xstilts.tasks.formats.base import FeaturizeOptions, Format, join_text
from xstilts.tasks.types import MultipleChoiceExample

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def choice_pair(example: MultipleChoiceExample, choice: str) -> tuple[str, str]:
    """The (first, second) segments for one choice of an example."""
    context = (example.context or "").strip()
    question = (example.question or "").strip()
    if not context:
        return question, choice
    return context, f"{question} {choice}".strip()


def _choice_index(label: Any) -> int | None:
    """A gold choice index from an int or a digit string; None for anything else or a negative."""
    if isinstance(label, str):
        label = int(label) if label.strip().isdigit() else None
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        return None
    return label


class MultipleChoiceFormat(Format):
    """Features hold ``[C][L]`` lists; ``labels`` is the index of the right choice."""

    name: ClassVar[str] = "multiple_choice"
    head_kind: ClassVar[str | None] = "multiple_choice"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    json_fields: ClassVar[dict[str, str]] = {"id": "id", "context": "context", "question": "question",
                                             "choices": "choices", "label": "label"}

    def example_from_json(self, record: JsonRecord, label_list: Sequence[str] | None = None) -> MultipleChoiceExample:
        """Optional ``context``, ``question``, ``choices`` (>= 2 strings), optional ``label`` (choice index)."""
        question = record.require("question", str)
        choices = record.require("choices", list)
        if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise record.error("'choices' should be a list of >= 2 strings")
        raw = record.opt("label")
        label = _choice_index(raw)
        if raw is not None and (label is None or label >= len(choices)):
            raise record.error(f"unknown label {raw!r}; expected an index 0..{len(choices) - 1}")
        return MultipleChoiceExample(id=record.id, context=record.opt("context") or "", question=question,
                                     choices=choices, label=label)

    def examples_from_hub(self, rows: HubRows, label_list: Sequence[str] | None = None,
                          language: str | None = None) -> list[MultipleChoiceExample]:
        """Choices from one list column or several columns; the label is an index, a digit string,
        or a letter key (``choice_labels``, CommonsenseQA's answerKey). ``question_map`` (hub
        option) renders COPA's "cause"/"effect" as questions."""
        qmap = rows.option("question_map")
        out: list[MultipleChoiceExample] = []
        for i, row in rows:
            choices = list(rows.get(row, "choices"))
            label = rows.get(row, "label")
            if rows.has("choice_labels"):
                keys = rows.get(row, "choice_labels")
                label = keys.index(label) if label in keys else None
            question = (rows.get(row, "question") if rows.has("question") else "") or ""
            if qmap:
                question = qmap.get(question, question)
            context = (rows.get(row, "context") if rows.has("context") else "") or ""
            out.append(MultipleChoiceExample(id=rows.id(row, i), context=context, question=question, choices=choices,
                                             label=_choice_index(label)))
        return out

    def prediction_from_json(self, value: Any) -> int:
        """A choice index."""
        return int(value)

    def input_json(self, example: MultipleChoiceExample) -> dict[str, Any]:
        """The context, the question and the choices."""
        return {"context": example.context, "question": example.question, "choices": list(example.choices)}

    def input_text(self, example: MultipleChoiceExample) -> str:
        """The context, the question and every choice."""
        return join_text([example.context, example.question, *example.choices])

    def featurize(
        self,
        examples: Sequence[MultipleChoiceExample],
        tokenizer: Any,
        options: FeaturizeOptions,
        label_list: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Encode every (example, choice) pair in one tokenizer call, then regroup per example."""
        if not examples:
            return []
        firsts: list[str] = []
        seconds: list[str] = []
        for ex in examples:
            if not ex.choices:
                raise XStiltsError(f"multiple_choice: example '{ex.id}' has no choices")
            if ex.label is not None and not 0 <= ex.label < len(ex.choices):
                raise XStiltsError(
                    f"multiple_choice: example '{ex.id}' has label {ex.label} but only {len(ex.choices)} choices"
                )
            for choice in ex.choices:
                a, b = choice_pair(ex, choice)
                firsts.append(a)
                seconds.append(b)
        enc = tokenizer(firsts, seconds, truncation="longest_first", max_length=options.max_length)
        labelled = any(ex.label is not None for ex in examples)
        features: list[dict[str, Any]] = []
        pos = 0
        for i, ex in enumerate(examples):
            n = len(ex.choices)
            feat: dict[str, Any] = {k: enc[k][pos : pos + n] for k in INPUT_KEYS if k in enc}
            pos += n
            feat["example_index"] = i
            if labelled:
                feat["labels"] = int(ex.label) if ex.label is not None else IGNORE_INDEX
            features.append(feat)
        return features

    def collate(self, features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """Pad to ``[B, C, L_max]`` (all examples of a batch must have the same number of choices)."""
        import torch

        if not features:
            raise XStiltsError("collate: empty batch")
        n_choices = {len(f["input_ids"]) for f in features}
        if len(n_choices) != 1:
            raise XStiltsError(
                f"multiple_choice: a batch mixes examples with {sorted(n_choices)} choices; "
                "batch examples with the same number of choices together"
            )
        width = max(len(row) for f in features for row in f["input_ids"])
        batch: dict[str, Any] = {}
        for key in INPUT_KEYS:
            if key not in features[0]:
                continue
            pad = pad_token_id if key == "input_ids" else int(PAD_VALUES[key] or 0)
            batch[key] = torch.tensor([pad_2d(f[key], pad, width) for f in features], dtype=torch.long)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return batch

    def decode(
        self,
        examples: Sequence[MultipleChoiceExample],
        features: Sequence[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        label_list: Sequence[str] | None = None,
        **options: Any,
    ) -> dict[str, int]:
        """Argmax over the choices of ``logits`` [F, C] -> the choice index."""
        logits = np.asarray(outputs["logits"])
        if logits.ndim != 2 or logits.shape[0] != len(features):
            raise XStiltsError(f"multiple_choice: logits of shape {logits.shape} do not match {len(features)} features")
        predictions: dict[str, int] = {}
        for ex_idx, feats in enumerate(group_features(features, len(examples))):
            if feats:
                n = len(examples[ex_idx].choices)
                predictions[examples[ex_idx].id] = int(np.argmax(logits[feats[0]][:n]))
        return predictions

    def score(
        self,
        examples: Sequence[MultipleChoiceExample],
        predictions: dict[str, Any],
        metric: str,
        language: str | None = None,
    ) -> dict[str, float]:
        """Accuracy (percent) of the predicted choice indices."""
        check_metric(self.name, metric, self.metrics)
        check_coverage(examples, predictions, self.name)
        self.require_labelled(examples)
        from xstilts.metrics import accuracy

        return {"accuracy": accuracy([int(predictions[ex.id]) for ex in examples], [int(ex.label) for ex in examples])}
