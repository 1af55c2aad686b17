"""The typed configuration of one training stage (pydantic, loaded from YAML).

Every hyperparameter of a stage lives in :class:`TrainConfig`. Unknown keys are
rejected and every validation error names the dotted key that is wrong, so a typo
in a YAML file is caught before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xstilts.config_io import read_yaml_mapping, validate_model
from xstilts.errors import ConfigError

#: Settings that never change what a stage produces: how often it logs and checkpoints, where
#: it reports, where its data lives, the dev-evaluation batch size. Everything else is part of
#: a stage's identity (:meth:`TrainConfig.identity`): the learning schedule, the data and its
#: order (``group_by_length`` reorders batches, so it changes the weights), precision, ...
OPERATIONAL_KEYS = frozenset({"save_every", "keep_last", "trackers", "log_every", "progress", "eval_batch_size",
                              "data_dir", "keep_checkpoints", "attn_implementation", "gradient_checkpointing",
                              "tf32"})
#: Settings of the dev evaluation during training. They change the result only through the
#: choice of the final model: part of the identity when ``final_model`` is "best" (how often and
#: on how many dev examples the candidates are scored decides which checkpoint wins), not when
#: it is "last" (dev evaluation runs without gradients or dropout and draws no random numbers,
#: so the trained weights are the same).
SELECTION_KEYS = frozenset({"eval_every", "eval_max_examples", "early_stopping_patience"})
#: Settings added after stage ids were first published: left out of the identity while they hold
#: their default (so every stage planned before them keeps its id), counted once they are set.
LATE_KEYS = {"early_stopping_patience": None}
#: Settings that add measurements without touching training: ``carried_dev_tasks`` scores heads
#: of earlier stages once training has ended (no gradients, no random numbers, not used to pick
#: the final model), so the weights and every trained score are those of a stage without it.
#: Left out of the identity: adding the forgetting measure to a chain does not retrain it.
MEASUREMENT_KEYS = frozenset({"carried_dev_tasks"})
#: Default number of examples held out of a task's training split for its dev evaluation when
#: it trains on its own dev split (jiant's ``eval_subset_num`` is 500 dev examples).
DEFAULT_DEV_HOLDOUT = 500


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExtraFile(_Strict):
    """A training file outside the catalog (e.g. machine-translated data) in the task's local format."""

    path: Path
    language: str = "xx"


class TaskMixture(_Strict):
    """One task of a stage and the data it trains on.

    ``languages`` lists the languages whose ``split`` is loaded through the task
    catalog (``["en"]`` by default; ``["en", "de"]`` mixes in German training data at
    its natural size). ``extra_files`` are further files in the task's local format
    (translations, other languages); they are mixed in at ``extra_ratio`` extra
    examples per example of the catalog data (0.5: one extra example for every two
    English ones; subsampled deterministically, or cycled when the files are smaller).
    """

    task: str
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    split: str = "train"
    #: examples per language, each language subsampled with the stage's seed: one cap for every
    #: language, or ``{language: N, "default": M}`` (a language with neither: all its examples)
    max_examples: Annotated[int, Field(gt=0)] | dict[str, Annotated[int, Field(gt=0)]] | None = None
    extra_files: list[ExtraFile] = Field(default_factory=list)
    extra_ratio: float = Field(default=0.0, ge=0.0)
    head: str | None = None  # a head kind of xstilts.models.head_kinds()
    dev_split: str | None = None  # None: the task's "dev" split when it has one, else its eval_split
    #: examples held out of ``split`` for dev evaluation when ``split`` is the task's dev split
    #: (so that dev scores and checkpoint selection never see training examples); None:
    #: :data:`DEFAULT_DEV_HOLDOUT`; at most half of the split. ``eval_max_examples`` then
    #: subsamples the held-out examples.
    dev_holdout: int | None = Field(default=None, gt=0)

    @field_validator("head")
    @classmethod
    def _known_head_kind(cls, v: str | None) -> str | None:
        from xstilts.models import head_kinds

        if v is not None and v not in head_kinds():
            raise ValueError(f"unknown head kind '{v}'; valid: {', '.join(head_kinds())}")
        return v

    @field_validator("extra_files", mode="before")
    @classmethod
    def _paths_as_files(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"path": x} if isinstance(x, (str, Path)) else x for x in v]
        return v

    @model_validator(mode="after")
    def _caps_name_languages(self) -> "TaskMixture":
        if isinstance(self.max_examples, dict):
            unknown = sorted(set(self.max_examples) - {*self.languages, "default"})
            if unknown:
                raise ValueError(f"max_examples names {unknown}, not languages of the task ({self.languages}) "
                                 "or 'default'")
        return self

    def cap(self, language: str) -> int | None:
        """The most examples of ``language`` trained on (None: all of them)."""
        if isinstance(self.max_examples, dict):
            return self.max_examples.get(language, self.max_examples.get("default"))
        return self.max_examples

    @model_validator(mode="after")
    def _ratio_needs_files(self) -> "TaskMixture":
        if self.extra_files and self.extra_ratio <= 0:
            raise ValueError("extra_files given but extra_ratio is 0: set extra_ratio > 0 (extra examples per catalog example)")
        if self.extra_ratio > 0 and not self.extra_files:
            raise ValueError("extra_ratio > 0 needs extra_files")
        return self


