"""Forgetting in a chain: the heads of tasks an earlier stage trained, scored when a later stage ends.

A stage of a sequential chain (``A -> B``) starts from the previous stage's encoder and trains
its own tasks; the heads of the earlier tasks are not trained again (a head an ``init_heads``
stage carries over is frozen, see :func:`xstilts.train.modeling.build_model`). Each
:class:`~xstilts.train.config.CarriedDevTask` of ``TrainConfig.carried_dev_tasks`` names such a
task with the settings its own stage evaluated it with. When training has ended the stage puts
that head (as the earlier stage left it: from ``head_from``) on its final encoder and scores it

- on the **same English dev examples** as the earlier stage: the task's dev data are loaded by
  the same function with the earlier stage's seed, ``eval_max_examples``, split and
  ``dev_holdout`` (:func:`xstilts.train.data.load_task_data`), and featurised with its
  ``max_length`` / ``doc_stride`` / ``max_query_length``;
- through the same inference loop and scorer as every dev evaluation
  (:func:`xstilts.train.evaluation.dev_predictions`, :func:`~xstilts.train.evaluation.score_dev`).

The heads are attached only for that evaluation and removed again, so the stage's model,
checkpoints and weights are those of a stage without carried tasks. The encoder scored is the
one at the end of training, as for the stage's own final dev scores (``DONE.dev_metrics``);
with ``final_model: best`` the saved model may be an earlier checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xstilts.errors import XStiltsError
from xstilts.train.config import CarriedDevTask, TrainConfig
from xstilts.train.data import StageData, TaskData, featurize_task, load_task_data

logger = logging.getLogger(__name__)

__all__ = ["carried_dev_data", "carried_heads", "check_carried_heads", "head_source"]


def _earlier_view(config: TrainConfig, entry: CarriedDevTask) -> TrainConfig:
    """``config`` with the earlier stage's settings that choose its dev examples (seed, cap)."""
    return config.model_copy(update={"seed": entry.seed, "eval_max_examples": entry.eval_max_examples})


def _load_entry(config: TrainConfig, entry: CarriedDevTask, index: int) -> TaskData | None:
    """The carried task's data (dev examples as its stage chose them); None, with a warning,
    when it has no English dev examples."""
    td = load_task_data(entry, _earlier_view(config, entry), index)
    if not td.dev:
        logger.warning("carried task %s has no English dev examples: its head is not scored", td.name)
        return None
    return td


def carried_dev_data(config: TrainConfig, tokenizer: Any) -> StageData:
    """The dev data of ``config.carried_dev_tasks``, featurised as their own stages did, as a
    :class:`StageData` holding dev data only (what the dev evaluation functions read)."""
    from xstilts.tasks.formats import get_format
    from xstilts.tasks.formats.base import FeaturizeOptions

    tasks: list[TaskData] = []
    dev: dict[str, list[dict[str, Any]]] = {}
    for i, entry in enumerate(config.carried_dev_tasks):
        td = _load_entry(config, entry, i)
        if td is None:
            continue
        options = FeaturizeOptions(max_length=entry.max_length, doc_stride=entry.doc_stride,
                                   max_query_length=entry.max_query_length)
        tasks.append(td)
        dev[td.name] = list(featurize_task(td, td.dev, tokenizer, options))
    return StageData(tasks=tasks, formats={td.name: get_format(td.format) for td in tasks}, train={}, dev=dev,
                     mlm=None, streams={}, sampler=None, steps_per_epoch=0, total_steps=0)  # type: ignore[arg-type]


def head_source(config: TrainConfig, entry: CarriedDevTask) -> Path:
    """The model directory a carried head is read from: ``head_from``, else the stage's start model."""
    from xstilts.train.modeling import resolve_start

    return Path(entry.head_from or resolve_start(config.model)).expanduser()


def check_carried_heads(config: TrainConfig, data: StageData, model: Any) -> None:
    """XStiltsError (before any training) when a carried task's head is neither in ``model``
    nor saved in its source directory."""
    for td, entry in zip(data.tasks, _entries_of(config, data), strict=True):
        name, source = td.name, head_source(config, entry)
        if name in model.head_specs:
            continue
        saved = _saved_head_names(source)
        if name not in saved:
            raise XStiltsError(f"carried_dev_tasks: no head '{name}' in {source} (saved heads: "
                               f"{', '.join(saved) or 'none'}); head_from must be the model of the stage that "
                               "trained it")


def _saved_head_names(directory: Path) -> list[str]:
    from xstilts.models.loading import read_xstilts_model_json
    from xstilts.paths import XSTILTS_MODEL_FILE

    if not (directory / XSTILTS_MODEL_FILE).is_file():
        return []
    return [h.get("task", "") for h in read_xstilts_model_json(directory).get("heads", [])]


def _entries_of(config: TrainConfig, data: StageData) -> list[CarriedDevTask]:
    """The config entries of the carried tasks ``data`` holds (tasks without dev data dropped)."""
    from xstilts.tasks.catalog import get_task

    by_name = {get_task(e.task).name: e for e in config.carried_dev_tasks}
    return [by_name[td.name] for td in data.tasks]


@contextlib.contextmanager
def carried_heads(model: Any, config: TrainConfig, data: StageData) -> Iterator[list[str]]:
    """Put every carried head ``model`` lacks on it (weights from :func:`head_source`) for the
    duration of the block, then take them off again; yields the names of the heads scored."""
    added: list[str] = []
    try:
        for td, entry in zip(data.tasks, _entries_of(config, data), strict=True):
            if td.name not in model.head_specs:
                model.add_saved_head(head_source(config, entry), td.name)
                added.append(td.name)
        yield [td.name for td in data.tasks]
    finally:
        for name in added:
            model.remove_head(name)
