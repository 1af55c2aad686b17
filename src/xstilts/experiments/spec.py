"""The experiment spec: one YAML file declaring models, intermediate setups, targets, seeds
and hyperparameters, as typed models. Read with :func:`read_spec_file`; loaded *and* checked
against the task catalog with :func:`xstilts.experiments.load_spec` (module ``validate``).

Shape (every key optional except ``models``, ``intermediate`` and ``targets``)::

    include: defaults/paper_hparams.yaml   # or a list; deep-merged underneath this file
    models: [{name: e5, name_or_path: e5-small}]     # or a plain string per model
    # a model's own training settings, over the spec's hyperparameters (see Spec.train_overrides):
    #   models: [xlm-roberta-large, {name: mt5-large, name_or_path: google/mt5-large,
    #            hyperparameters: {intermediate: {learning_rate: 1e-4, pooling: mean}, target: {...}}}]
    intermediate:                # setup name -> setup
      baseline: none             # the no-intermediate baseline (must be called "baseline")
      anli: anli                 # a single task
      nli: {tasks: [anli, mnli], sampler: {kind: temperature, temperature: 2}}   # multi-task
      anli_cosmos: {chain: [anli, cosmosqa]}      # sequential; elements may name other setups
      anli_mlm: {task: anli, mlm: {files: [wiki.de.txt], probability: 0.2}}
      anli_de: {task: anli, extra_files: [anli.de.jsonl], extra_ratio: 0.5}
      cosmos: {task: cosmosqa, split: dev, dev_holdout: 300}   # dev split: 300 held out for dev eval
      pos_non_en: {task: udpos, languages: [ar, fi, tr], max_examples: 200}   # 200 per language, no English
      pos_mixed: {task: udpos, languages: [en, ar, fi, tr], max_examples: {en: 300, default: 100}}   # one head
    targets: [panx, {task: tatoeba, languages: all, split: test},
              {task: xnli, eval_splits: [dev, test]},      # one eval stage per split
              {task: tydiqa, eval: {max_length: 256}}]     # eval: per-target eval options
    seeds: [0, 1]
    hyperparameters:
      intermediate: {learning_rate: 1e-5, ...}   # any TrainConfig setting the plan does not set
      target: {...}
      eval: {batch_size: 64, retrieval: {layer: 7, pooling: mean}}
      tasks: {squad_v2: {intermediate: {max_length: 384}}, tydiqa: {target: {num_epochs: 5}}}
    max_examples: {intermediate: 2000, target: {default: 1000, panx: 500}, eval: 200}
                                    # per language; an intermediate entry's own max_examples wins
    data_dir: ../shared/data        # relative paths are relative to the spec file
    output_dir: runs/quickstart
    catalogs: [my_tasks.yaml]       # user task catalogs (xstilts.tasks.catalog.use_catalogs)

Hyperparameters are :class:`TrainHyper` (every :class:`~xstilts.train.config.TrainConfig`
setting, optional, with TrainConfig's own types and bounds) and :class:`EvalOptions`, so a
bad value is reported where it is written. An eval stage evaluates with the featurisation of
the target stage it evaluates (``max_length``, ``doc_stride``, ``max_query_length``) unless
``eval`` options set them: per target, per task (``hyperparameters.tasks.<t>.eval``) or for all.

An intermediate task entry (``task`` / each element of ``tasks``) takes ``languages`` (default
``[en]``; with ``split: train`` only the catalog task's ``train_languages``, e.g. udpos or panx
in non-English languages), ``split``, ``extra_files`` / ``extra_ratio``, ``dev_holdout`` and
``max_examples`` (examples per language, each language drawn with the stage's seed; one
number, or ``{language: N, default: M}``; it overrides ``max_examples.intermediate``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xstilts.config_io import Overrides, partial_model, read_yaml_mapping
from xstilts.errors import ConfigError, XStiltsError
from xstilts.evaluate import RetrievalSettings
from xstilts.train.config import MLMConfig, SamplerConfig, TrainConfig

logger = logging.getLogger(__name__)

BASELINE = "baseline"

#: TrainConfig keys a spec sets itself (not allowed under hyperparameters.intermediate/target)
PLANNED_TRAIN_KEYS = frozenset({"model", "init_heads", "tasks", "sampler", "mlm", "seed", "data_dir",
                                "carried_dev_tasks"})
#: eval options that set how a target's examples are featurised (inherited from its training)
FEATURIZE_KEYS = ("max_length", "doc_stride", "max_query_length")
#: internal levels of the normalised spec, left out of the keys shown in errors
HIDDEN_KEYS = frozenset({"step", "file"})

PositiveInt = Annotated[int, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A model to run the grid with: a short ``name`` for tables, what to load, and the
    hyperparameters of its own training stages (:class:`ModelHyper`, applied on top of the
    spec's: see :meth:`Spec.train_overrides`)."""

    name: str
    name_or_path: str
    hyperparameters: ModelHyper = Field(default_factory=lambda: ModelHyper())

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

    #: training on the English dev split: examples held out of it for dev evaluation (train's
    #: TaskMixture.dev_holdout; unset: its default)
    dev_holdout: PositiveInt | None = None
    #: examples per language of this entry, each language subsampled with the stage's seed: one
    #: cap, or ``{language: N, default: M}``; overrides the spec's ``max_examples.intermediate``
    max_examples: PositiveInt | dict[str, PositiveInt] | None = None
    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"task": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _ratio_needs_files(self) -> TaskEntry:
        if self.extra_files and self.extra_ratio <= 0:
            raise ValueError("extra_files need extra_ratio > 0 (extra examples per catalog example)")
        return self


