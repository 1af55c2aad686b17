"""Training data of a stage: examples per task (catalog languages + extra files), features, lengths."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xstilts.errors import ConfigError, DataError, DataNotFoundError
from xstilts.train.config import TaskMixture, TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class TaskData:
    """One task of a stage, ready to featurise: what train needs of a catalog task, plus its examples.

    Built from the catalog by :func:`load_task_data`; tests and library users may build one
    directly (e.g. a synthetic task) and pass it to ``train_stage(..., task_data=...)``.
    """

    name: str
    format: str
    train: list[Any]
    dev: list[Any] | None = None
    label_list: list[str] | None = None
    metric: str = "accuracy"
    primary_metric: str = "accuracy"
    spec: Any = None  # the catalog TaskSpec, when there is one (enables the tokenised-feature cache)
    extra: list[Any] = field(default_factory=list)


def _read_extra_file(spec: Any, path: Path, language: str, key: str) -> list[Any]:
    """Read a file in the task's local format with the catalog reader of that task."""
    from xstilts.tasks.readers import read_file

    local = getattr(spec, "local", None)
    if local is None:
        raise ConfigError(f"task '{spec.name}' has no local file reader, so extra_files cannot be read", key=key)
    return list(read_file(local.reader, path, label_list=spec.label_list, language=language, **dict(local.options)))


def mix_extra(base: Sequence[Any], extra: Sequence[Any], ratio: float, seed: int) -> list[Any]:
    """``base`` plus ``round(ratio * len(base))`` items of ``extra`` (seeded subsample, cycled if too few)."""
    want = int(round(ratio * len(base)))
    if want <= 0 or not extra:
        return list(base)
    rng = np.random.default_rng([seed, 7, len(base), len(extra)])
    if want <= len(extra):
        pick = np.sort(rng.choice(len(extra), want, replace=False))
    else:
        logger.warning("extra data has %d examples, fewer than the %d asked by extra_ratio=%s: cycling it",
                       len(extra), want, ratio)
        pick = np.concatenate([np.arange(len(extra))] * (want // len(extra)) +
                              [np.sort(rng.choice(len(extra), want % len(extra), replace=False))])
    return list(base) + [extra[i] for i in pick]


def load_task_data(mix: TaskMixture, config: TrainConfig, index: int) -> TaskData:
    """Resolve a :class:`TaskMixture` through the catalog: train examples (all languages + extra), English dev."""
    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.formats import get_format
    from xstilts.tasks.loading import load_examples

    spec = get_task(mix.task)  # UnknownNameError lists the valid names
    fmt = get_format(spec.format)
    key = f"tasks.{index}"
    if fmt.head_kind is None:
        raise ConfigError(f"task '{spec.name}' has format '{spec.format}', which has no head and cannot be trained",
                          key=f"{key}.task")
    if mix.head is not None and mix.head != fmt.head_kind:
        raise ConfigError(f"head '{mix.head}' does not fit task '{spec.name}' (format '{spec.format}' needs a "
                          f"'{fmt.head_kind}' head)", key=f"{key}.head")
    train: list[Any] = []
    for lang in mix.languages:
        train.extend(load_examples(spec, lang, mix.split, data_dir=config.data_dir,
                                   max_examples=mix.max_examples, seed=config.seed))
    extra: list[Any] = []
    for ef in mix.extra_files:
        if not Path(ef.path).expanduser().is_file():
            raise ConfigError(f"extra training file not found: {ef.path}", key=f"{key}.extra_files")
        extra.extend(_read_extra_file(spec, Path(ef.path).expanduser(), ef.language, f"{key}.extra_files"))
    if mix.extra_files:
        train = mix_extra(train, extra, mix.extra_ratio, config.seed)
    dev_split = mix.dev_split or ("dev" if "dev" in spec.splits else spec.eval_split)
    dev = None
    try:
        dev = load_examples(spec, "en", dev_split, data_dir=config.data_dir,
                            max_examples=config.eval_max_examples, seed=config.seed)
    except DataNotFoundError as exc:
        logger.warning("task %s: no English %s split (%s); training without dev evaluation", spec.name, dev_split, exc)
    return TaskData(name=spec.name, format=spec.format, train=train, dev=dev, label_list=spec.label_list,
                    metric=spec.metric, primary_metric=spec.primary_metric, spec=spec)


def featurize_task(td: TaskData, examples: Sequence[Any], tokenizer: Any, options: Any) -> Any:
    """Features of ``examples`` (cached Arrow dataset when the task has a catalog spec, else a list)."""
    from xstilts.tasks.formats import get_format

    if td.spec is not None:
        try:
            from xstilts.tasks.cache import featurize_cached
        except ImportError:  # pragma: no cover
            featurize_cached = None
        if featurize_cached is not None:
            return featurize_cached(td.spec, list(examples), tokenizer, options)
    return get_format(td.format).featurize(examples, tokenizer, options, label_list=td.label_list)


def feature_lengths(features: Any) -> list[int]:
    """Token length of each feature (the longest choice for multiple choice)."""
    col = features["input_ids"] if not isinstance(features, list) else [f["input_ids"] for f in features]
    out = []
    for ids in col:
        if len(ids) and isinstance(ids[0], (list, tuple)):
            out.append(max(len(c) for c in ids))
        else:
            out.append(len(ids))
    return out


def has_labels(features: Any) -> bool:
    """Whether training features carry gold labels."""
    if len(features) == 0:
        return False
    first = features[0]
    if "labels" in first and first["labels"] is not None:
        return True
    return first.get("start_positions") is not None


def rows(features: Any, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Feature dicts at ``indices`` (works for lists and ``datasets.Dataset``)."""
    if isinstance(features, list):
        return [features[i] for i in indices]
    cols = features[list(indices)]
    keys = list(cols)
    return [dict(zip(keys, vals)) for vals in zip(*(cols[k] for k in keys))]


def check_nonempty(td: TaskData) -> None:
    if not td.train:
        raise DataError(td.name, "no training examples")
