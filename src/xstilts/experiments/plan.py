"""Spec -> plan: a DAG of content-hashed stages (intermediate training, target training, eval).

Stage ids are ``sha256`` of the canonical JSON of the stage's kind, its own settings (those
that change what it produces) and the ids of its upstream stages, cut to 16 hex digits. So
an intermediate stage is trained once and shared by every target (and by every setup whose
chain starts with it), the baseline is one target stage per target and seed, changing a
hyperparameter re-runs only the stages it reaches, and a finished stage is found again by
any later run or spec sharing the output directory.

A stage's model input is written ``"stage:<id>"`` in its settings when it comes from an
upstream stage; the runner resolves it to ``OUTPUT_DIR/stages/<id>/model``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xstilts.errors import ConfigError
from xstilts.experiments.spec import Spec, StepSpec

logger = logging.getLogger(__name__)

StageKind = Literal["intermediate", "target", "eval"]
KINDS: tuple[str, ...] = ("intermediate", "target", "eval")
STAGE_REF = "stage:"
#: settings that do not change what a stage produces (kept in settings, not hashed)
UNHASHED_KEYS = frozenset({"save_every", "keep_last", "trackers", "log_every", "progress", "eval_max_examples",
                           "eval_batch_size", "data_dir", "batch_size_eval", "eval_every", "group_by_length"})
EVAL_UNHASHED = frozenset({"batch_size", "data_dir"})


@dataclass(frozen=True)
class Label:
    """One use of a stage by the spec: which (model, setup, target, seed) cell it serves."""

    model: str
    setup: str
    target: str | None
    seed: int


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

    def setups(self) -> list[str]:
        return sorted({lab.setup for lab in self.labels})

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "settings": self.settings, "depends_on": list(self.depends_on),
                "labels": [vars(lab) for lab in self.labels], "description": self.description}


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
    return Path(output_dir) / "stages" / stage_id


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def stage_id(kind: str, settings: dict[str, Any], upstream: tuple[str, ...] | list[str]) -> str:
    """Content hash of a stage: kind + hashed settings + upstream ids (16 hex digits)."""
    unhashed = EVAL_UNHASHED if kind == "eval" else UNHASHED_KEYS
    hashed = {k: v for k, v in settings.items() if k not in unhashed}
    blob = canonical_json({"kind": kind, "settings": hashed, "upstream": sorted(upstream)})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_model_dir(output_dir: Path, ref: str) -> str:
    """Resolve a ``"stage:<id>"`` model reference to that stage's ``model/`` dir (else unchanged)."""
    if ref.startswith(STAGE_REF):
        return str(stage_dir(output_dir, ref[len(STAGE_REF):]) / "model")
    return ref


# --------------------------------------------------------------------------- building


