"""Training: one stage on ``accelerate`` (single task, multi-task samplers, MLM auxiliary,
mixed-language data, sequential chains), with atomic checkpoints and exact resume.

Public API::

    TrainConfig, TaskMixture, SamplerConfig, MLMConfig, load_train_config(path)
    train_stage(config, output_dir, *, task_data=None) -> TrainResult
    TaskData (a task given directly, e.g. synthetic), TrainResult

Modules: ``engine`` (:class:`~xstilts.train.engine.StageTrainer`, the recipe behind
``train_stage``), ``data`` (tasks, features, data order of a stage), ``modeling`` (model,
heads, optimizer, accelerator), ``evaluation`` (dev evaluation through
``models.predict``), ``checkpoint`` (atomic checkpoints, the typed ``TrainState``, safe
loading and fallback), ``records`` (``log.jsonl`` and the ``DONE`` record), ``sampling``,
``mlm``, ``compact_vocab``, ``config``.
"""

from xstilts.train.config import MLMConfig, SamplerConfig, TaskMixture, TrainConfig, load_train_config, make_train_config
from xstilts.train.data import TaskData
from xstilts.train.engine import TrainResult, train_stage

__all__ = [
    "MLMConfig",
    "SamplerConfig",
    "TaskData",
    "TaskMixture",
    "TrainConfig",
    "TrainResult",
    "load_train_config",
    "make_train_config",
    "train_stage",
]
