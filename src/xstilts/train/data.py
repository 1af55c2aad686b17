"""Training data of a stage: examples per task (catalog languages + extra files), features, lengths."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xstilts.errors import ConfigError, DataError, DataNotFoundError
from xstilts.train.config import TaskMixture, TrainConfig, dev_split_of, trains_on_dev_split
from xstilts.train.sampling import MLM_TASK, BatchStream, TaskSampler, task_probabilities

if TYPE_CHECKING:  # pragma: no cover
    from xstilts.tasks.catalog import TaskSpec

logger = logging.getLogger(__name__)

#: file in a stage's output dir listing, per task, the examples held out of its training split for
#: dev evaluation (a task that trains on its own dev split: see :func:`hold_out_dev`)
HELDOUT_FILE = "heldout.json"


@dataclass
class TaskData:
    """One task of a stage, ready to featurise: its catalog :class:`TaskSpec` plus its examples.

    Built from the catalog by :func:`load_task_data`; tests and library users may build one
    directly (e.g. a synthetic task with its own ``TaskSpec``) and pass it to
    ``train_stage(..., task_data=...)``. Name, format, labels and metrics are the spec's.
    """

    spec: TaskSpec
    train: list[Any]
    dev: list[Any] | None = None
    extra: list[Any] = field(default_factory=list)
    #: ids of the examples held out of the training split for dev evaluation (None: nothing held
    #: out, the task trains on another split than it is dev-evaluated on)
    heldout_ids: list[str] | None = None
    #: featurise through the shared tokenised-feature cache (catalog data); False: in memory
    cache_features: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def format(self) -> str:
        return self.spec.format

    @property
    def label_list(self) -> list[str] | None:
        return self.spec.label_list

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def primary_metric(self) -> str:
        return self.spec.primary_metric


def _read_extra_file(spec: TaskSpec, path: Path, language: str, key: str) -> list[Any]:
    """Read a file in the task's local format with the catalog reader of that task."""
    from xstilts.tasks.readers import read_file

    local = spec.local
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


def check_trainable(name: str, format_name: str, head: str | None, index: int) -> str:
    """The head kind task ``name`` trains; ConfigError (naming ``tasks.<index>``) when its format
    has no head or the config asks for a head that does not fit."""
    from xstilts.tasks.formats import get_format

    kind = get_format(format_name).head_kind
    if kind is None:
        raise ConfigError(f"task '{name}' has format '{format_name}' (no head): it cannot be trained",
                          key=f"tasks.{index}.task")
    if head is not None and head != kind:
        raise ConfigError(f"head '{head}' does not fit task '{name}' (format '{format_name}' needs '{kind}')",
                          key=f"tasks.{index}.head")
    return kind


def resolve_tasks(config: TrainConfig, task_data: dict[str, TaskData] | None = None) -> list[TaskData]:
    """The tasks of a stage, validated before any model is loaded.

    A task named in ``task_data`` is taken from there, any other is resolved through the
    catalog (:func:`load_task_data`). Raises ConfigError / UnknownNameError / DataError.
    """
    tasks = []
    for i, mix in enumerate(config.tasks):
        td = task_data[mix.task] if task_data is not None and mix.task in task_data else load_task_data(mix, config, i)
        check_trainable(td.name, td.format, mix.head, i)
        check_nonempty(td)
        tasks.append(td)
    return tasks


def load_task_data(mix: TaskMixture, config: TrainConfig, index: int) -> TaskData:
    """Resolve a :class:`TaskMixture` through the catalog: train examples (all languages + extra), English dev."""
    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.loading import load_examples, subsample

    spec = get_task(mix.task)  # UnknownNameError lists the valid names
    key = f"tasks.{index}"
    check_trainable(spec.name, spec.format, mix.head, index)
    train: list[Any] = []
    heldout: list[Any] | None = None
    for lang in mix.languages:
        if lang == "en" and trains_on_dev_split(mix):
            pool, heldout = hold_out_dev(load_examples(spec, lang, mix.split, data_dir=config.data_dir),
                                         config.dev_holdout_size(mix), config.seed, f"{spec.name}/{mix.split}")
            train.extend(subsample(pool, mix.cap(lang), config.seed))
            continue
        train.extend(load_examples(spec, lang, mix.split, data_dir=config.data_dir,
                                   max_examples=mix.cap(lang), seed=config.seed))
    extra: list[Any] = []
    for ef in mix.extra_files:
        if not Path(ef.path).expanduser().is_file():
            raise ConfigError(f"extra training file not found: {ef.path}", key=f"{key}.extra_files")
        extra.extend(_read_extra_file(spec, Path(ef.path).expanduser(), ef.language, f"{key}.extra_files"))
    if mix.extra_files:
        train = mix_extra(train, extra, mix.extra_ratio, config.seed)
    dev_split = dev_split_of(mix)
    dev = None if heldout is None else subsample(heldout, config.eval_max_examples, config.seed)
    try:
        if heldout is None:
            dev = load_examples(spec, "en", dev_split, data_dir=config.data_dir,
                                max_examples=config.eval_max_examples, seed=config.seed)
    except DataNotFoundError as exc:
        logger.warning("task %s: no English %s split (%s); training without dev evaluation", spec.name, dev_split, exc)
    return TaskData(spec=spec, train=train, dev=dev, cache_features=True,
                    heldout_ids=None if heldout is None else [str(ex.id) for ex in heldout])


def heldout_record(tasks: Sequence[TaskData]) -> dict[str, dict[str, Any]]:
    """``{task: {"n": ..., "ids": [...]}}`` of the tasks that held dev examples out of training."""
    return {td.name: {"n": len(td.heldout_ids), "ids": list(td.heldout_ids)}
            for td in tasks if td.heldout_ids is not None}


