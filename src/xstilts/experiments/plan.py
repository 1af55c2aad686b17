"""Spec -> plan: a DAG of content-hashed stages (intermediate training, target training, eval).

A stage's id is a hash (16 hex digits) of its kind, what decides its result and the ids of its
upstream stages. For a training stage "what decides its result" is its validated
:class:`~xstilts.train.config.TrainConfig`'s own :meth:`~xstilts.train.config.TrainConfig.hash`
(the one definition of which settings change a stage's weights); for an eval stage, its
``zero_shot_eval`` arguments except :data:`EVAL_OPERATIONAL_KEYS`. So an intermediate stage is
trained once and shared by every target (and by every setup whose chain starts with it), the
baseline is one target stage per target and seed, changing a hyperparameter re-runs only the
stages it reaches, and a finished stage is found again by any later run or spec sharing the
output directory.

An eval stage evaluates with the featurisation its target stage was trained with
(``max_length``, ``doc_stride``, ``max_query_length``) unless the spec's eval options set them.

A stage's model input is written ``"stage:<id>"`` in its settings when it comes from an
upstream stage; the runner resolves it to ``OUTPUT_DIR/stages/<id>/model``.
:class:`StageRecord` says what a stage trains or evaluates, typed (for analysis).

Every step of a chain after the first lists the earlier steps' tasks it does not train in
``carried_dev_tasks`` (each with the dev settings of the stage that last trained it and that
stage's model, ``"stage:<id>"``, as its head's source): the stage scores those heads on the
same English dev examples when it ends (forgetting). Not part of the stage id (a measurement).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xstilts.config_io import validate_model
from xstilts.experiments.spec import FEATURIZE_KEYS, ModelSpec, Spec, StepSpec, TargetSpec, TaskEntry, expand_setup
from xstilts.paths import MODEL_DIR, STAGES_DIR
from xstilts.tasks.catalog import TaskSpec, get_task
from xstilts.train.config import CarriedDevTask, TrainConfig

logger = logging.getLogger(__name__)

StageKind = Literal["intermediate", "target", "eval"]
KINDS: tuple[str, ...] = ("intermediate", "target", "eval")
TRAIN_KINDS: tuple[str, ...] = ("intermediate", "target")
STAGE_REF = "stage:"
#: where a stage writes its model, inside its stage directory
MODEL_SUBDIR = MODEL_DIR
#: eval-stage settings that do not change its scores (kept in settings, not hashed)
EVAL_OPERATIONAL_KEYS = frozenset({"batch_size", "data_dir"})
DEFAULT_EVAL_BATCH_SIZE = 64


@dataclass(frozen=True)
class Label:
    """One use of a stage by the spec: which (model, setup, target, seed) cell it serves."""

    model: str
    setup: str
    target: str | None
    seed: int


@dataclass(frozen=True)
class StageRecord:
    """What a stage trains (intermediate/target) or evaluates (eval), typed.

    ``tasks``: catalog task names in the stage's order (eval: the target task);
    ``splits``: the split read for each task (same order); ``languages``: every language
    trained on or evaluated, first-seen order; ``mlm``: an MLM auxiliary is trained too;
    ``input_model``: the model the stage starts from or evaluates, a name or path for
    :func:`~xstilts.models.load_encoder` or ``"stages/<id>/model"`` (relative to the output
    dir) when an upstream stage made it; ``model_dir``: where a training stage writes its
    model, ``"stages/<id>/model"`` relative to the output dir (None for eval stages).
    """

    tasks: tuple[str, ...]
    splits: tuple[str, ...]
    languages: tuple[str, ...]
    mlm: bool
    input_model: str
    model_dir: str | None

    @classmethod
    def from_settings(cls, stage_id: str, kind: str, settings: dict[str, Any]) -> StageRecord:
        """The record of a stage from its id, kind and settings (as the plan and store hold them)."""
        model = str(settings.get("model", ""))
        input_model = relative_model_dir(model[len(STAGE_REF):]) if model.startswith(STAGE_REF) else model
        if kind == "eval":
            return cls(tasks=(settings["task"],), splits=(settings["split"],),
                       languages=tuple(settings.get("languages", ())), mlm=False, input_model=input_model,
                       model_dir=None)
        entries = settings.get("tasks", [])
        languages = dict.fromkeys(lang for e in entries for lang in e.get("languages", ["en"]))
        return cls(tasks=tuple(e["task"] for e in entries), splits=tuple(e.get("split", "train") for e in entries),
                   languages=tuple(languages), mlm=bool(settings.get("mlm")), input_model=input_model,
                   model_dir=relative_model_dir(stage_id))

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class Stage:
    """One unit of work. ``settings`` is JSON: a TrainConfig dump (train stages) or the
    ``zero_shot_eval`` arguments (eval stages); ``depends_on`` lists upstream stage ids."""

    id: str
    kind: str
    settings: dict[str, Any]
    depends_on: tuple[str, ...]
    labels: list[Label] = field(default_factory=list)
    description: str = ""

    @property
    def model(self) -> str:
        return self.labels[0].model

    @property
    def setup(self) -> str:
        return self.labels[0].setup

    @property
    def target(self) -> str | None:
        return self.labels[0].target

    @property
    def seed(self) -> int:
        return self.labels[0].seed

    @property
    def record(self) -> StageRecord:
        """What this stage trains or evaluates (see :class:`StageRecord`)."""
        return StageRecord.from_settings(self.id, self.kind, self.settings)

    def setups(self) -> list[str]:
        return sorted({lab.setup for lab in self.labels})

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "settings": self.settings, "depends_on": list(self.depends_on),
                "labels": [vars(lab) for lab in self.labels], "description": self.description,
                "record": self.record.to_json()}


@dataclass
class Plan:
    """The stages of a spec in dependency order, plus where they run."""

    stages: dict[str, Stage]
    output_dir: Path
    data_dir: Path | None
    spec_file: Path | None = None
    spec_name: str | None = None
    setup_names: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages.values())

    def __len__(self) -> int:
        return len(self.stages)

    def of_kind(self, kind: str) -> list[Stage]:
        return [s for s in self.stages.values() if s.kind == kind]

    def stage_dir(self, stage_id: str) -> Path:
        return stage_dir(self.output_dir, stage_id)

    def depth(self) -> dict[str, int]:
        """Longest path from a root to each stage (0 for stages with no upstream)."""
        out: dict[str, int] = {}
        for s in self.stages.values():  # stages are in topological order
            out[s.id] = 1 + max((out[d] for d in s.depends_on if d in out), default=-1)
        return out

    def levels(self) -> list[list[str]]:
        """Stage ids grouped by depth: every stage of level k depends only on levels < k."""
        depth = self.depth()
        levels: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for sid, d in depth.items():
            levels[d].append(sid)
        return levels

    def downstream(self, stage_id: str) -> set[str]:
        """Every stage that (transitively) depends on ``stage_id``."""
        out: set[str] = set()
        for s in self.stages.values():
            if any(d == stage_id or d in out for d in s.depends_on):
                out.add(s.id)
        return out


def stage_dir(output_dir: Path, stage_id: str) -> Path:
    """Where stage ``stage_id`` writes: ``OUTPUT_DIR/stages/<id>/``."""
    return Path(output_dir) / STAGES_DIR / stage_id


def relative_model_dir(stage_id: str) -> str:
    """A stage's model directory relative to the output dir: ``stages/<id>/model``."""
    return f"{STAGES_DIR}/{stage_id}/{MODEL_SUBDIR}"