def _merge(*dicts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        out.update(d)
    return out


def _train_settings(spec: Spec, kind: str, model_ref: str, seed: int, tasks: list[dict[str, Any]],
                    sampler: dict[str, Any] | None, mlm: dict[str, Any] | None, hp_tasks: list[str]) -> dict[str, Any]:
    """A TrainConfig (validated) as a JSON dict: stage-kind hyperparameters + per-task overrides."""
    from pydantic import ValidationError

    from xstilts.train.config import TrainConfig

    hp = spec.hyperparameters
    per_task = [getattr(hp.tasks[t], kind) for t in hp_tasks if t in hp.tasks]
    values = _merge(getattr(hp, kind), *per_task)
    data: dict[str, Any] = {**values, "model": model_ref, "init_heads": False, "tasks": tasks, "seed": seed}
    if sampler is not None:
        data["sampler"] = sampler
    if mlm is not None:
        data["mlm"] = mlm
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        where = f"hyperparameters.{kind}" + (f" (or hyperparameters.tasks.<{'|'.join(hp_tasks)}>.{kind})" if per_task else "")
        raise ConfigError(f"invalid {kind} stage setting '{loc}': {err['msg']}", key=where, file=spec.file) from None
    dumped = config.model_dump(mode="json")
    dumped.pop("data_dir", None)
    return dumped


def _step_tasks(spec: Spec, step: StepSpec) -> list[dict[str, Any]]:
    out = []
    for entry in step.tasks:
        item: dict[str, Any] = {"task": entry.task, "languages": list(entry.languages), "split": entry.split}
        cap = spec.max_examples.for_task("intermediate", entry.task)
        if cap is not None:
            item["max_examples"] = cap
        if entry.extra_files:
            item["extra_files"] = [{"path": p} for p in entry.extra_files]
            item["extra_ratio"] = entry.extra_ratio
        out.append(item)
    return out


def resolve_target_languages(task: Any, languages: str | list[str], split: str, data_dir: Path | None) -> list[str]:
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


class _Builder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.stages: dict[str, Stage] = {}

    def add(self, kind: str, settings: dict[str, Any], depends_on: tuple[str, ...], label: Label, description: str) -> str:
        sid = stage_id(kind, settings, depends_on)
        stage = self.stages.get(sid)
        if stage is None:
            stage = Stage(id=sid, kind=kind, settings=settings, depends_on=depends_on, description=description)
            self.stages[sid] = stage
        if label not in stage.labels:
            stage.labels.append(label)
        return sid


def plan_stages(spec: Spec) -> Plan:
    """Expand ``spec`` into its DAG of stages (see module docstring). Pure: reads no model/data
    beyond checking which language files exist for ``languages: all``."""
    from xstilts.experiments.validate import expand_setup
    from xstilts.paths import resolve_data_dir
    from xstilts.tasks.catalog import get_task

    data_dir = resolve_data_dir(spec.data_dir)
    b = _Builder(spec)
    hp = spec.hyperparameters
    for model in spec.models:
        for seed in spec.seeds:
            # intermediate stages: one per chain prefix, so shared prefixes are shared stages
            final_of_setup: dict[str, str | None] = {}
            for setup_name in spec.intermediate:
                upstream: str | None = None
                names: list[str] = []
                for step in expand_setup(spec, setup_name):
                    tasks = _step_tasks(spec, step)
                    names.append("+".join(t["task"] for t in tasks) + ("+mlm" if step.mlm else ""))
                    ref = f"{STAGE_REF}{upstream}" if upstream else model.name_or_path
                    settings = _train_settings(spec, "intermediate", ref, seed, tasks, step.sampler, step.mlm,
                                               [t["task"] for t in tasks])
                    upstream = b.add("intermediate", settings, (upstream,) if upstream else (),
                                     Label(model.name, setup_name, None, seed), " → ".join(names))
                final_of_setup[setup_name] = upstream
            for target in spec.targets:
                task = get_task(target.task)
                split = target.split or task.eval_split
                languages = resolve_target_languages(task, target.languages, split, data_dir)
                eh = hp.tasks[task.name].eval if task.name in hp.tasks else {}
                retrieval = eh.get("retrieval", hp.eval.retrieval)
                batch_size = eh.get("batch_size", hp.eval.batch_size)
                precision = eh.get("precision", hp.eval.precision)
                for setup_name, inter in final_of_setup.items():
                    label = Label(model.name, setup_name, task.name, seed)
                    base_ref = f"{STAGE_REF}{inter}" if inter else model.name_or_path
                    deps: tuple[str, ...] = (inter,) if inter else ()
                    if task.format == "retrieval":
                        eval_ref, eval_deps = base_ref, deps
                    else:
                        train_task = (target.train.task if target.train and target.train.task else task.train_task) or task.name
                        tt = get_task(train_task)
                        item: dict[str, Any] = {
                            "task": tt.name,
                            "languages": list(target.train.languages if target.train and target.train.languages
                                              else tt.train_languages),
                            "split": target.train.split if target.train else "train",
                        }
                        cap = spec.max_examples.for_task("target", task.name)
                        if cap is None and tt.name != task.name:
                            cap = spec.max_examples.for_task("target", tt.name)
                        if cap is not None:
                            item["max_examples"] = cap
                        settings = _train_settings(spec, "target", base_ref, seed, [item], None, None,
                                                   [task.name] if tt.name == task.name else [tt.name, task.name])
                        tid = b.add("target", settings, deps, label, f"{setup_name} → {task.name}")
                        eval_ref, eval_deps = f"{STAGE_REF}{tid}", (tid,)
                    eval_settings: dict[str, Any] = {
                        "model": eval_ref,
                        "task": task.name,
                        "languages": languages,
                        "split": split,
                        "max_examples": spec.max_examples.for_task("eval", task.name),
                        "seed": 0,  # the same subsample for every setup, so scores compare
                        "retrieval": retrieval if task.format == "retrieval" else None,
                        "batch_size": batch_size,
                    }
                    if precision != "fp32":  # fp32 stays out of the hash: ids of existing fp32 stages are kept
                        eval_settings["precision"] = precision
                    b.add("eval", eval_settings, eval_deps, label, f"{task.name} × {len(languages)} languages")
    ordered = _topological(b.stages)
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
    caps = [t.get("max_examples") for t in s.get("tasks", [])]
    if caps and all(caps):
        total = sum(c * len(t.get("languages", ["en"])) for c, t in zip(caps, s["tasks"], strict=True))
        return int(total * s.get("num_epochs", 1.0))
    return None
