"""The task catalog: tasks are data (``catalog.yaml``), validated into :class:`TaskSpec`.

A task names its format, role, languages, splits, metric, label set, where to get it on
the Hugging Face hub (:class:`HubSource`) and how to read it from a local data directory
(:class:`LocalSource`). Adding a task or a language is an edit of ``catalog.yaml``.

Users add or override tasks without touching the package with *user catalogs*: YAML files
of the same schema, given by ``--catalog FILE`` (every command that takes a task), the
``XSTILTS_CATALOG`` environment variable (``os.pathsep``-separated files) or a spec's
``catalogs:`` key, loaded by :func:`use_catalogs`. In a user catalog, relative ``local.paths``
are relative to the catalog file's folder (not to ``--data-dir``); a language the language
table lacks is accepted with a warning (it has no family/script/resource metadata).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xstilts.config_io import read_yaml, validate_model
from xstilts.errors import ConfigError, UnknownNameError
from xstilts.languages import find_language, language_names

logger = logging.getLogger(__name__)

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
#: environment variable listing user catalog files (``os.pathsep``-separated)
CATALOG_ENV = "XSTILTS_CATALOG"
#: help text of the ``--catalog`` option of every command that takes a task
CATALOG_HELP = ("A task catalog YAML of your own (same schema as the packaged catalog.yaml; adds or overrides "
                "tasks; repeatable; also $XSTILTS_CATALOG).")

ROLES = ("intermediate", "target", "both")


class HubSource(BaseModel):
    """Where a task lives on the Hugging Face hub (``datasets.load_dataset`` arguments).

    ``config`` is a template with ``{lang}`` (catalog code) / ``{lang3}`` (file code);
    ``configs`` overrides it per language. ``languages`` (when given) limits the languages
    the hub source covers. ``splits`` maps our split names to hub split names (a list is
    concatenated). ``fields`` maps example fields to dataset columns (dotted for nested
    columns, a list for several choice columns). ``also`` lists further sources whose rows
    are appended (e.g. ANLI+ = ANLI + MNLI + SNLI).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    config: str | None = None
    configs: dict[str, str] = Field(default_factory=dict)
    languages: list[str] | None = None
    splits: dict[str, str | list[str]]
    fields: dict[str, str | list[str]] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    also: list[HubSource] = Field(default_factory=list)

    def config_for(self, language: str, lang3: str | None = None) -> str | None:
        """The hub config name for ``language`` (None when the dataset has no configs)."""
        if language in self.configs:
            return self.configs[language]
        if self.config is None:
            return None
        return self.config.format(lang=language, lang3=lang3 or language)

    def covers(self, language: str) -> bool:
        """Whether this hub source has data for ``language``."""
        if self.languages is not None:
            return language in self.languages
        if self.configs and self.config is None:
            return language in self.configs
        return True


class LocalSource(BaseModel):
    """How to read a task from a local data directory.

    ``reader`` names a function in :data:`xstilts.tasks.readers.READERS`; ``paths`` maps
    each split to a path template (or a list, concatenated) relative to the data dir, with
    ``{lang}`` (catalog code) and ``{lang3}`` (the file's code: ``lang_codes[lang]``, else
    the language's ISO 639-3 code). ``options`` are passed to the reader.
    """

    model_config = ConfigDict(extra="forbid")

    reader: str
    paths: dict[str, str | list[str]]
    lang_codes: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_reader(self) -> LocalSource:
        from xstilts.tasks.readers import READERS

        if self.reader not in READERS:
            raise ValueError(f"reader '{self.reader}' is not a reader; valid: {sorted(READERS)}")
        params = inspect.signature(READERS[self.reader]).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            valid = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
                     and n not in ("label_list", "language")]
            bad = sorted(set(self.options) - set(valid))
            if bad:
                raise ValueError(f"options {bad} are not options of reader '{self.reader}'; valid: {valid or 'none'}")
        return self

    def file_code(self, language: str) -> str:
        """The code a file name uses for ``language`` (``{lang3}`` in templates)."""
        if language in self.lang_codes:
            return self.lang_codes[language]
        lang = find_language(language)
        return lang.iso639_3 if lang is not None else language  # an unknown code is used as it is

    def templates(self, split: str) -> list[str]:
        """The path templates of ``split`` (empty when the split has no local files)."""
        value = self.paths.get(split)
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)

    def resolve(self, data_dir: Path | None, language: str, split: str) -> list[Path]:
        """Concrete file paths of (language, split) under ``data_dir`` (absolute templates, as a
        user catalog's, ignore it; without a data dir only those resolve)."""
        lang3 = self.file_code(language)
        paths = [Path(t.format(lang=language, lang3=lang3)) for t in self.templates(split)]
        return [p if p.is_absolute() else data_dir / p for p in paths if p.is_absolute() or data_dir is not None]

    @property
    def absolute(self) -> bool:
        """Whether every path template is absolute (a user catalog's: no data dir needed)."""
        templates = [t for s in self.paths for t in self.templates(s)]
        return bool(templates) and all(Path(t).is_absolute() for t in templates)


