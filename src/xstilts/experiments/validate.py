"""Loading a spec: read the file, build the typed :class:`~xstilts.experiments.spec.Spec`, and
check it against the task catalog and the file system before anything is planned or trained.

Every problem raises :class:`~xstilts.errors.ConfigError` naming the spec file, the dotted
key and the allowed values: unknown task, wrong role (a retrieval or target-only task used
as intermediate), a chain that refers back to itself, a language or split a task lacks (an
intermediate entry on ``split: train``: a language without training data), the
baseline naming rule, an ``output_dir`` that is a file. Task names are normalised to the
catalog's names in place.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from xstilts.config_io import validate_model
from xstilts.errors import ConfigError, UnknownNameError, XStiltsError, suggest
from xstilts.experiments.spec import (
    BASELINE,
    HIDDEN_KEYS,
    Spec,
    StepSpec,
    TargetSpec,
    TaskEntry,
    expand_setup,
    is_setup_ref,
    read_spec_file,
)
from xstilts.tasks.catalog import TaskSpec, check_language, get_task, list_tasks

logger = logging.getLogger(__name__)


def load_spec(path: str | Path, *, overrides: dict[str, Any] | None = None, validate: bool = True) -> Spec:
    """Load a spec file (following ``include:``), deep-merge ``overrides`` on top, validate it.

    Relative ``data_dir``/``output_dir`` are resolved against the file that sets them.
    Raises :class:`ConfigError` naming the file, key and allowed values.
    """
    path = Path(path).expanduser()
    try:
        return parse_spec(read_spec_file(path, overrides), path, validate=validate)
    except ConfigError:
        raise
    except XStiltsError as exc:  # e.g. UnknownNameError raised deep in the catalog
        raise ConfigError(str(exc), file=path) from None


def parse_spec(data: dict[str, Any], file: str | Path | None = None, *, validate: bool = True) -> Spec:
    """Validate a raw mapping into a :class:`Spec` (and, unless ``validate=False``, check it
    against the task catalog and the file system with :func:`validate_spec`)."""
    file = Path(file) if file is not None else None
    data = {k: v for k, v in data.items() if k != "file"}
    spec = validate_model(Spec, {**data, "file": file}, file=file, brackets=True, hidden=HIDDEN_KEYS)
    return validate_spec(spec) if validate else spec


def validate_spec(spec: Spec) -> Spec:
    """Check ``spec`` against the catalog in place (normalises task names to catalog names).
    The spec's user catalogs (``catalogs:``) are loaded first."""
    from xstilts.tasks.catalog import use_catalogs

    for i, path in enumerate(spec.catalogs):
        if not path.is_file():
            raise ConfigError(f"task catalog not found: {path}", key=f"catalogs[{i}]", file=spec.file)
    use_catalogs(spec.catalogs)
    _check_models(spec)
    _check_setups(spec)
    _check_targets(spec)
    _check_task_hyperparameters(spec)
    _check_max_examples(spec)
    _check_paths(spec)
    return spec


# --------------------------------------------------------------------------- catalog look-ups


def _task(name: str, *, key: str, file: Path | None, role: str) -> TaskSpec:
    """The catalog entry ``name`` usable in ``role``; ConfigError listing valid names otherwise."""
    valid = [t.name for t in list_tasks(role) if role != "intermediate" or t.trainable]
    try:
        spec = get_task(name)
    except UnknownNameError:
        close = suggest(name, valid)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown task '{name}'.{hint} Valid {role} tasks: {', '.join(sorted(valid))}",
                          key=key, file=file) from None
    if role == "intermediate" and not spec.trainable:
        raise ConfigError(f"'{spec.name}' is a {spec.format} task (no training data, no head): it cannot be an "
                          f"intermediate task. Valid intermediate tasks: {', '.join(sorted(valid))}",
                          key=key, file=file)
    if spec.role not in (role, "both"):
        raise ConfigError(f"task '{spec.name}' has role '{spec.role}', not {role}. Valid {role} tasks: "
                          f"{', '.join(sorted(valid))}", key=key, file=file)
    return spec


def _any_task(name: str, *, key: str, file: Path | None) -> TaskSpec:
    try:
        return get_task(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc), key=key, file=file) from None


