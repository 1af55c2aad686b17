"""The task catalog: tasks are data (``catalog.yaml``), validated into :class:`TaskSpec`.

A task names its format, role, languages, splits, metric, label set, where to get it on
the Hugging Face hub (:class:`HubSource`) and how to read it from a local data directory
(:class:`LocalSource`). Adding a task or a language is an edit of ``catalog.yaml``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xstilts.config_io import read_yaml, validate_model
from xstilts.errors import ConfigError, UnknownNameError
from xstilts.languages import find_language

logger = logging.getLogger(__name__)

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")

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

    def resolve(self, data_dir: Path, language: str, split: str) -> list[Path]:
        """Concrete file paths of (language, split) under ``data_dir``."""
        lang3 = self.file_code(language)
        return [data_dir / t.format(lang=language, lang3=lang3) for t in self.templates(split)]


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
            from xstilts.tasks.readers import READERS

            if self.local.reader not in READERS:
                raise ValueError(f"local.reader '{self.local.reader}' is not a reader; valid: {sorted(READERS)}")
            unknown = sorted(set(self.local.lang_codes) - set(self.languages))
            if unknown:
                raise ValueError(f"local.lang_codes has languages not in languages: {unknown}")
        return self

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


def _canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def load_catalog(path: str | Path | None = None) -> dict[str, TaskSpec]:
    """Parse and validate a catalog file (default: the packaged ``catalog.yaml``).

    Raises :class:`ConfigError` naming the task and key when an entry is invalid.
    """
    file = Path(path) if path is not None else CATALOG_FILE
    raw = read_yaml(file, what="task catalog")
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict):
        raise ConfigError("expected a mapping with a 'tasks' mapping at the top", file=file)
    specs: dict[str, TaskSpec] = {}
    for name, entry in raw["tasks"].items():
        if not isinstance(entry, dict):
            raise ConfigError("expected a mapping", key=f"tasks.{name}", file=file)
        specs[name] = validate_model(TaskSpec, {**entry, "name": name}, file=file, prefix=f"tasks.{name}")
    return specs


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, TaskSpec]:
    return load_catalog()


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
    """
    if not isinstance(spec, TaskSpec):
        spec = validate_model(TaskSpec, spec, prefix=f"tasks.{spec.get('name', '?')}")
    catalog = _catalog()
    taken = [n for n in (spec.name, *spec.aliases) if _canonical(n) in _alias_index()
             and _alias_index()[_canonical(n)] != spec.name]
    if (spec.name in catalog and not replace) or taken:
        raise ConfigError(f"task name(s) {taken or [spec.name]} already in the catalog", key=f"tasks.{spec.name}")
    catalog[spec.name] = spec
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
    raise UnknownNameError(f"language of task '{spec.name}'", language, spec.languages)


def check_split(spec: TaskSpec, split: str) -> str:
    """Return ``split`` if ``spec`` has it; else raise :class:`UnknownNameError`."""
    if split in spec.splits:
        return split
    raise UnknownNameError(f"split of task '{spec.name}'", split, spec.splits)