def stage_model_dir(output_dir: Path, ref: str) -> str:
    """Resolve a ``"stage:<id>"`` model reference to that stage's ``model/`` dir (else unchanged)."""
    if ref.startswith(STAGE_REF):
        return str(stage_dir(output_dir, ref[len(STAGE_REF):]) / MODEL_SUBDIR)
    return ref


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def _digest(kind: str, identity: Any, upstream: tuple[str, ...] | list[str]) -> str:
    blob = canonical_json({"kind": kind, "settings": identity, "upstream": sorted(upstream)})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_stage_id(kind: str, config: TrainConfig, upstream: tuple[str, ...] | list[str]) -> str:
    """Id of a training stage: its kind, its config's :meth:`~TrainConfig.hash`, its upstream ids."""
    return _digest(kind, config.hash(), upstream)


def eval_stage_id(settings: dict[str, Any], upstream: tuple[str, ...] | list[str]) -> str:
    """Id of an eval stage: its ``zero_shot_eval`` arguments except the operational ones."""
    return _digest("eval", {k: v for k, v in settings.items() if k not in EVAL_OPERATIONAL_KEYS}, upstream)


def stage_id(kind: str, settings: dict[str, Any], upstream: tuple[str, ...] | list[str]) -> str:
    """Content hash of a stage (16 hex digits) from its kind, settings and upstream ids."""
    if kind in TRAIN_KINDS:
        return train_stage_id(kind, validate_model(TrainConfig, settings), upstream)
    return eval_stage_id(settings, upstream)