def _language(task: TaskSpec, language: str, *, key: str, file: Path | None) -> str:
    try:
        return check_language(task, language)
    except UnknownNameError:
        raise ConfigError(f"task '{task.name}' has no language '{language}'. Its languages: "
                          f"{', '.join(task.languages)}", key=key, file=file) from None


def _languages(task: TaskSpec, languages: list[str], *, key: str, file: Path | None) -> list[str]:
    if not languages:
        raise ConfigError("empty language list", key=key, file=file)
    return [_language(task, lang, key=key, file=file) for lang in languages]


def _split(task: TaskSpec, split: str, *, key: str, file: Path | None) -> str:
    if split not in task.splits:
        raise ConfigError(f"task '{task.name}' has no split '{split}'. Its splits: {', '.join(task.splits)}",
                          key=key, file=file)
    return split


# --------------------------------------------------------------------------- checks


def _check_models(spec: Spec) -> None:
    for i, model in enumerate(spec.models):
        if not model.name_or_path.strip():
            raise ConfigError("empty model name_or_path", key=f"models[{i}].name_or_path", file=spec.file)
    names = [m.name for m in spec.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}", key="models", file=spec.file)
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds must be unique, got {spec.seeds}", key="seeds", file=spec.file)


def _check_entry(entry: TaskEntry, *, key: str, file: Path | None) -> None:
    task = _task(entry.task, key=f"{key}.task", file=file, role="intermediate")
    entry.task = task.name
    entry.languages = _languages(task, entry.languages, key=f"{key}.languages", file=file)
    _split(task, entry.split, key=f"{key}.split", file=file)
    if entry.split == "train":
        _training_languages(task, entry.languages, key=f"{key}.languages", file=file)
    if isinstance(entry.max_examples, dict):
        entry.max_examples = _language_caps(task, entry.max_examples, entry.languages, key=f"{key}.max_examples",
                                            file=file)


def _training_languages(task: TaskSpec, languages: list[str], *, key: str, file: Path | None) -> None:
    """Every language trained on has a train split (the catalog's ``train_languages``)."""
    missing = [lang for lang in languages if lang not in task.train_languages]
    if missing:
        raise ConfigError(f"task '{task.name}' has no training data in {', '.join(map(repr, missing))}. Its training "
                          f"languages: {', '.join(task.train_languages)}", key=key, file=file)


def _language_caps(task: TaskSpec, caps: dict[str, int], languages: list[str], *, key: str,
                   file: Path | None) -> dict[str, int]:
    """An entry's per-language caps with keys normalised to catalog codes; each key is one of the
    entry's ``languages`` or ``default``."""
    out = {}
    for name, cap in caps.items():
        code = name if name == "default" else _language(task, name, key=f"{key}.{name}", file=file)
        if code != "default" and code not in languages:
            raise ConfigError(f"'{name}' is not a language of this entry (its languages: {', '.join(languages)}; "
                              "or 'default')", key=f"{key}.{name}", file=file)
        out[code] = cap
    return out


def _check_step(step: StepSpec, *, key: str, file: Path | None) -> None:
    for i, entry in enumerate(step.tasks):
        _check_entry(entry, key=f"{key}.tasks[{i}]" if len(step.tasks) > 1 else key, file=file)
    names = [entry.task for entry in step.tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"task(s) listed twice in one step: {', '.join(dup)}", key=f"{key}.tasks", file=file)


def _check_setups(spec: Spec) -> None:
    """Naming rule, every step's tasks; chain task names become steps; then cycles and repeats."""
    file = spec.file
    for name, setup in spec.intermediate.items():
        key = f"intermediate.{name}"
        if setup.kind == "none" and name != BASELINE:
            raise ConfigError(f"the no-intermediate setup must be named '{BASELINE}'", key=key, file=file)
        if name == BASELINE and setup.kind != "none":
            raise ConfigError(f"'{BASELINE}' is reserved for the no-intermediate setup: set it to none",
                              key=key, file=file)
        if setup.step is not None:
            _check_step(setup.step, key=key, file=file)
        for i, element in enumerate(setup.chain):
            if isinstance(element, str) and not is_setup_ref(spec, name, element):
                task = _task(element, key=f"{key}.chain[{i}]", file=file, role="intermediate")
                element = setup.chain[i] = StepSpec.model_validate(task.name)
            if isinstance(element, StepSpec):
                _check_step(element, key=f"{key}.chain[{i}]", file=file)
    for name in spec.intermediate:  # after all steps are checked: cycles and repeats
        expand_setup(spec, name)