class CarriedDevTask(TaskMixture):
    """A task an earlier stage of a chain trained and this stage does not: at the end of this
    stage its head (frozen since, as that stage left it) is scored on the English dev examples
    that stage evaluated on (the forgetting measure of sequential training).

    The task entry is the earlier stage's (split, languages, ``dev_split``, ``dev_holdout``),
    and so are the settings that chose and featurised its dev examples: ``seed``,
    ``eval_max_examples``, ``max_length``, ``doc_stride``, ``max_query_length``. ``head_from``:
    the model directory holding the head (the earlier stage's ``model/``; None: this stage's
    start model). Build one with :meth:`from_stage`.
    """

    seed: int = 0
    eval_max_examples: int | None = Field(default=None, gt=0)
    max_length: int = Field(default=128, gt=8)
    doc_stride: int = Field(default=128, gt=0)
    max_query_length: int = Field(default=64, gt=0)
    head_from: str | None = None

    @classmethod
    def from_stage(cls, config: "TrainConfig", mix: TaskMixture, head_from: str | None) -> "CarriedDevTask":
        """The carried entry of task ``mix`` of the earlier stage ``config`` (its extra files are
        left out: they are training data only)."""
        entry = mix.model_dump(exclude={"extra_files", "extra_ratio"})
        return cls(**entry, seed=config.seed, eval_max_examples=config.eval_max_examples,
                   max_length=config.max_length, doc_stride=config.doc_stride,
                   max_query_length=config.max_query_length, head_from=head_from)


class SamplerConfig(_Strict):
    """How the task of each batch is drawn (jiant's multi-task samplers).

    ``proportional``: p_i ∝ n_i; ``temperature``: p_i ∝ n_i^(1/T); ``uniform``: p_i = 1/k.
    ``caps`` caps the sizes n_i used above (one int for every task, or per task name),
    as jiant's / T5's examples-proportional mixing with a cap.
    """

    kind: Literal["proportional", "temperature", "uniform"] = "proportional"
    temperature: float = Field(default=2.0, gt=0.0)
    caps: int | dict[str, int] | None = None

    @field_validator("caps")
    @classmethod
    def _positive_caps(cls, v: Any) -> Any:
        vals = [v] if isinstance(v, int) else list(v.values()) if isinstance(v, dict) else []
        if any(c <= 0 for c in vals):
            raise ValueError("caps must be positive")
        return v