# --------------------------------------------------------------------------- building


def resolve_target_languages(task: TaskSpec, languages: str | list[str], split: str, data_dir: Path | None) -> list[str]:
    """``"all"``: the languages with local files for ``split`` when the data dir has any, else the
    task's XTREME(-R) languages, else all its languages; ``"xtreme"``/``"xtreme-r"``: that list."""
    if isinstance(languages, list):
        return list(languages)
    if languages in ("xtreme", "xtreme-r"):
        return list(task.benchmarks[languages])
    if task.local is not None and data_dir is not None and Path(data_dir).is_dir():
        local = [lang for lang in task.languages
                 if (files := task.local.resolve(Path(data_dir), lang, split)) and all(f.is_file() for f in files)]
        if local:
            return local
    for bench in ("xtreme", "xtreme-r"):
        if task.benchmarks.get(bench):
            return list(task.benchmarks[bench])
    return list(task.languages)


def _entry_cap(spec: Spec, entry: TaskEntry) -> int | dict[str, int] | None:
    """Examples per language of an intermediate entry: its own ``max_examples`` (an int, or
    ``{language: N, default: M}``), else the spec's ``max_examples.intermediate``. A mapping is
    resolved per language of the entry, and is one int when every language gets the same cap
    (so ``{default: 200}`` and ``200`` are the same stage)."""
    fallback = spec.max_examples.for_task("intermediate", entry.task)
    own = entry.max_examples
    if not isinstance(own, dict):
        return own if own is not None else fallback
    caps = {lang: own.get(lang, own.get("default", fallback)) for lang in entry.languages}
    if len(set(caps.values())) == 1:
        return next(iter(caps.values()))
    return {lang: cap for lang, cap in caps.items() if cap is not None}


def _step_tasks(spec: Spec, step: StepSpec) -> list[dict[str, Any]]:
    out = []
    for entry in step.tasks:
        item: dict[str, Any] = {"task": entry.task, "languages": list(entry.languages), "split": entry.split}
        cap = _entry_cap(spec, entry)
        if cap is not None:
            item["max_examples"] = cap
        if entry.extra_files:
            item["extra_files"] = [{"path": p} for p in entry.extra_files]
            item["extra_ratio"] = entry.extra_ratio
        if entry.dev_holdout is not None:
            item["dev_holdout"] = entry.dev_holdout
        out.append(item)
    return out


def _carried_entries(config: TrainConfig, stage_id: str) -> dict[str, CarriedDevTask]:
    """The carried-head entries of the tasks a chain stage trained (by catalog name): its task
    entries, the settings of their dev evaluation, and the stage's model as the head's source."""
    return {get_task(mix.task).name: CarriedDevTask.from_stage(config, mix, f"{STAGE_REF}{stage_id}")
            for mix in config.tasks}


def _carried_settings(carried: dict[str, CarriedDevTask], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"carried_dev_tasks": [...]}`` for a chain step training ``tasks``: the heads of the
    earlier steps' tasks this step does not train (none: no key, the settings stay as before)."""
    trained = {get_task(t["task"]).name for t in tasks}
    entries = [c.model_dump(mode="json") for name, c in carried.items() if name not in trained]
    return {"carried_dev_tasks": entries} if entries else {}


def _target_train_task(target: TargetSpec, task: TaskSpec) -> TaskSpec:
    """The task whose English training data fine-tunes ``target`` (its own, or the catalog's /
    the spec's ``train.task``)."""
    return get_task((target.train.task if target.train and target.train.task else task.train_task) or task.name)