class TaskSpec(BaseModel):
    """One catalog entry. See ``catalog.yaml`` for the meaning of each field."""

    model_config = ConfigDict(extra="forbid")

    name: str
    aliases: list[str] = Field(default_factory=list)
    format: str
    role: Literal["intermediate", "target", "both"]
    languages: list[str]
    train_languages: list[str] = Field(default_factory=lambda: ["en"])
    splits: list[str]
    eval_split: str
    train_task: str | None = None
    metric: str
    primary_metric: str
    label_list: list[str] | None = None
    domain: str | None = None
    benchmarks: dict[str, list[str]] = Field(default_factory=dict)
    hub: HubSource | None = None
    local: LocalSource | None = None
    description: str = ""
    citation: str | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from xstilts.tasks.formats import format_names

        if value not in format_names():
            raise ValueError(f"unknown format '{value}'; valid: {', '.join(format_names())}")
        return value

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        from xstilts.tasks.formats import get_format

        metrics = get_format(self.format).metrics
        if self.metric not in metrics:
            raise ValueError(f"metric '{self.metric}' is not one of format {self.format}'s metrics: {', '.join(metrics)}")
        if self.eval_split not in self.splits:
            raise ValueError(f"eval_split '{self.eval_split}' is not one of splits {self.splits}")
        if len(set(self.languages)) != len(self.languages):
            raise ValueError("languages has duplicates")
        for bench, langs in self.benchmarks.items():
            missing = sorted(set(langs) - set(self.languages))
            if missing:
                raise ValueError(f"benchmarks.{bench} has languages not in languages: {missing}")
        for src_name, src in (("local", self.local), ("hub", self.hub)):
            if src is None:
                continue
            bad = sorted(set(src.paths if src_name == "local" else src.splits) - set(self.splits))  # type: ignore[union-attr]
            if bad:
                raise ValueError(f"{src_name} names splits not in splits: {bad}")
        if self.local is not None:
            _check_local(self.local, self)
        return self

    @model_validator(mode="after")
    def _default_train_languages(self) -> TaskSpec:
        """Unset train_languages: [en], but every language of a task with a train split and no
        English (a user's non-English task trains in its own languages)."""
        unset = "train_languages" not in self.model_fields_set
        if unset and self.has_training_data and "en" not in self.languages:
            self.train_languages = list(self.languages)
        return self

    @property
    def source_languages(self) -> list[str]:
        """The languages a target fine-tunes on unless a spec says otherwise: English when its
        train split has it (zero-shot transfer from English), else every train language."""
        return ["en"] if "en" in self.train_languages else list(self.train_languages)

    @property
    def trainable(self) -> bool:
        """Whether models are trained on the task (its format has a head; retrieval has none
        and is scored by sentence embeddings)."""
        from xstilts.tasks.formats import get_format

        return get_format(self.format).trainable

    @property
    def has_training_data(self) -> bool:
        """Whether the task itself has a train split."""
        return "train" in self.splits

    def benchmark_languages(self, benchmark: str) -> list[str]:
        """The official language list of ``benchmark`` ("xtreme" | "xtreme-r"); [] if not part of it."""
        return list(self.benchmarks.get(benchmark, []))


def _check_local(local: LocalSource, spec: TaskSpec) -> None:
    """The reader reads the task's format; lang_codes are languages of the task."""
    from xstilts.tasks.readers import reader_format

    fmt = reader_format(local.reader)
    if fmt is not None and fmt != spec.format:
        raise ValueError(f"local.reader '{local.reader}' reads the {fmt} format, but the task's format is {spec.format}")
    unknown = sorted(set(local.lang_codes) - set(spec.languages))
    if unknown:
        raise ValueError(f"local.lang_codes has languages not in languages: {unknown}")


def _canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _read_entries(file: Path) -> dict[str, Any]:
    raw = read_yaml(file, what="task catalog")
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict):
        raise ConfigError("expected a mapping with a 'tasks' mapping at the top", file=file)
    for name, entry in raw["tasks"].items():
        if not isinstance(entry, dict):
            raise ConfigError("expected a mapping", key=f"tasks.{name}", file=file)
    return raw["tasks"]


