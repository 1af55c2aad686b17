"""The experiment spec: one YAML file declaring models, intermediate setups, targets, seeds
and hyperparameters. Loaded with :func:`load_spec`, validated before anything runs.

Shape (every key optional except ``models``, ``intermediate`` and ``targets``)::

    include: defaults/paper_hparams.yaml   # or a list; deep-merged underneath this file
    models: [{name: e5, name_or_path: e5-small}]     # or a plain string per model
    intermediate:                # setup name -> setup
      baseline: none             # the no-intermediate baseline (must be called "baseline")
      anli: anli                 # a single task
      nli: {tasks: [anli, mnli], sampler: {kind: temperature, temperature: 2}}   # multi-task
      anli_cosmos: {chain: [anli, cosmosqa]}      # sequential; elements may name other setups
      anli_mlm: {task: anli, mlm: {files: [wiki.de.txt], probability: 0.2}}
      anli_de: {task: anli, extra_files: [anli.de.jsonl], extra_ratio: 0.5}
    targets: [panx, {task: tatoeba, languages: all, split: test}]
    seeds: [0, 1]
    hyperparameters:
      intermediate: {learning_rate: 1e-5, ...}   # any TrainConfig setting
      target: {...}
      eval: {batch_size: 64, retrieval: {layer: 7, pooling: mean}}
      tasks: {squad_v2: {intermediate: {max_length: 384}}, tydiqa: {target: {num_epochs: 5}}}
    max_examples: {intermediate: 2000, target: {default: 1000, panx: 500}, eval: 200}
    data_dir: ../shared/data        # relative paths are relative to the spec file
    output_dir: runs/quickstart

Errors are :class:`~xstilts.errors.ConfigError` naming the file, the dotted key and the
allowed values; unknown tasks raise :class:`~xstilts.errors.UnknownNameError` wrapped into a
ConfigError that lists the valid names.
"""

from __future__ import annotations

import copy
import logging
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xstilts.errors import ConfigError, XStiltsError

logger = logging.getLogger(__name__)

BASELINE = "baseline"

#: TrainConfig keys a spec sets itself (not allowed under hyperparameters.intermediate/target)
_PLANNED_TRAIN_KEYS = frozenset({"model", "init_heads", "tasks", "sampler", "mlm", "seed", "data_dir"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A model to run the grid with: a short ``name`` for tables and what to load."""

    name: str
    name_or_path: str

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        if isinstance(v, str):
            short = Path(v).name if ("/" in v or Path(v).is_absolute()) else v
            return {"name": short, "name_or_path": v}
        return v


class TaskEntry(_Strict):
    """One task trained in a step, and the data mixed into it (maps to train's TaskMixture)."""

    task: str
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    split: str = "train"
    extra_files: list[str] = Field(default_factory=list)
    extra_ratio: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"task": v} if isinstance(v, str) else v


class StepSpec(_Strict):
    """One training step of a setup: one task or several (multi-task), with optional MLM."""

    tasks: list[TaskEntry] = Field(min_length=1)
    sampler: dict[str, Any] | None = None
    mlm: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"tasks": [{"task": v}]}
        if isinstance(v, dict) and "task" in v:
            v = dict(v)
            entry = {k: v.pop(k) for k in ("task", "languages", "split", "extra_files", "extra_ratio") if k in v}
            if "tasks" in v:
                raise ValueError("give either 'task' or 'tasks', not both")
            v["tasks"] = [entry]
        return v


class SetupSpec(_Strict):
    """An intermediate setup: none (baseline), one step, or a sequential ``chain`` of steps.

    Chain elements are task names, step mappings, or names of other setups (expanded).
    """

    kind: Literal["none", "step", "chain"]
    step: StepSpec | None = None
    chain: list[str | StepSpec] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", "")):
            return {"kind": "none"}
        if isinstance(v, str):
            return {"kind": "step", "step": v}
        if isinstance(v, dict) and "chain" in v:
            other = sorted(set(v) - {"chain"})
            if other:
                raise ValueError(f"a chain setup takes only 'chain' (put {other} on its steps)")
            chain = v["chain"]
            if not isinstance(chain, list) or not chain:
                raise ValueError("'chain' must be a non-empty list of tasks, steps or setup names")
            return {"kind": "chain", "chain": chain}
        if isinstance(v, dict) and "kind" not in v:
            return {"kind": "step", "step": v}
        return v


class TargetTrain(_Strict):
    """Where a target's English fine-tuning data comes from (default: the catalog's)."""

    task: str | None = None
    languages: list[str] | None = None
    split: str = "train"


class TargetSpec(_Strict):
    """A target task, the languages evaluated zero-shot and the split."""

    task: str
    languages: str | list[str] = "all"   # "all" | "xtreme" | "xtreme-r" | explicit list
    split: str | None = None
    train: TargetTrain | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"task": v} if isinstance(v, str) else v

    @field_validator("languages")
    @classmethod
    def _keyword(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in ("all", "xtreme", "xtreme-r"):
            raise ValueError(f"languages must be a list or one of 'all', 'xtreme', 'xtreme-r' (got {v!r})")
        return v


class TaskHyper(_Strict):
    """Per-task overrides of the stage-kind hyperparameters."""

    intermediate: dict[str, Any] = Field(default_factory=dict)
    target: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)


