"""Experiment trackers (``--report-to tensorboard|wandb|mlflow``), through accelerate's trackers.

What is reported where:

* **training** (``xstilts train``, the training stages of ``xstilts run``): ``TrainConfig.trackers``
  is handed to ``accelerate.Accelerator(log_with=...)``; every ``log.jsonl`` record goes to the
  trackers as scalars (``loss``, ``lr``, ``epoch``, ``examples_per_s`` and the English dev scores
  as ``eval/<task>/<metric>``, at their optimizer step), with the stage's settings as hyperparameters.
  TensorBoard writes under ``<stage output dir>/xstilts/``.
* **zero-shot evaluation** (``xstilts eval``, the eval stages of ``xstilts run``):
  :func:`log_eval_report` reports every score of every language as
  ``zero_shot/<task>/<split>/<language>/<metric>`` (and ``.../average/<metric>``), with the
  evaluation's settings as hyperparameters; TensorBoard writes under ``<eval out dir>/xstilts/``.

In a spec, ``hyperparameters: {intermediate: {trackers: [tensorboard]}, target: {trackers: [...]}}``
sets the trackers of training stages (an operational setting: stage ids do not change);
``xstilts run --report-to NAME`` sets them for every stage of the run, evaluations included
(it exports :data:`ENV_VAR`, which the stage executor and its worker processes read).

The trackers are optional dependencies: a tracker whose package is missing is a
:class:`~xstilts.errors.ConfigError` naming the pip extra, raised before anything loads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xstilts.errors import ConfigError, UnknownNameError

log = logging.getLogger(__name__)

#: tracker name -> (the module it needs, the pip extra of xstilts that installs it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}
#: trackers for every stage of a run (comma list), set by ``xstilts run --report-to``
ENV_VAR = "XSTILTS_REPORT_TO"
#: the run / project name given to the trackers (TensorBoard: the sub-directory of the logging dir)
PROJECT = "xstilts"


def require_trackers(names: Iterable[str], *, key: str = "trackers") -> list[str]:
    """``names`` checked: each a known tracker whose package is installed (UnknownNameError /
    ConfigError naming the pip extra otherwise); duplicates dropped, order kept."""
    out: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name not in TRACKERS:
            raise UnknownNameError("tracker", str(raw), list(TRACKERS))
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracker '{name}' needs the '{module}' package, which is not installed: "
                              f"pip install 'xstilts[{extra}]' (or pip install {module})", key=key)
        if name not in out:
            out.append(name)
    return out


def parse_report_to(value: str | Sequence[str] | None, *, key: str = "--report-to") -> list[str]:
    """``--report-to`` values (repeatable, or comma lists; ``none`` for no tracker), checked."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    return require_trackers([n for n in names if n.lower() != "none"], key=key)


def env_trackers() -> list[str]:
    """The trackers ``xstilts run --report-to`` asked for (:data:`ENV_VAR`), checked."""
    return parse_report_to(os.environ.get(ENV_VAR) or None, key=ENV_VAR)


def merge_trackers(*lists: Iterable[str] | None) -> list[str]:
    """The union of tracker lists, first-seen order."""
    out: list[str] = []
    for names in lists:
        for name in names or ():
            if name not in out:
                out.append(name)
    return out


# ---------------------------------------------------------------------- zero-shot results
def eval_scalars(report: Any) -> dict[str, float]:
    """Every score of an :class:`~xstilts.evaluate.EvalReport` as tracker scalars."""
    base = f"zero_shot/{report.task}/{report.split}"
    out: dict[str, float] = {}
    for lang, scores in {**report.per_language, "average": report.average}.items():
        for metric, value in (scores or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{base}/{lang}/{metric}"] = float(value)
    return out


def _hparams(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flat scalar settings (what trackers accept as hyperparameters)."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, Mapping):
            out.update(_hparams(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
    return out


def make_trackers(names: Sequence[str], logging_dir: str | Path, run_name: str = PROJECT) -> list[Any]:
    """Started accelerate trackers for ``names`` (checked first), logging under ``logging_dir``."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    trackers = []
    for name in require_trackers(names):
        cls = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":
            tracker = cls(run_name, str(logging_dir))
        elif name == "mlflow":
            tracker = cls(experiment_name=run_name, logging_dir=str(logging_dir))
        else:
            tracker = cls(run_name)
        tracker.start()
        trackers.append(tracker)
    return trackers


def log_eval_report(report: Any, trackers: Sequence[str], logging_dir: str | Path, *,
                    run_name: str = PROJECT) -> dict[str, float]:
    """Report a zero-shot evaluation's scores per language (and averages) to ``trackers``;
    returns the scalars logged (nothing when ``trackers`` is empty)."""
    if not trackers:
        return {}
    scalars = eval_scalars(report)
    for tracker in make_trackers(trackers, logging_dir, run_name):
        try:
            tracker.store_init_configuration(_hparams({"task": report.task, "split": report.split,
                                                        **(report.settings or {})}))
            tracker.log(scalars, step=0)
        finally:
            tracker.finish()
    log.info("reported %d zero-shot scores of %s/%s to %s", len(scalars), report.task, report.split,
             ", ".join(trackers))
    return scalars