class _Builder:
    """Adds the stages of one spec, sharing stages whose ids are equal."""

    def __init__(self, spec: Spec, data_dir: Path | None):
        self.spec = spec
        self.data_dir = data_dir
        self.stages: dict[str, Stage] = {}

    def _add(self, kind: str, sid: str, settings: dict[str, Any], depends_on: tuple[str, ...], label: Label,
             description: str) -> str:
        stage = self.stages.get(sid)
        if stage is None:
            stage = Stage(id=sid, kind=kind, settings=settings, depends_on=depends_on, description=description)
            self.stages[sid] = stage
        if label not in stage.labels:
            stage.labels.append(label)
        return sid

    def _train(self, kind: str, data: dict[str, Any], hp_tasks: list[str], where: str, depends_on: tuple[str, ...],
               label: Label, description: str) -> tuple[str, TrainConfig]:
        """Add a training stage: the spec's hyperparameters for ``hp_tasks`` and the label's
        model (:meth:`Spec.train_overrides`) under ``data`` (model, tasks, seed, ...), validated
        into a TrainConfig."""
        model = next(m for m in self.spec.models if m.name == label.model)
        values = {**self.spec.train_overrides(kind, hp_tasks, model), **data, "init_heads": False}
        config = validate_model(TrainConfig, values, file=self.spec.file, prefix=where, brackets=True)
        # no carried heads: no key, so the settings of every other stage read as they did before
        settings = config.model_dump(mode="json", exclude={"data_dir"} | (set() if config.carried_dev_tasks
                                                                          else {"carried_dev_tasks"}))
        sid = self._add(kind, train_stage_id(kind, config, depends_on), settings, depends_on, label, description)
        return sid, config

    def intermediate(self, model: ModelSpec, seed: int) -> dict[str, str | None]:
        """The intermediate stages of every setup (one per chain prefix, so shared prefixes are
        shared stages); returns each setup's final stage id (None for the baseline)."""
        final: dict[str, str | None] = {}
        for setup_name in self.spec.intermediate:
            upstream: str | None = None
            names: list[str] = []
            carried: dict[str, CarriedDevTask] = {}  # heads of the earlier steps, by task: scored after each step
            for step in expand_setup(self.spec, setup_name):
                tasks = _step_tasks(self.spec, step)
                names.append("+".join(t["task"] for t in tasks) + ("+mlm" if step.mlm else ""))
                data: dict[str, Any] = {"model": f"{STAGE_REF}{upstream}" if upstream else model.name_or_path,
                                        "tasks": tasks, "seed": seed}
                data.update({k: getattr(step, k).model_dump() for k in ("sampler", "mlm") if getattr(step, k)})
                data.update(_carried_settings(carried, tasks))
                upstream, config = self._train("intermediate", data, [t["task"] for t in tasks],
                                               f"intermediate.{setup_name}", (upstream,) if upstream else (),
                                               Label(model.name, setup_name, None, seed), " → ".join(names))
                carried.update(_carried_entries(config, upstream))
            final[setup_name] = upstream
        return final

    def target(self, index: int, target: TargetSpec, model: ModelSpec, seed: int,
               finals: dict[str, str | None]) -> None:
        """The target-training and eval stages of one target, for every setup."""
        task = get_task(target.task)
        splits = target.splits(task.eval_split)
        for setup_name, inter in finals.items():
            label = Label(model.name, setup_name, task.name, seed)
            ref = f"{STAGE_REF}{inter}" if inter else model.name_or_path
            deps: tuple[str, ...] = (inter,) if inter else ()
            config = None
            if task.trainable:
                tid, config = self._target_training(index, target, task, ref, seed, deps, label)
                ref, deps = f"{STAGE_REF}{tid}", (tid,)
            for split in splits:  # one eval stage per split, all from the same trained model
                languages = resolve_target_languages(task, target.languages, split, self.data_dir)
                settings = self._eval_settings(target, task, ref, languages, split, config)
                self._add("eval", eval_stage_id(settings, deps), settings, deps, label,
                          f"{task.name}/{split} × {len(languages)} languages")

    def _target_training(self, index: int, target: TargetSpec, task: TaskSpec, ref: str, seed: int,
                         deps: tuple[str, ...], label: Label) -> tuple[str, TrainConfig]:
        train_task = _target_train_task(target, task)
        item: dict[str, Any] = {
            "task": train_task.name,
            "languages": list(target.train.languages if target.train and target.train.languages
                              else train_task.source_languages),
            "split": target.train.split if target.train else "train",
        }
        cap = self.spec.max_examples.for_task("target", task.name)
        if cap is None and train_task.name != task.name:
            cap = self.spec.max_examples.for_task("target", train_task.name)
        if cap is not None:
            item["max_examples"] = cap
        hp_tasks = [task.name] if train_task.name == task.name else [train_task.name, task.name]
        return self._train("target", {"model": ref, "tasks": [item], "seed": seed}, hp_tasks, f"targets[{index}]",
                           deps, label, f"{label.setup} → {task.name}")

    def _eval_settings(self, target: TargetSpec, task: TaskSpec, ref: str, languages: list[str], split: str,
                       config: TrainConfig | None) -> dict[str, Any]:
        """The ``zero_shot_eval`` arguments of an eval stage. Featurisation comes from the target
        stage's ``config`` unless the spec's eval options set it (retrieval: its settings)."""
        options = self.spec.eval_options(target)
        retrieval = options.get("retrieval")
        settings: dict[str, Any] = {
            "model": ref,
            "task": task.name,
            "languages": languages,
            "split": split,
            "max_examples": self.spec.max_examples.for_task("eval", task.name),
            "seed": 0,  # the same subsample for every setup, so scores compare
            "retrieval": dataclasses.asdict(retrieval) if retrieval is not None and config is None else None,
            "batch_size": options.get("batch_size") or DEFAULT_EVAL_BATCH_SIZE,
        }
        if config is not None:
            settings.update({k: options.get(k) or getattr(config, k) for k in FEATURIZE_KEYS})
            head = config.tasks[0].task  # the target stage's head is named after the task it trained on
            if head not in (task.name, task.train_task):  # another task's head is used only when named
                settings["head"] = head
        precision = options.get("precision") or "fp32"
        if precision != "fp32":  # fp32 stays out of the hash: ids of fp32 stages do not depend on it
            settings["precision"] = precision
        if options.get("save_inputs"):  # only when set: ids of other stages do not depend on it
            settings["save_inputs"] = True
        return settings