def hold_out_dev(examples: Sequence[Any], size: int, seed: int, what: str) -> tuple[list[Any], list[Any]]:
    """Split ``examples`` (a task's whole English training split, which is also its dev split) into
    (training pool, held-out dev examples): ``min(size, len // 2)`` examples drawn with ``seed``,
    both parts in their original order. Drawn before any training subsample, so the held-out
    examples are the same whatever ``max_examples`` is and never reach training."""
    n = min(size, len(examples) // 2)
    rng = np.random.default_rng([seed, 0x4E1D])
    held = set(rng.choice(len(examples), n, replace=False).tolist()) if n else set()
    pool = [ex for i, ex in enumerate(examples) if i not in held]
    heldout = [ex for i, ex in enumerate(examples) if i in held]
    logger.info("%s is also the dev split: %d of its %d examples held out for dev evaluation (seed %d), "
                "%d left for training", what, n, len(examples), seed, len(pool))
    return pool, heldout


def featurize_task(td: TaskData, examples: Sequence[Any], tokenizer: Any, options: Any) -> Any:
    """Features of ``examples`` (cached Arrow dataset for catalog data, else a list)."""
    from xstilts.tasks.formats import get_format

    if td.cache_features:
        from xstilts.tasks.cache import featurize_cached

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
    """DataError when a task has no training examples."""
    if not td.train:
        raise DataError(td.name, "no training examples")


@dataclass
class StageData:
    """Everything a stage trains and evaluates on, featurised, with its data order and length.

    ``train`` / ``dev``: features per task; ``mlm``: MLM features (None without an MLM
    auxiliary); ``streams``: one resumable batch stream per task (and ``MLM_TASK``);
    ``sampler``: the task of every micro-batch; ``total_steps``: optimizer steps of the stage.
    """

    tasks: list[TaskData]
    formats: dict[str, Any]
    train: dict[str, Any]
    dev: dict[str, list[dict[str, Any]]]
    mlm: list[dict[str, Any]] | None
    streams: dict[str, BatchStream]
    sampler: TaskSampler
    steps_per_epoch: int
    total_steps: int

    @property
    def by_name(self) -> dict[str, TaskData]:
        return {td.name: td for td in self.tasks}

    def sizes(self) -> dict[str, int]:
        """Training features per task."""
        return {name: len(feats) for name, feats in self.train.items()}


def _featurize_tasks(tasks: Sequence[TaskData], tokenizer: Any, config: TrainConfig
                     ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    from xstilts.tasks.formats.base import FeaturizeOptions

    options = FeaturizeOptions(max_length=config.max_length, doc_stride=config.doc_stride,
                               max_query_length=config.max_query_length)
    train, dev = {}, {}
    for td in tasks:
        feats = featurize_task(td, td.train, tokenizer, options)
        if not has_labels(feats):
            raise DataError(td.name, "training examples carry no gold labels")
        train[td.name] = feats
        if td.dev:
            dev[td.name] = list(featurize_task(td, td.dev, tokenizer, options))
    return train, dev


def _mlm_features(config: TrainConfig, tokenizer: Any) -> list[dict[str, Any]] | None:
    if config.mlm is None:
        return None
    from xstilts.train.mlm import read_mlm_lines, tokenize_mlm

    if tokenizer.mask_token_id is None:
        raise ConfigError("the model's tokenizer has no mask token: MLM is not possible", key="mlm")
    lines = read_mlm_lines(config.mlm.files, config.mlm.max_examples, config.seed)
    return tokenize_mlm(lines, tokenizer, config.mlm.max_length or config.max_length)


def _schedule(config: TrainConfig, tasks: Sequence[TaskData], streams: dict[str, BatchStream]) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) of the stage."""
    mlm_p = config.mlm.probability if config.mlm else 0.0
    if tasks:
        n_task_batches = sum(streams[td.name].batches_per_epoch() for td in tasks)
        micro_per_epoch = math.ceil(n_task_batches / (1.0 - mlm_p))
    else:
        micro_per_epoch = streams[MLM_TASK].batches_per_epoch()
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / config.grad_accum))
    total = config.max_steps or max(1, math.ceil(config.num_epochs * steps_per_epoch))
    return steps_per_epoch, total


def build_stage_data(config: TrainConfig, tasks: Sequence[TaskData], tokenizer: Any) -> StageData:
    """Featurise every task (and the MLM text) and set up the stage's data order."""
    from xstilts.tasks.formats import get_format

    train, dev = _featurize_tasks(tasks, tokenizer, config)
    streams = {td.name: BatchStream(feature_lengths(train[td.name]), config.batch_size, config.seed, s,
                                    config.group_by_length) for s, td in enumerate(tasks)}
    mlm = _mlm_features(config, tokenizer)
    if mlm is not None:
        streams[MLM_TASK] = BatchStream([len(f["input_ids"]) for f in mlm], config.batch_size, config.seed,
                                        len(tasks), config.group_by_length)
    sizes = {name: len(feats) for name, feats in train.items()}
    sampler = TaskSampler(task_probabilities(sizes, config.sampler), config.seed,
                          config.mlm.probability if config.mlm else 0.0)
    steps_per_epoch, total = _schedule(config, tasks, streams)
    return StageData(tasks=list(tasks), formats={td.name: get_format(td.format) for td in tasks}, train=train,
                     dev=dev, mlm=mlm, streams=streams, sampler=sampler, steps_per_epoch=steps_per_epoch,
                     total_steps=total)