def _check_targets(spec: Spec) -> None:
    seen: set[str] = set()
    for i, target in enumerate(spec.targets):
        key = f"targets[{i}]"
        task = _task(target.task, key=f"{key}.task", file=spec.file, role="target")
        target.task = task.name
        if task.name in seen:
            raise ConfigError(f"target '{task.name}' listed twice", key=key, file=spec.file)
        seen.add(task.name)
        if target.split is not None:
            _split(task, target.split, key=f"{key}.split", file=spec.file)
        for j, split in enumerate(target.eval_splits or ()):
            _split(task, split, key=f"{key}.eval_splits[{j}]", file=spec.file)
        if isinstance(target.languages, list):
            target.languages = _languages(task, target.languages, key=f"{key}.languages", file=spec.file)
        elif target.languages in ("xtreme", "xtreme-r") and not task.benchmarks.get(target.languages):
            raise ConfigError(f"task '{task.name}' is not part of {target.languages}; use 'all' or a list. "
                              f"Its benchmarks: {', '.join(task.benchmarks) or 'none'}", key=f"{key}.languages",
                              file=spec.file)
        if not task.trainable:
            _check_retrieval_eval(target.eval.featurize(), key=f"{key}.eval", file=spec.file)
        else:
            _check_target_train(target, task, key=key, file=spec.file)


def _check_target_train(target: TargetSpec, task: TaskSpec, *, key: str, file: Path | None) -> None:
    """The task a target fine-tunes on has the split (and languages) the spec asks for."""
    train_task = _any_task((target.train.task if target.train and target.train.task else task.train_task) or task.name,
                           key=f"{key}.train.task", file=file)
    split = target.train.split if target.train else "train"
    if split not in train_task.splits:
        raise ConfigError(f"target '{task.name}' trains on task '{train_task.name}', which has no split "
                          f"'{split}' (its splits: {', '.join(train_task.splits)}); set "
                          f"{key}.train.split / .task", key=f"{key}.train", file=file)
    if target.train and target.train.languages:
        target.train.languages = _languages(train_task, target.train.languages, key=f"{key}.train.languages",
                                            file=file)


def _check_retrieval_eval(featurize: dict[str, Any], *, key: str, file: Path | None) -> None:
    if featurize:
        first = sorted(featurize)[0]
        raise ConfigError(f"a retrieval target has no training to inherit '{first}' from: set it under "
                          f"eval.retrieval (e.g. retrieval: {{max_length: 128}})", key=f"{key}.{first}", file=file)


def _check_task_hyperparameters(spec: Spec) -> None:
    """Per-task hyperparameters name catalog tasks (keys normalised to the catalog's names)."""
    hp = spec.hyperparameters
    normalised = {}
    for tname, th in hp.tasks.items():
        key = f"hyperparameters.tasks.{tname}"
        task = _any_task(tname, key=key, file=spec.file)
        if not task.trainable:
            _check_retrieval_eval(th.eval.featurize(), key=f"{key}.eval", file=spec.file)
        normalised[task.name] = th
    hp.tasks = normalised


def _check_max_examples(spec: Spec) -> None:
    for kind in ("intermediate", "target", "eval"):
        value = getattr(spec.max_examples, kind)
        for tname in value if isinstance(value, dict) else ():
            if tname != "default":
                _any_task(tname, key=f"max_examples.{kind}.{tname}", file=spec.file)


def _check_paths(spec: Spec) -> None:
    """``output_dir`` can be created as a directory; ``data_dir``, when it exists, is one."""
    out = Path(spec.output_dir)
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        what = "is a file" if blocker == out else f"is inside {blocker}, which is a file"
        raise ConfigError(f"output_dir {out} {what}, not a directory: point output_dir at a new or existing folder",
                          key="output_dir", file=spec.file)
    if spec.data_dir is not None and Path(spec.data_dir).exists() and not Path(spec.data_dir).is_dir():
        raise ConfigError(f"data_dir {spec.data_dir} is a file, not a directory", key="data_dir", file=spec.file)