class MLMConfig(_Strict):
    """Masked-LM auxiliary task on raw text files (one sentence or paragraph per line)."""

    files: list[Path] = Field(min_length=1)
    probability: float = Field(default=0.5, gt=0.0, le=1.0)  # chance that a batch is an MLM batch
    mask_prob: float = Field(default=0.15, gt=0.0, lt=1.0)
    max_examples: int | None = Field(default=None, gt=0)
    max_length: int | None = Field(default=None, gt=4)  # None: the stage's max_length


class TrainConfig(_Strict):
    """All settings of one training stage (see docs/ARCHITECTURE.md, layer ``train``)."""

    model: str
    init_heads: bool = False
    tasks: list[TaskMixture] = Field(default_factory=list)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    mlm: MLMConfig | None = None

    learning_rate: float = Field(default=2e-5, gt=0.0)
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    num_epochs: float = Field(default=1.0, gt=0.0)
    max_steps: int | None = Field(default=None, gt=0)  # wins over num_epochs
    batch_size: int = Field(default=32, gt=0)  # examples per micro-batch, across all processes
    grad_accum: int = Field(default=1, gt=0)
    max_length: int = Field(default=128, gt=8)
    doc_stride: int = Field(default=128, gt=0)
    max_query_length: int = Field(default=64, gt=0)
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # on a GPU use bf16 (see train/engine.py)
    max_grad_norm: float | None = Field(default=1.0)
    freeze_embeddings: bool = False
    pooling: Literal["cls", "mean"] = "cls"
    compact_vocab: bool = True  # exact speed-up: train only the embedding rows the data uses

    eval_every: int = Field(default=0, ge=0)  # steps; 0: only at the end
    eval_max_examples: int | None = Field(default=None, gt=0)
    eval_batch_size: int = Field(default=64, gt=0)
    final_model: Literal["last", "best"] = "last"
    #: stop after this many dev evaluations in a row without a new best score (jiant's
    #: ``no_improvements_for_n_evals``); needs ``eval_every`` and ``final_model: best``
    early_stopping_patience: int | None = Field(default=None, gt=0)
    save_every: int = Field(default=0, ge=0)  # steps; 0: only at the end
    keep_last: int = Field(default=2, ge=1)
    #: keep ``checkpoints/`` (model, optimizer state, RNG) once the stage has finished; by default
    #: a finished stage keeps only ``model/`` (its checkpoints are needed to resume, not to use it)
    keep_checkpoints: bool = False
    log_every: int = Field(default=10, gt=0)
    trackers: list[str] = Field(default_factory=list)  # accelerate trackers, e.g. ["tensorboard"]
    progress: bool = True
    data_dir: Path | None = None
    group_by_length: bool = True
    #: attention kernel (operational: the same maths): "auto" = the model's default (SDPA where
    #: transformers supports it), "sdpa", "eager", or "flash_attention_2" (CUDA with the
    #: flash-attn package; with it the padding is dropped from the kernel's work)
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    #: recompute activations in the backward pass (less memory, ~30 % more compute; the same
    #: gradients: the recomputation replays the dropout masks). Operational.
    gradient_checkpointing: bool = False
    #: TF32 matrix multiplies on Ampere+ GPUs for fp32 work (``torch.backends.cuda.matmul``);
    #: no effect on CPU or under bf16. Operational (device numerics, like the GPU model).
    tf32: bool = True
    #: heads of earlier chain stages scored on their dev data when this stage ends (see
    #: :class:`CarriedDevTask`; set by the planner for every step of a chain after the first)
    carried_dev_tasks: list[CarriedDevTask] = Field(default_factory=list)

    @model_validator(mode="after")
    def _carried_not_trained(self) -> "TrainConfig":
        both = sorted({c.task for c in self.carried_dev_tasks} & {t.task for t in self.tasks})
        if both:
            raise ValueError(f"carried_dev_tasks names task(s) this stage trains: {', '.join(both)} (a carried "
                             "head is one this stage does not train)")
        return self

    @model_validator(mode="after")
    def _something_to_train(self) -> "TrainConfig":
        if not self.tasks and self.mlm is None:
            raise ValueError("a stage needs at least one entry in 'tasks' or an 'mlm' section")
        names = [t.task for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task(s) listed twice: {', '.join(dup)} (give one entry with several languages instead)")
        if self.mlm is not None and self.tasks and self.mlm.probability >= 1.0:
            raise ValueError("mlm.probability must be < 1 when tasks are trained too")
        if isinstance(self.sampler.caps, dict):
            unknown = sorted(set(self.sampler.caps) - set(names))
            if unknown:
                raise ValueError(f"sampler.caps names task(s) not in 'tasks': {', '.join(unknown)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be > 0 (or null for no clipping)")
        if self.early_stopping_patience is not None and (self.eval_every == 0 or self.final_model != "best"):
            raise ValueError("early_stopping_patience needs dev evaluations during training and keeps the best of "
                             "them: set eval_every > 0 and final_model: best (or early_stopping_patience: null)")
        return self

    def identity(self) -> dict[str, Any]:
        """The settings that decide what this stage produces, as JSON: everything except
        :data:`OPERATIONAL_KEYS`, :data:`MEASUREMENT_KEYS` (and :data:`SELECTION_KEYS` when
        ``final_model`` is "last").
        This is the one definition of a training stage's identity: :meth:`hash`, the resume
        check and the experiment planner's stage ids all derive from it."""
        exclude = set(OPERATIONAL_KEYS) | set(MEASUREMENT_KEYS)
        exclude |= set(SELECTION_KEYS) if self.final_model == "last" else set()
        exclude |= {k for k, default in LATE_KEYS.items() if getattr(self, k) == default}
        out = self.model_dump(mode="json", exclude=exclude)
        for mix, dumped in zip(self.tasks, out.get("tasks", []), strict=True):
            if trains_on_dev_split(mix):  # dev examples are held out of its training data: other data
                dumped["dev_holdout"] = self.dev_holdout_size(mix)
            else:
                dumped.pop("dev_holdout", None)
        return out

    def dev_holdout_size(self, mix: TaskMixture) -> int:
        """How many examples task ``mix`` holds out of its training split for dev evaluation when
        that split is its dev split (see :attr:`TaskMixture.dev_holdout`; capped at half the split
        when the data is read)."""
        return mix.dev_holdout or DEFAULT_DEV_HOLDOUT

    def hash(self) -> str:
        """Content hash (16 hex digits) of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def dev_split_of(mix: TaskMixture) -> str:
    """The split task ``mix`` is dev-evaluated on: its ``dev_split``, else the catalog task's "dev"
    split when it has one, else its ``eval_split`` ("dev" for a task outside the catalog)."""
    if mix.dev_split:
        return mix.dev_split
    from xstilts.errors import UnknownNameError
    from xstilts.tasks.catalog import get_task

    try:
        spec = get_task(mix.task)
    except UnknownNameError:
        return "dev"
    return "dev" if "dev" in spec.splits else spec.eval_split


def trains_on_dev_split(mix: TaskMixture) -> bool:
    """Whether ``mix`` trains on the English split it is dev-evaluated on (dev evaluation is in
    English; those examples are then held out of training, see :attr:`TaskMixture.dev_holdout`)."""
    if "en" not in mix.languages:
        return False
    if mix.dev_split is None and mix.split in ("train", "dev"):  # the common cases, without a catalog look-up
        return mix.split == "dev"
    return mix.split == dev_split_of(mix)


def make_train_config(data: dict[str, Any], file: str | Path | None = None) -> TrainConfig:
    """Validate a dict into a :class:`TrainConfig`; raise :class:`ConfigError` naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}", file=file)
    return validate_model(TrainConfig, data, file=file)


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load a stage config from YAML (with optional top-level ``overrides``); errors name the key."""
    data = read_yaml_mapping(path, what="config file")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return make_train_config(data, file=path)
