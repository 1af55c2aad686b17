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

from typing import TYPE_CHECKING, Any

from xstilts.train.config import MLMConfig, SamplerConfig, TaskMixture, TrainConfig, load_train_config, make_train_config

if TYPE_CHECKING:  # pragma: no cover
    from xstilts.train.data import TaskData
    from xstilts.train.engine import TrainResult, train_stage

# torch-importing names load on first use, so reading a config or a spec stays light (the CLI
# checks a spec's names in well under a second)
_LAZY = {"TaskData": "xstilts.train.data", "TrainResult": "xstilts.train.engine", "train_stage": "xstilts.train.engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xstilts.train' has no attribute {name!r}")

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