def plan_stages(spec: Spec) -> Plan:
    """Expand ``spec`` into its DAG of stages (see module docstring). Pure: reads no model/data
    beyond checking which language files exist for ``languages: all``."""
    from xstilts.paths import resolve_data_dir

    data_dir = resolve_data_dir(spec.data_dir)
    builder = _Builder(spec, data_dir)
    for model in spec.models:
        for seed in spec.seeds:
            finals = builder.intermediate(model, seed)
            for index, target in enumerate(spec.targets):
                builder.target(index, target, model, seed, finals)
    ordered = _topological(builder.stages)
    logger.debug("planned %d stages", len(ordered))
    return Plan(stages=ordered, output_dir=Path(spec.output_dir), data_dir=data_dir, spec_file=spec.file,
                spec_name=spec.name, setup_names=list(spec.intermediate),
                target_names=[t.task for t in spec.targets])


def _topological(stages: dict[str, Stage]) -> dict[str, Stage]:
    """Stages ordered by kind then depth (stable), which is a topological order of the DAG."""
    depth: dict[str, int] = {}

    def d(sid: str) -> int:
        if sid not in depth:
            depth[sid] = 1 + max((d(u) for u in stages[sid].depends_on), default=-1)
        return depth[sid]

    order = sorted(stages, key=lambda sid: (d(sid), KINDS.index(stages[sid].kind)))
    return {sid: stages[sid] for sid in order}


def estimated_examples(stage: Stage) -> int | None:
    """Examples a stage processes (train: capped examples × epochs, or steps × batch; eval:
    cap × languages); None when unknown without reading the data."""
    s = stage.settings
    if stage.kind == "eval":
        cap = s.get("max_examples")
        return cap * len(s["languages"]) if cap else None
    if s.get("max_steps"):
        return int(s["max_steps"] * s["batch_size"] * s.get("grad_accum", 1))
    caps = [c for t in s.get("tasks", []) for c in _language_caps(t)]
    if caps and all(c is not None for c in caps):
        return int(sum(caps) * s.get("num_epochs", 1.0))  # type: ignore[arg-type]
    return None


def _language_caps(task: dict[str, Any]) -> list[int | None]:
    """The example cap of each language of a stage's task entry (None: uncapped)."""
    cap = task.get("max_examples")
    languages = task.get("languages", ["en"])
    if isinstance(cap, dict):
        return [cap.get(lang, cap.get("default")) for lang in languages]
    return [cap] * len(languages)