class EvalHyper(_Strict):
    """Zero-shot evaluation settings (``retrieval`` is passed to evaluate's RetrievalSettings)."""

    batch_size: int = Field(default=64, gt=0)
    retrieval: dict[str, Any] | None = None
    # bf16/fp16 autocast for inference (fp16: CUDA only); part of an eval stage's id unless fp32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


class Hyperparameters(_Strict):
    intermediate: dict[str, Any] = Field(default_factory=dict)
    target: dict[str, Any] = Field(default_factory=dict)
    eval: EvalHyper = Field(default_factory=EvalHyper)
    tasks: dict[str, TaskHyper] = Field(default_factory=dict)


class MaxExamples(_Strict):
    """Subsampling per stage kind: an int for every task, or ``{default: N, task: M}``."""

    intermediate: int | dict[str, int | None] | None = None
    target: int | dict[str, int | None] | None = None
    eval: int | dict[str, int | None] | None = None

    def for_task(self, kind: str, task: str) -> int | None:
        """The cap for ``task`` in stage kind ``kind`` (None: no cap)."""
        value = getattr(self, kind)
        if isinstance(value, dict):
            return value.get(task, value.get("default"))
        return value


class Spec(_Strict):
    """A validated experiment spec. ``file`` is where it was loaded from (for messages)."""

    name: str | None = None
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    intermediate: dict[str, SetupSpec] = Field(min_length=1)
    targets: list[TargetSpec] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    max_examples: MaxExamples = Field(default_factory=MaxExamples)
    data_dir: Path | None = None
    output_dir: Path = Path("runs/default")
    file: Path | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _models_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, dict)) else v

    @field_validator("targets", mode="before")
    @classmethod
    def _targets_list(cls, v: Any) -> Any:
        if isinstance(v, dict):  # mapping form: {panx: {languages: [...]}, tatoeba: null}
            return [{"task": k, **(val or {})} for k, val in v.items()]
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) else v

    def setup_names(self) -> list[str]:
        return list(self.intermediate)


# --------------------------------------------------------------------------- loading


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge recursively; anything else in ``over`` replaces ``base``."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("spec file not found", file=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", file=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", file=path)
    return data


def _absolutise(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the path-valued keys of one file relative to that file's folder."""
    for key in ("data_dir", "output_dir"):
        if isinstance(data.get(key), str):
            p = Path(data[key]).expanduser()
            data[key] = str(p if p.is_absolute() else (base / p))
    return data


def _load_raw(path: Path, stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in stack:
        cycle = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"include cycle: {cycle}", key="include", file=stack[-1])
    data = _absolutise(_read_yaml(path), path.parent)
    includes = data.pop("include", None)
    if includes is None:
        return data
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError("expected a file path or a list of file paths", key="include", file=path)
    merged: dict[str, Any] = {}
    for inc in includes:
        inc_path = Path(inc).expanduser()
        inc_path = inc_path if inc_path.is_absolute() else path.parent / inc_path
        if not inc_path.is_file():
            raise ConfigError(f"included file not found: {inc_path}", key="include", file=path)
        merged = _deep_merge(merged, _load_raw(inc_path, (*stack, path)))
    return _deep_merge(merged, data)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str] | None:
    """The keys allowed at the mapping ``loc`` points into (None when not a model)."""
    cls: Any = Spec
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            field = cls.model_fields.get(str(part))
            if field is None:
                continue  # dict key (setup/task name) or a union tag
            cls = _model_in(field.annotation)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return [k for k in cls.model_fields if k not in ("file", "kind", "step")]
    return None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _spec_error(exc: ValidationError, file: Path | None) -> ConfigError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p[:1].isupper() or p.startswith("function-"))))
    # drop internal normalisation levels (setup 'step', step 'tasks' wrapper) from the shown key
    key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[") or "<root>"
    key = key.replace(".step.", ".").replace(".step", "")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        msg = "unknown key" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and err["type"] not in ("value_error",):
        msg += f" (got {err['input']!r})"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (+{more} more problem{'s' if more > 1 else ''})"
    return ConfigError(msg, key=key, file=file)


def parse_spec(data: dict[str, Any], file: str | Path | None = None, *, validate: bool = True) -> Spec:
    """Validate a raw mapping into a :class:`Spec` (and check it against the task catalog)."""
    file = Path(file) if file is not None else None
    data = dict(data)
    data.pop("file", None)
    try:
        spec = Spec.model_validate({**data, "file": file})
    except ValidationError as exc:
        raise _spec_error(exc, file) from None
    if validate:
        from xstilts.experiments.validate import validate_spec

        validate_spec(spec)
    return spec


def load_spec(path: str | Path, *, overrides: dict[str, Any] | None = None, validate: bool = True) -> Spec:
    """Load a spec file (following ``include:``), deep-merge ``overrides`` on top, validate it.

    Relative ``data_dir``/``output_dir`` are resolved against the file that sets them.
    Raises :class:`ConfigError` naming the file, key and allowed values.
    """
    path = Path(path).expanduser()
    data = _load_raw(path)
    if overrides:
        data = _deep_merge(data, overrides)
    data.setdefault("output_dir", str(path.resolve().parent / "runs" / path.stem))
    try:
        return parse_spec(data, path, validate=validate)
    except ConfigError:
        raise
    except XStiltsError as exc:  # e.g. UnknownNameError raised deep in the catalog
        raise ConfigError(str(exc), file=path) from None