class StepSpec(_Strict):
    """One training step of a setup: one task or several (multi-task), with optional MLM."""

    tasks: list[TaskEntry] = Field(min_length=1)
    sampler: SamplerConfig | None = None
    mlm: MLMConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"tasks": [{"task": v}]}
        if isinstance(v, dict) and "task" in v:
            v = dict(v)
            entry = {k: v.pop(k) for k in ("task", "languages", "split", "extra_files", "extra_ratio", "dev_holdout",
                                           "max_examples") if k in v}
            if "tasks" in v:
                raise ValueError("give either 'task' or 'tasks', not both")
            v["tasks"] = [entry]
        return v

    @model_validator(mode="after")
    def _distinct_tasks(self) -> StepSpec:
        names = [t.task for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task(s) listed twice in one step: {', '.join(dup)}")
        return self


class SetupSpec(_Strict):
    """An intermediate setup: none (baseline), one step, or a sequential ``chain`` of steps.

    Chain elements are task names, step mappings, or names of other setups. After the spec
    is checked against the catalog, a string element always names another setup.
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


class EvalOptions(_Strict):
    """Zero-shot evaluation options; every one optional (unset: inherited, then the default).

    ``max_length`` / ``doc_stride`` / ``max_query_length`` default to the values the target
    was trained with; ``retrieval`` (retrieval targets) is evaluate's ``RetrievalSettings``.
    """

    batch_size: PositiveInt | None = None
    precision: Literal["fp32", "bf16", "fp16"] | None = None  # bf16/fp16 autocast (fp16: CUDA only)
    retrieval: RetrievalSettings | None = None
    max_length: Annotated[int, Field(gt=8)] | None = None
    doc_stride: PositiveInt | None = None
    max_query_length: PositiveInt | None = None
    save_inputs: bool | None = None  # predictions rows also hold each example's input text

    @field_validator("retrieval")
    @classmethod
    def _valid_retrieval(cls, v: RetrievalSettings | None) -> RetrievalSettings | None:
        if v is not None:
            try:
                v.validate()
            except XStiltsError as exc:
                raise ValueError(str(exc)) from None
        return v

    def given(self) -> dict[str, Any]:
        """The options set explicitly."""
        return {k: getattr(self, k) for k in self.model_fields_set}

    def featurize(self) -> dict[str, int]:
        """The featurisation options set explicitly."""
        return {k: v for k, v in self.given().items() if k in FEATURIZE_KEYS and v is not None}


class TargetSpec(_Strict):
    """A target task, the languages evaluated zero-shot, the split(s), and its eval options.

    ``eval_splits`` lists every split the target is evaluated on (one eval stage each, e.g.
    ``[dev, test]``: the grid on dev, headline numbers on test); ``split: X`` is short for
    ``eval_splits: [X]``; neither: the catalog's ``eval_split`` (:meth:`splits`).
    """

    task: str
    languages: str | list[str] = "all"   # "all" | "xtreme" | "xtreme-r" | explicit list
    split: str | None = None
    eval_splits: list[str] | None = Field(default=None, min_length=1)
    train: TargetTrain | None = None
    eval: EvalOptions = Field(default_factory=EvalOptions)

    @model_validator(mode="after")
    def _one_way_to_name_splits(self) -> TargetSpec:
        if self.split is not None and self.eval_splits is not None:
            raise ValueError("give either 'split' or 'eval_splits', not both")
        if self.eval_splits is not None and len(set(self.eval_splits)) != len(self.eval_splits):
            raise ValueError(f"eval_splits lists a split twice: {self.eval_splits}")
        return self

    def splits(self, catalog_eval_split: str) -> list[str]:
        """The splits this target is evaluated on (the catalog's ``eval_split`` unless set)."""
        if self.eval_splits is not None:
            return list(self.eval_splits)
        return [self.split or catalog_eval_split]

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


class _TrainOverrides(Overrides):
    """Some TrainConfig settings for one kind of training stage (see :data:`TrainHyper`)."""

    @model_validator(mode="before")
    @classmethod
    def _not_planned(cls, v: Any) -> Any:
        if isinstance(v, dict):
            planned = sorted(set(v) & PLANNED_TRAIN_KEYS)
            if planned:
                raise ValueError(f"'{planned[0]}' is set by the plan (from the spec's models, setups, targets and "
                                 "seeds), not a hyperparameter")
        return v


#: Optional TrainConfig settings (its types and bounds) for intermediate or target stages.
TrainHyper = partial_model(TrainConfig, "TrainHyper", exclude=PLANNED_TRAIN_KEYS, base=_TrainOverrides)


class TaskHyper(_Strict):
    """Per-task overrides of the stage-kind hyperparameters."""

    intermediate: TrainHyper = Field(default_factory=TrainHyper)  # type: ignore[valid-type]
    target: TrainHyper = Field(default_factory=TrainHyper)  # type: ignore[valid-type]
    eval: EvalOptions = Field(default_factory=EvalOptions)


class ModelHyper(_Strict):
    """One model's own training hyperparameters (``models[i].hyperparameters``): what that
    model needs whatever the task (e.g. mT5: ``pooling: mean``, a T5-scale learning rate)."""

    intermediate: TrainHyper = Field(default_factory=TrainHyper)  # type: ignore[valid-type]
    target: TrainHyper = Field(default_factory=TrainHyper)  # type: ignore[valid-type]


ModelSpec.model_rebuild()


class Hyperparameters(_Strict):
    intermediate: TrainHyper = Field(default_factory=TrainHyper)  # type: ignore[valid-type]
    target: TrainHyper = Field(default_factory=TrainHyper)  # type: ignore[valid-type]
    eval: EvalOptions = Field(default_factory=EvalOptions)
    tasks: dict[str, TaskHyper] = Field(default_factory=dict)


class MaxExamples(_Strict):
    """Subsampling per stage kind: an int for every task, or ``{default: N, task: M}``."""

    intermediate: PositiveInt | dict[str, PositiveInt | None] | None = None
    target: PositiveInt | dict[str, PositiveInt | None] | None = None
    eval: PositiveInt | dict[str, PositiveInt | None] | None = None

    def for_task(self, kind: str, task: str) -> int | None:
        """The cap for ``task`` in stage kind ``kind`` (None: no cap)."""
        value = getattr(self, kind)
        if isinstance(value, dict):
            return value.get(task, value.get("default"))
        return value


class Spec(_Strict):
    """A typed experiment spec. ``file`` is where it was loaded from (for messages)."""

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
    catalogs: list[Path] = Field(default_factory=list)
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

    def train_overrides(self, kind: str, tasks: list[str], model: ModelSpec | None = None) -> dict[str, Any]:
        """The hyperparameters of a ``kind`` stage of ``model`` training ``tasks``, lowest to
        highest precedence: the kind's settings (``hyperparameters.<kind>``), each task's own
        (``hyperparameters.tasks.<task>.<kind>``), then the model's own
        (``models[i].hyperparameters.<kind>``). A model's setting wins because it says what that
        model needs (mT5: mean pooling, a T5-scale learning rate) whatever the task; task
        settings it does not set still apply to it."""
        hp = self.hyperparameters
        out = dict(getattr(hp, kind).overrides())
        for task in tasks:
            if task in hp.tasks:
                out.update(getattr(hp.tasks[task], kind).overrides())
        if model is not None:
            out.update(getattr(model.hyperparameters, kind).overrides())
        return out

    def eval_options(self, target: TargetSpec) -> dict[str, Any]:
        """The eval options given for ``target``: ``hyperparameters.eval``, then the task's
        ``hyperparameters.tasks.<task>.eval``, then the target's own ``eval`` on top."""
        hp = self.hyperparameters
        out = hp.eval.given()
        if target.task in hp.tasks:
            out.update(hp.tasks[target.task].eval.given())
        out.update(target.eval.given())
        return out


# --------------------------------------------------------------------------- structure


def is_setup_ref(spec: Spec, setup_name: str, element: str | StepSpec) -> bool:
    """Whether chain ``element`` of setup ``setup_name`` names another setup (else a task).
    A setup's chain may name a task called like the setup itself (``anli: {chain: [anli, x]}``)."""
    return isinstance(element, str) and element in spec.intermediate and element != setup_name


def expand_setup(spec: Spec, name: str) -> list[StepSpec]:
    """The steps of setup ``name`` in training order (chains expanded, setup references resolved).

    String chain elements that are not setup references must already be steps (the catalog
    check turns task names into steps). Raises ConfigError for a cycle (a chain that reaches
    itself), a task trained twice, or a reference to the baseline.
    """
    steps = _walk(spec, name, ())
    seen: dict[str, str] = {}
    for step, key in steps:
        for entry in step.tasks:
            if entry.task in seen:
                raise ConfigError(f"sequential chain has a cycle: task '{entry.task}' is trained twice "
                                  f"(first at {seen[entry.task]})", key=key, file=spec.file)
            seen[entry.task] = key
    return [s for s, _ in steps]


def _walk(spec: Spec, setup_name: str, stack: tuple[str, ...]) -> list[tuple[StepSpec, str]]:
    setup = spec.intermediate[setup_name]
    key = f"intermediate.{setup_name}"
    if setup.kind == "step" and setup.step is not None:
        return [(setup.step, key)]
    out: list[tuple[StepSpec, str]] = []
    for i, element in enumerate(setup.chain):
        ekey = f"{key}.chain[{i}]"
        if isinstance(element, StepSpec):
            out.append((element, ekey))
            continue
        if not is_setup_ref(spec, setup_name, element):
            out.append((StepSpec.model_validate(element), ekey))  # a task name not yet checked
            continue
        if element in stack:
            raise ConfigError(f"sequential chain has a cycle: {' -> '.join((*stack, setup_name, element))}",
                              key=ekey, file=spec.file)
        if spec.intermediate[element].kind == "none":
            raise ConfigError("a chain cannot contain the baseline (it has no training)", key=ekey, file=spec.file)
        out.extend(_walk(spec, element, (*stack, setup_name)))
    return out


# --------------------------------------------------------------------------- reading


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge recursively; anything else in ``over`` replaces ``base``."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _absolutise(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the path-valued keys of one file relative to that file's folder."""
    for key in ("data_dir", "output_dir"):
        if isinstance(data.get(key), str):
            p = Path(data[key]).expanduser()
            data[key] = str(p if p.is_absolute() else (base / p))
    if isinstance(data.get("catalogs"), str):
        data["catalogs"] = [data["catalogs"]]
    if isinstance(data.get("catalogs"), list):
        data["catalogs"] = [str(base / Path(c).expanduser()) if isinstance(c, str) else c for c in data["catalogs"]]
    return data


def _load_raw(path: Path, stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in stack:
        cycle = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"include cycle: {cycle}", key="include", file=stack[-1])
    data = _absolutise(read_yaml_mapping(path, what="spec file"), path.parent)
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


def read_spec_file(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw mapping of a spec file: ``include:`` files deep-merged underneath it,
    ``overrides`` on top, relative ``data_dir``/``output_dir`` resolved against the file that
    sets them (``output_dir`` defaults to ``runs/<spec name>`` beside the spec)."""
    path = Path(path).expanduser()
    data = _load_raw(path)
    if overrides:
        data = _deep_merge(data, overrides)
    data.setdefault("output_dir", str(path.resolve().parent / "runs" / path.stem))
    return data
