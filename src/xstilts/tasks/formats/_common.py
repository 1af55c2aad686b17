"""Helpers shared by the formats: padding, label lookup, coverage checks, metric dispatch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from xstilts.errors import UnknownNameError, XStiltsError

#: label value ignored by the losses (torch's CrossEntropyLoss default ``ignore_index``)
IGNORE_INDEX = -100

#: padding value per key; keys not listed here are metadata and never reach the model
PAD_VALUES: dict[str, int | None] = {
    "input_ids": None,  # the tokenizer's pad id, given to collate
    "attention_mask": 0,
    "token_type_ids": 0,
    "labels": IGNORE_INDEX,
}


def label_index(label_list: Sequence[str] | None, label: str, example_id: str, format_name: str) -> int:
    """Index of ``label`` in the task's label set; a clear error when it is not there."""
    if label_list is None:
        raise XStiltsError(f"{format_name}: example '{example_id}' has a label but the task defines no label_list")
    try:
        return list(label_list).index(label)
    except ValueError:
        raise XStiltsError(
            f"{format_name}: example '{example_id}' has label '{label}', which is not in the task's "
            f"label set {list(label_list)}"
        ) from None


def require_label_list(label_list: Sequence[str] | None, format_name: str) -> list[str]:
    if not label_list:
        raise XStiltsError(f"{format_name}: the task needs a non-empty label_list")
    return list(label_list)


def pad_2d(rows: Sequence[Sequence[int]], value: int, length: int | None = None) -> list[list[int]]:
    """Right-pad every row to ``length`` (default: the longest row)."""
    width = max((len(r) for r in rows), default=0) if length is None else length
    return [list(r) + [value] * (width - len(r)) for r in rows]


def collate_flat(features: Sequence[Mapping[str, Any]], pad_token_id: int, keys: Iterable[str]) -> dict[str, Any]:
    """Collate features whose inputs are ``[L]`` lists into ``[B, L_max]`` tensors.

    ``keys`` are the scalar or sequence keys to keep (model inputs + labels); metadata is dropped.
    """
    import torch

    if not features:
        raise XStiltsError("collate: empty batch")
    batch: dict[str, Any] = {}
    width = max(len(f["input_ids"]) for f in features)
    for key in keys:
        if key not in features[0]:
            continue
        values = [f[key] for f in features]
        if isinstance(values[0], (list, tuple)):
            pad = pad_token_id if key == "input_ids" else PAD_VALUES.get(key, 0)
            batch[key] = torch.tensor(pad_2d(values, pad, width), dtype=torch.long)
        else:
            batch[key] = torch.tensor(values, dtype=torch.long)
    return batch


def check_metric(format_name: str, metric: str, supported: Sequence[str]) -> None:
    if metric not in supported:
        raise UnknownNameError(f"metric for format '{format_name}'", metric, list(supported))


def check_coverage(examples: Sequence[Any], predictions: Mapping[str, Any], what: str) -> None:
    """Raise naming the example ids that have no prediction."""
    missing = [ex.id for ex in examples if ex.id not in predictions]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise XStiltsError(
            f"{what}: predictions are missing for {len(missing)} of {len(examples)} examples: {shown}{more}"
        )


def column(features: Any, key: str) -> list[Any]:
    """One key of every feature, from a list of dicts or (fast, columnar) a ``datasets.Dataset``."""
    if hasattr(features, "column_names"):
        if key not in features.column_names:
            raise XStiltsError(f"features have no '{key}' column (columns: {features.column_names})")
        return list(features[key])
    return [f[key] for f in features]


def group_features(features: Sequence[Mapping[str, Any]], n_examples: int) -> list[list[int]]:
    """Feature indices per example index (an example may have several windows / none)."""
    groups: list[list[int]] = [[] for _ in range(n_examples)]
    for i, idx in enumerate(column(features, "example_index")):
        idx = int(idx)
        if not 0 <= idx < n_examples:
            raise XStiltsError(
                f"feature {i} points to example_index {idx}, but only {n_examples} examples were given: "
                "decode with the same examples the features were made from"
            )
        groups[idx].append(i)
    return groups