def _absolute_paths(entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A user entry with its relative ``local.paths`` made relative to ``folder`` (the catalog's)."""
    local = entry.get("local")
    if not isinstance(local, dict) or not isinstance(local.get("paths"), dict):
        return entry
    base = str(folder).replace("{", "{{").replace("}", "}}")  # the folder is not a template

    def absolute(template: Any) -> Any:
        if not isinstance(template, str):
            return template
        path = Path(template).expanduser()
        return str(path) if path.is_absolute() else f"{base}/{template}"

    paths = {split: [absolute(t) for t in v] if isinstance(v, list) else absolute(v)
             for split, v in local["paths"].items()}
    return {**entry, "local": {**local, "paths": paths}}


def load_catalog(path: str | Path | None = None, *, user: bool | None = None) -> dict[str, TaskSpec]:
    """Parse and validate a catalog file (default: the packaged ``catalog.yaml``).

    A *user* catalog (any file but the packaged one, unless ``user`` says otherwise) has its
    relative ``local.paths`` resolved against the catalog file's folder, and its languages
    looked up in the language table: an unknown code is accepted with a warning.
    Raises :class:`ConfigError` naming the file, the task and the key when an entry is invalid.
    """
    file = Path(path).expanduser() if path is not None else CATALOG_FILE
    is_user = user if user is not None else file.resolve() != CATALOG_FILE.resolve()
    folder = file.resolve().parent
    specs: dict[str, TaskSpec] = {}
    for name, entry in _read_entries(file).items():
        if is_user:
            entry = _absolute_paths(entry, folder)
        specs[name] = validate_model(TaskSpec, {**entry, "name": name}, file=file, prefix=f"tasks.{name}")
        if is_user:
            _warn_unknown_languages(specs[name], file)
    return specs


def _warn_unknown_languages(spec: TaskSpec, file: Path) -> None:
    unknown = [code for code in spec.languages if find_language(code) is None]
    if unknown:
        logger.warning("%s: task '%s': language(s) %s not in the language table; accepted without metadata "
                       "(family, script, resource class)", file, spec.name, ", ".join(unknown))


#: the user catalog file each task came from (absent: the packaged catalog or register_task)
_ORIGIN: dict[str, Path] = {}
#: the user catalog files loaded into the catalog of this process
_LOADED: list[Path] = []


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, TaskSpec]:
    catalog = load_catalog()
    _ORIGIN.clear()
    _LOADED.clear()
    for file in _env_catalogs():
        if not file.is_file():
            raise ConfigError(f"task catalog not found: {file} (listed in ${CATALOG_ENV})", key=CATALOG_ENV)
        _add_user_catalog(catalog, file)
    return catalog


def _env_catalogs() -> list[Path]:
    value = os.environ.get(CATALOG_ENV, "")
    return [Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p.strip()]


def _add_user_catalog(catalog: dict[str, TaskSpec], file: Path) -> list[TaskSpec]:
    """Validate ``file`` and add/override its tasks in ``catalog`` (overrides are logged)."""
    if not file.is_file():
        raise ConfigError(f"task catalog not found: {file}", file=file)
    added = load_catalog(file, user=True)
    index = {_canonical(a): n for n, s in catalog.items() for a in (n, *s.aliases)}
    for name, spec in added.items():
        taken = [a for a in spec.aliases if index.get(_canonical(a), name) != name]
        if taken:
            raise ConfigError(f"alias(es) {taken} already name other tasks", key=f"tasks.{name}.aliases", file=file)
        if name in catalog:
            logger.info("task '%s' from %s overrides the one from %s", name, file, _ORIGIN.get(name, "the package"))
        catalog[name] = spec
        _ORIGIN[name] = file
    _LOADED.append(file)
    _alias_index.cache_clear()
    return list(added.values())


def use_catalogs(files: Iterable[str | Path] | None) -> list[TaskSpec]:
    """Load user catalog ``files`` into this process's catalog (adding or overriding tasks) and
    add them to ``XSTILTS_CATALOG``, so worker processes started afterwards see them too.

    Files already in use are skipped. Returns the tasks added. ConfigError (naming the file,
    the task and the key) for a missing or invalid catalog.
    """
    catalog = _catalog()
    added: list[TaskSpec] = []
    for f in files or ():
        file = Path(f).expanduser().resolve()
        if file in _LOADED:
            continue
        added.extend(_add_user_catalog(catalog, file))
        if file not in _env_catalogs():
            os.environ[CATALOG_ENV] = os.pathsep.join(p for p in (os.environ.get(CATALOG_ENV, ""), str(file)) if p)
    return added


def user_catalogs() -> list[Path]:
    """The user catalog files loaded in this process (``XSTILTS_CATALOG`` and :func:`use_catalogs`)."""
    _catalog()
    return list(_LOADED)


def task_origin(name: str | TaskSpec) -> Path | None:
    """The user catalog file that defined task ``name``; None for a packaged or registered task."""
    spec = get_task(name)
    origin = _ORIGIN.get(spec.name)
    return origin if origin is not None and _catalog().get(spec.name) is spec else None


def reset_catalog() -> None:
    """Forget registered and user tasks: the next look-up reloads the packaged catalog and the
    files of ``XSTILTS_CATALOG`` (tests call this after changing the variable)."""
    _catalog.cache_clear()
    _alias_index.cache_clear()
    _ORIGIN.clear()
    _LOADED.clear()


@functools.lru_cache(maxsize=1)
def _alias_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for name, spec in _catalog().items():
        index[_canonical(name)] = name
        for alias in spec.aliases:
            index[_canonical(alias)] = name
    return index


def register_task(spec: TaskSpec | dict[str, Any], *, replace: bool = False) -> TaskSpec:
    """Add a task to the catalog (a :class:`TaskSpec`, or the keys of a catalog entry with ``name``).

    Afterwards ``get_task``, training and evaluation find it like a ``catalog.yaml`` entry.
    ConfigError when the entry is invalid or its name/aliases are taken (unless ``replace``).
    Local paths of a registered entry are relative to the data dir unless absolute. Tasks
    registered in a process are not seen by worker processes: use a catalog file for runs.
    """
    if not isinstance(spec, TaskSpec):
        spec = validate_model(TaskSpec, spec, prefix=f"tasks.{spec.get('name', '?')}")
    catalog = _catalog()
    taken = [n for n in (spec.name, *spec.aliases) if _canonical(n) in _alias_index()
             and _alias_index()[_canonical(n)] != spec.name]
    if (spec.name in catalog and not replace) or taken:
        raise ConfigError(f"task name(s) {taken or [spec.name]} already in the catalog", key=f"tasks.{spec.name}")
    catalog[spec.name] = spec
    _ORIGIN.pop(spec.name, None)
    _alias_index.cache_clear()
    return spec


def unregister_task(name: str) -> None:
    """Remove a task added by :func:`register_task` (tests clean up with this)."""
    del _catalog()[get_task(name).name]
    _alias_index.cache_clear()


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The catalog entry called ``name`` (case-, ``-``/``_``-insensitive; aliases accepted).

    Raises :class:`UnknownNameError` listing the valid task names.
    """
    if isinstance(name, TaskSpec):
        return name
    key = _alias_index().get(_canonical(str(name)))
    if key is None:
        raise UnknownNameError("task", str(name), list(_catalog()))
    return _catalog()[key]


def task_labels(name: str) -> list[str] | None:
    """The label list of the catalog task ``name``; None when the task is unknown or has none
    (e.g. for the head of a model saved before heads stored their label names)."""
    try:
        labels = get_task(name).label_list
    except UnknownNameError:
        return None
    return list(labels) if labels is not None else None


def list_tasks(role: str | None = None) -> list[TaskSpec]:
    """All tasks in catalog order; with ``role`` ("intermediate" | "target"), those usable in it.

    Tasks with role "both" are returned for either role.
    """
    if role is not None and role not in ROLES:
        raise UnknownNameError("role", role, list(ROLES))
    specs = list(_catalog().values())
    if role is None or role == "both":
        return specs if role is None else [s for s in specs if s.role == "both"]
    return [s for s in specs if s.role in (role, "both")]


def check_language(spec: TaskSpec, language: str) -> str:
    """Return ``language`` if ``spec`` has it; else raise :class:`UnknownNameError` listing them."""
    if language in spec.languages:
        return language
    lang = find_language(language)  # accept ISO 639-3 codes and other aliases
    if lang is not None and lang.code in spec.languages:
        return lang.code
    for code, file_code in (spec.local.lang_codes.items() if spec.local else []):
        if file_code == language:
            return code
    raise UnknownNameError(f"language of task '{spec.name}'", language, spec.languages,
                           extra=language_names(spec.languages))


def check_split(spec: TaskSpec, split: str) -> str:
    """Return ``split`` if ``spec`` has it; else raise :class:`UnknownNameError`."""
    if split in spec.splits:
        return split
    raise UnknownNameError(f"split of task '{spec.name}'", split, spec.splits)
