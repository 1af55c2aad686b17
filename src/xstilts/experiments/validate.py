"""Checks of a parsed spec against the task catalog, before anything is planned or trained.

Every problem raises :class:`~xstilts.errors.ConfigError` naming the spec file, the dotted
key and the allowed values: unknown task, wrong role (a retrieval or target-only task used
as intermediate), a chain that refers back to itself, a language a task lacks, unknown
hyperparameter keys, the baseline naming rule.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xstilts.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    from xstilts.experiments.spec import Spec, StepSpec, TaskEntry

logger = logging.getLogger(__name__)


def _task(name: str, *, key: str, file: Path | None, role: str) -> Any:
    """The catalog entry ``name`` usable in ``role``; ConfigError listing valid names otherwise."""
    from xstilts.tasks.catalog import get_task, list_tasks

    valid = [t.name for t in list_tasks(role)]
    if role == "intermediate":
        valid = [t.name for t in list_tasks("intermediate") if t.format != "retrieval"]
    try:
        spec = get_task(name)
    except UnknownNameError:
        raise ConfigError(f"unknown task '{name}'. Valid {role} tasks: {', '.join(sorted(valid))}",
                          key=key, file=file) from None
    if role == "intermediate" and spec.format == "retrieval":
        raise ConfigError(f"'{spec.name}' is a retrieval task (no training data, no head): it cannot be an "
                          f"intermediate task. Valid intermediate tasks: {', '.join(sorted(valid))}", key=key, file=file)
    if spec.role not in (role, "both"):
        raise ConfigError(f"task '{spec.name}' has role '{spec.role}', not {role}. Valid {role} tasks: "
                          f"{', '.join(sorted(valid))}", key=key, file=file)
    return spec


def _language(task: Any, language: str, *, key: str, file: Path | None) -> str:
    from xstilts.tasks.catalog import check_language

    try:
        return check_language(task, language)
    except UnknownNameError:
        raise ConfigError(f"task '{task.name}' has no language '{language}'. Its languages: "
                          f"{', '.join(task.languages)}", key=key, file=file) from None


def _split(task: Any, split: str, *, key: str, file: Path | None) -> str:
    if split not in task.splits:
        raise ConfigError(f"task '{task.name}' has no split '{split}'. Its splits: {', '.join(task.splits)}",
                          key=key, file=file)
    return split


def _check_train_keys(values: dict[str, Any], *, key: str, file: Path | None) -> None:
    from xstilts.experiments.spec import _PLANNED_TRAIN_KEYS
    from xstilts.train.config import TrainConfig

    allowed = sorted(set(TrainConfig.model_fields) - _PLANNED_TRAIN_KEYS)
    for k in values:
        if k in _PLANNED_TRAIN_KEYS:
            raise ConfigError(f"'{k}' is set by the plan, not a hyperparameter. Allowed keys: {', '.join(allowed)}",
                              key=f"{key}.{k}", file=file)
        if k not in allowed:
            raise ConfigError(f"unknown hyperparameter. Allowed keys: {', '.join(allowed)}", key=f"{key}.{k}", file=file)


def _check_entry(entry: TaskEntry, *, key: str, file: Path | None) -> None:
    task = _task(entry.task, key=f"{key}.task", file=file, role="intermediate")
    entry.task = task.name
    entry.languages = [_language(task, lang, key=f"{key}.languages", file=file) for lang in entry.languages]
    _split(task, entry.split, key=f"{key}.split", file=file)
    if entry.extra_files and entry.extra_ratio <= 0:
        raise ConfigError("extra_files need extra_ratio > 0 (extra examples per catalog example)",
                          key=f"{key}.extra_ratio", file=file)


def _check_step(step: StepSpec, *, key: str, file: Path | None) -> None:
    from pydantic import ValidationError

    from xstilts.train.config import MLMConfig, SamplerConfig

    names = []
    for i, entry in enumerate(step.tasks):
        _check_entry(entry, key=f"{key}.tasks[{i}]" if len(step.tasks) > 1 else key, file=file)
        names.append(entry.task)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"task(s) listed twice in one step: {', '.join(dup)}", key=f"{key}.tasks", file=file)
    for sub, cls, value in (("sampler", SamplerConfig, step.sampler), ("mlm", MLMConfig, step.mlm)):
        if value is None:
            continue
        try:
            cls.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            allowed = ", ".join(cls.model_fields)
            raise ConfigError(f"{err['msg']} (allowed keys: {allowed})", key=f"{key}.{sub}" + (f".{loc}" if loc else ""),
                              file=file) from None


def expand_setup(spec: Spec, name: str) -> list[StepSpec]:
    """The steps of setup ``name`` in training order (chains expanded, setup references resolved).

    Raises ConfigError for a cycle (a chain that reaches itself), a repeated step, or a
    reference to the baseline.
    """
    from xstilts.experiments.spec import StepSpec

    file = spec.file

    def walk(setup_name: str, stack: tuple[str, ...]) -> list[tuple[StepSpec, str]]:
        setup = spec.intermediate[setup_name]
        key = f"intermediate.{setup_name}"
        if setup.kind == "none":
            return []
        if setup.kind == "step":
            assert setup.step is not None
            return [(setup.step, key)]
        out: list[tuple[StepSpec, str]] = []
        for i, element in enumerate(setup.chain):
            ekey = f"{key}.chain[{i}]"
            if isinstance(element, str) and element in spec.intermediate and (element != setup_name or _is_task(element) is False):
                if element in stack or element == setup_name:
                    cycle = " -> ".join((*stack, setup_name, element))
                    raise ConfigError(f"sequential chain has a cycle: {cycle}", key=ekey, file=file)
                if spec.intermediate[element].kind == "none":
                    raise ConfigError("a chain cannot contain the baseline (it has no training)", key=ekey, file=file)
                out.extend(walk(element, (*stack, setup_name)))
            elif isinstance(element, str):
                out.append((StepSpec.model_validate(_task(element, key=ekey, file=file, role="intermediate").name), ekey))
            else:
                out.append((element, ekey))
        return out

    steps = walk(name, ())
    seen: dict[str, str] = {}
    for step, key in steps:
        for entry in step.tasks:
            if entry.task in seen:
                raise ConfigError(f"sequential chain has a cycle: task '{entry.task}' is trained twice "
                                  f"(first at {seen[entry.task]})", key=key, file=file)
            seen[entry.task] = key
    return [s for s, _ in steps]


def _is_task(name: str) -> bool:
    from xstilts.tasks.catalog import get_task

    try:
        get_task(name)
        return True
    except UnknownNameError:
        return False


def validate_spec(spec: Spec) -> Spec:
    """Check ``spec`` against the catalog in place (normalises task names to catalog names)."""
    from xstilts.experiments.spec import BASELINE

    file = spec.file
    for i, model in enumerate(spec.models):
        if not model.name_or_path.strip():
            raise ConfigError("empty model name_or_path", key=f"models[{i}].name_or_path", file=file)
    names = [m.name for m in spec.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}", key="models", file=file)
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds must be unique, got {spec.seeds}", key="seeds", file=file)

    for name, setup in spec.intermediate.items():
        key = f"intermediate.{name}"
        if setup.kind == "none" and name != BASELINE:
            raise ConfigError(f"the no-intermediate setup must be named '{BASELINE}'", key=key, file=file)
        if name == BASELINE and setup.kind != "none":
            raise ConfigError(f"'{BASELINE}' is reserved for the no-intermediate setup: set it to none", key=key, file=file)
        if setup.kind == "step":
            assert setup.step is not None
            _check_step(setup.step, key=key, file=file)
        elif setup.kind == "chain":
            for i, element in enumerate(setup.chain):
                if not isinstance(element, str):
                    _check_step(element, key=f"{key}.chain[{i}]", file=file)
                elif element not in spec.intermediate:
                    _task(element, key=f"{key}.chain[{i}]", file=file, role="intermediate")
    for name in spec.intermediate:  # after all steps are checked: cycles and repeats
        expand_setup(spec, name)

    seen_targets: set[str] = set()
    for i, target in enumerate(spec.targets):
        key = f"targets[{i}]"
        task = _task(target.task, key=f"{key}.task", file=file, role="target")
        target.task = task.name
        if task.name in seen_targets:
            raise ConfigError(f"target '{task.name}' listed twice", key=key, file=file)
        seen_targets.add(task.name)
        if target.split is not None:
            _split(task, target.split, key=f"{key}.split", file=file)
        if isinstance(target.languages, list):
            if not target.languages:
                raise ConfigError("empty language list", key=f"{key}.languages", file=file)
            target.languages = [_language(task, lang, key=f"{key}.languages", file=file) for lang in target.languages]
        elif target.languages in ("xtreme", "xtreme-r") and not task.benchmarks.get(target.languages):
            raise ConfigError(f"task '{task.name}' is not part of {target.languages}; use 'all' or a list. "
                              f"Its benchmarks: {', '.join(task.benchmarks) or 'none'}", key=f"{key}.languages", file=file)
        if task.format != "retrieval":
            train_task_name = (target.train.task if target.train and target.train.task else task.train_task) or task.name
            try:
                from xstilts.tasks.catalog import get_task

                train_task = get_task(train_task_name)
            except UnknownNameError as exc:
                raise ConfigError(str(exc), key=f"{key}.train.task", file=file) from None
            split = target.train.split if target.train else "train"
            if split not in train_task.splits:
                raise ConfigError(f"target '{task.name}' trains on task '{train_task.name}', which has no split "
                                  f"'{split}' (its splits: {', '.join(train_task.splits)}); set "
                                  f"targets[{i}].train.split / .task", key=f"{key}.train", file=file)
            if target.train and target.train.languages:
                target.train.languages = [_language(train_task, lang, key=f"{key}.train.languages", file=file)
                                          for lang in target.train.languages]

    hp = spec.hyperparameters
    _check_train_keys(hp.intermediate, key="hyperparameters.intermediate", file=file)
    _check_train_keys(hp.target, key="hyperparameters.target", file=file)
    from xstilts.tasks.catalog import get_task

    for tname, th in hp.tasks.items():
        try:
            get_task(tname)
        except UnknownNameError as exc:
            raise ConfigError(str(exc), key=f"hyperparameters.tasks.{tname}", file=file) from None
        _check_train_keys(th.intermediate, key=f"hyperparameters.tasks.{tname}.intermediate", file=file)
        _check_train_keys(th.target, key=f"hyperparameters.tasks.{tname}.target", file=file)
        bad = sorted(set(th.eval) - {"batch_size", "retrieval"})
        if bad:
            raise ConfigError("unknown key. Allowed keys: batch_size, retrieval",
                              key=f"hyperparameters.tasks.{tname}.eval.{bad[0]}", file=file)
    for kind in ("intermediate", "target", "eval"):
        value = getattr(spec.max_examples, kind)
        if isinstance(value, dict):
            for tname, n in value.items():
                if tname != "default" and not _is_task(tname):
                    raise ConfigError(f"unknown task '{tname}' (use a task name or 'default')",
                                      key=f"max_examples.{kind}.{tname}", file=file)
                if n is not None and n <= 0:
                    raise ConfigError("must be a positive number of examples (or null for all)",
                                      key=f"max_examples.{kind}.{tname}", file=file)
        elif value is not None and value <= 0:
            raise ConfigError("must be a positive number of examples (or null for all)", key=f"max_examples.{kind}", file=file)
    if hp.eval.retrieval is not None:
        _check_retrieval(hp.eval.retrieval, key="hyperparameters.eval.retrieval", file=file)
    return spec


def _check_retrieval(values: dict[str, Any], *, key: str, file: Path | None) -> None:
    try:
        from xstilts.evaluate.zero_shot import RetrievalSettings
    except ImportError:  # evaluate layer absent: checked when the stage runs
        return
    import dataclasses

    allowed = [f.name for f in dataclasses.fields(RetrievalSettings)]
    for k in values:
        if k not in allowed:
            raise ConfigError(f"unknown retrieval setting. Allowed keys: {', '.join(allowed)}", key=f"{key}.{k}", file=file)
