"""Heads (a registry keyed by head kind) on a shared encoder, and the multi-task model that carries them.

Each head kind is one :class:`Head` subclass carrying its forward and its loss, registered
with :func:`register_head` (as jiant's head factory, but per format's ``head_kind``, not per
task). A format names the kind it needs (``Format.head_kind``); :class:`MultiTaskModel`
builds and dispatches through the registry and never branches on the kind itself.

:class:`MultiTaskModel` is a plain ``nn.Module``: it knows nothing of devices, precision or
distribution (``accelerate`` owns those). ``forward(task, **batch)`` takes a batch as
``Format.collate`` produces it (plus the labels) and routes it through the encoder and the
named task's head. A head with a label set stores its label names (``HeadSpec.labels``);
:meth:`MultiTaskModel.head_for` picks the head for a task and maps its outputs by name. A
model directory written by :meth:`MultiTaskModel.save` holds::

    DIR/encoder/             save_pretrained of encoder + tokenizer (AutoModel-loadable)
    DIR/heads.safetensors    head weights, keys "<task>.<param>"
    DIR/xstilts_model.json   {"base_model": ..., "heads": [HeadSpec as dict, ...], "xstilts_version": ...}
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xstilts.errors import CheckpointError, ConfigError, ModelLoadError, UnknownNameError, XStiltsError
from xstilts.models.loading import (
    ENCODER_SUBDIR,
    XSTILTS_MODEL_FILE,
    encoder_hidden_size,
    encoder_num_layers,
    load_encoder,
    read_xstilts_model_json,
    save_tokenizer,
)
from xstilts.paths import HEADS_FILE

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
IGNORE_INDEX = -100
_ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
_LABEL_KEYS = ("labels", "start_positions", "end_positions")


# ---------------------------------------------------------------------- the head registry
class Head(nn.Module):
    """A task head: its forward (encoder hidden states -> outputs) and its loss.

    Subclasses set ``kind`` (the registry key, a format's ``head_kind``) and register with
    :func:`register_head`. ``has_labels``: the head predicts one of a label set (its
    :class:`HeadSpec` then carries ``num_labels`` and the label names). The module's
    parameters are saved as ``<head name>.<param>`` in ``heads.safetensors``.
    """

    kind: ClassVar[str]
    has_labels: ClassVar[bool] = False

    def __init__(self, spec: HeadSpec, hidden: int, dropout: float):
        super().__init__()

    def encoder_inputs(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The encoder's inputs for a batch (multiple choice flattens its choices)."""
        return inputs

    def forward(self, hidden: Tensor, attention_mask: Tensor | None, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Outputs from the encoder's last hidden state ``hidden`` [N, L, H]."""
        raise NotImplementedError

    def loss(self, outputs: dict[str, Tensor], batch: Mapping[str, Any]) -> Tensor | None:
        """The training loss when ``batch`` holds the gold labels, else None."""
        return None


_HEADS: dict[str, type[Head]] = {}


def register_head(cls: type[Head] | None = None, *, replace: bool = False) -> Any:
    """Register a :class:`Head` subclass under its ``kind`` (usable as a class decorator)."""

    def add(head_cls: type[Head]) -> type[Head]:
        kind = getattr(head_cls, "kind", None)
        if not (isinstance(head_cls, type) and issubclass(head_cls, Head)) or not isinstance(kind, str) or not kind:
            raise ConfigError(f"{head_cls!r} must be a subclass of xstilts.models.heads.Head with a 'kind'", key="head")
        if kind in _HEADS and _HEADS[kind] is not head_cls and not replace:
            raise ConfigError(f"a head of kind '{kind}' is already registered ({_HEADS[kind].__name__})", key="head")
        _HEADS[kind] = head_cls
        return head_cls

    return add(cls) if cls is not None else add


def unregister_head(kind: str) -> None:
    """Remove a registered head kind (tests that register their own clean up with this)."""
    head_class(kind)
    del _HEADS[kind]


def head_class(kind: str) -> type[Head]:
    """The head class of ``kind``; UnknownNameError listing the registered kinds otherwise."""
    if kind not in _HEADS:
        raise UnknownNameError("head kind", kind, list(_HEADS))
    return _HEADS[kind]


def head_kinds() -> tuple[str, ...]:
    """Every registered head kind, in registration order."""
    return tuple(_HEADS)


@dataclass
class HeadSpec:
    """What head a task needs: its ``kind`` (a registered head kind), labels and pooling.

    ``num_labels``: classes of a head with a label set (classification, tagging); ignored by
    the others. ``labels``: the label names in the order of the head's outputs (None: unknown,
    as in model directories saved before labels were stored); given, it fixes ``num_labels``
    (a different count is a ConfigError). ``pooling``: "cls" (first token) or "mean"
    (attention-mask mean), for classification and multiple choice.
    """

    task: str
    kind: str
    num_labels: int = 2
    pooling: str = "cls"
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        if "." in self.task or not self.task:
            raise ConfigError(f"head name '{self.task}' must be non-empty and contain no '.'", key="task")
        cls = head_class(self.kind)
        if self.pooling not in POOLINGS:
            raise UnknownNameError("pooling", self.pooling, POOLINGS)
        if not cls.has_labels:
            self.labels = None
            return
        if self.labels is not None:
            self.labels = [str(x) for x in self.labels]
            if len(set(self.labels)) != len(self.labels) or len(self.labels) != self.num_labels:
                raise ConfigError(f"head '{self.task}': labels {self.labels} must be {self.num_labels} distinct "
                                  "names (num_labels)", key=f"{self.task}.labels")
        if self.num_labels < 1:
            raise ConfigError(f"a {self.kind} head needs num_labels >= 1, got {self.num_labels}", key=f"{self.task}.num_labels")

    @classmethod
    def for_labels(cls, task: str, kind: str, labels: Sequence[str] | None, pooling: str = "cls") -> HeadSpec:
        """A spec whose ``num_labels`` is the size of ``labels`` (2 when the task has no label set)."""
        return cls(task=task, kind=kind, num_labels=len(labels) if labels else 2, pooling=pooling,
                   labels=list(labels) if labels else None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (as stored in ``xstilts_model.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        """Inverse of :meth:`to_dict`; ConfigError naming the missing/unknown key. ``labels``
        is optional (directories saved before it existed)."""
        known = {"task", "kind", "num_labels", "pooling", "labels"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown head spec key(s) {sorted(unknown)}; valid: {sorted(known)}", key="heads")
        missing = {"task", "kind"} - set(data)
        if missing:
            raise ConfigError(f"head spec lacks {sorted(missing)}", key="heads")
        if data.get("labels") is not None and not isinstance(data["labels"], list):
            raise ConfigError(f"head '{data['task']}': labels should be a list of names", key="heads.labels")
        return cls(**data)


def pool(hidden: Tensor, attention_mask: Tensor | None, pooling: str) -> Tensor:
    """[B, L, H] -> [B, H]: the first token ("cls") or the attention-mask mean ("mean")."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    raise UnknownNameError("pooling", pooling, POOLINGS)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.long().reshape(-1),
                           ignore_index=IGNORE_INDEX)


@register_head
class ClassificationHead(Head):
    """RoBERTa-style sequence head on the pooled state: dropout -> dense -> tanh -> dropout ->
    projection to ``num_labels`` (one output: regression with an MSE loss)."""

    kind: ClassVar[str] = "classification"
    has_labels: ClassVar[bool] = True

    def __init__(self, spec: HeadSpec, hidden: int, dropout: float, num_outputs: int | None = None):
        super().__init__(spec, hidden, dropout)
        self.pooling = spec.pooling
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, spec.num_labels if num_outputs is None else num_outputs)

    def scores(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """[N, L, H] -> [N, outputs]."""
        x = self.dropout(pool(hidden, attention_mask, self.pooling))
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))

    def forward(self, hidden: Tensor, attention_mask: Tensor | None, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"logits": self.scores(hidden, attention_mask)}

    def loss(self, outputs: dict[str, Tensor], batch: Mapping[str, Any]) -> Tensor | None:
        labels = batch.get("labels")
        if labels is None:
            return None
        logits = outputs["logits"]
        if logits.shape[-1] == 1:  # regression
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return _cross_entropy(logits, labels)


@register_head
class MultipleChoiceHead(ClassificationHead):
    """One score per choice from the pooled state of each (context, choice) pair: batches of
    ``[B, C, L]`` run through the encoder as ``[B*C, L]``; logits ``[B, C]``."""

    kind: ClassVar[str] = "multiple_choice"
    has_labels: ClassVar[bool] = False

    def __init__(self, spec: HeadSpec, hidden: int, dropout: float):
        super().__init__(spec, hidden, dropout, num_outputs=1)

    def encoder_inputs(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if inputs["input_ids"].dim() != 3:
            raise ConfigError(f"multiple choice batches need input_ids of shape [B, C, L], got "
                              f"{tuple(inputs['input_ids'].shape)}", key="input_ids")
        return {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}

    def forward(self, hidden: Tensor, attention_mask: Tensor | None, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"logits": self.scores(hidden, attention_mask).view(-1, batch["input_ids"].shape[1])}

    def loss(self, outputs: dict[str, Tensor], batch: Mapping[str, Any]) -> Tensor | None:
        labels = batch.get("labels")
        return None if labels is None else _cross_entropy(outputs["logits"], labels)


@register_head
class TaggingHead(Head):
    """Per-token head: dropout -> linear to ``num_labels``; logits ``[B, L, K]``."""

    kind: ClassVar[str] = "tagging"
    has_labels: ClassVar[bool] = True

    def __init__(self, spec: HeadSpec, hidden: int, dropout: float):
        super().__init__(spec, hidden, dropout)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, spec.num_labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"logits": self.out_proj(self.dropout(hidden))}

    def loss(self, outputs: dict[str, Tensor], batch: Mapping[str, Any]) -> Tensor | None:
        labels = batch.get("labels")
        return None if labels is None else _cross_entropy(outputs["logits"], labels)


@register_head
class ExtractiveQAHead(Head):
    """Start and end logits per token (a linear layer, no dropout, as HF's QA heads).

    Unanswerable questions point at position 0 (CLS), as in SQuAD v2 fine-tuning; positions
    beyond the window are ignored by the loss.
    """

    kind: ClassVar[str] = "extractive_qa"

    def __init__(self, spec: HeadSpec, hidden: int, dropout: float):
        super().__init__(spec, hidden, dropout)
        self.dropout = nn.Dropout(0.0)
        self.out_proj = nn.Linear(hidden, 2)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        start_logits, end_logits = self.out_proj(self.dropout(hidden)).split(1, dim=-1)
        return {"start_logits": start_logits.squeeze(-1).contiguous(), "end_logits": end_logits.squeeze(-1).contiguous()}

    def loss(self, outputs: dict[str, Tensor], batch: Mapping[str, Any]) -> Tensor | None:
        starts, ends = batch.get("start_positions"), batch.get("end_positions")
        if starts is None or ends is None:
            return None
        length = outputs["start_logits"].shape[1]
        starts = starts.long().view(-1).clamp(0, length)
        ends = ends.long().view(-1).clamp(0, length)
        loss_s = F.cross_entropy(outputs["start_logits"].float(), starts, ignore_index=length)
        loss_e = F.cross_entropy(outputs["end_logits"].float(), ends, ignore_index=length)
        return (loss_s + loss_e) / 2


def _dropout_of(config: Any) -> float:
    for attr in ("classifier_dropout", "hidden_dropout_prob", "dropout_rate", "dropout"):
        value = getattr(config, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.1


def build_head(spec: HeadSpec, hidden: int, dropout: float) -> Head:
    """The module for ``spec`` on an encoder of width ``hidden`` (from the head registry)."""
    return head_class(spec.kind)(spec, hidden, dropout)


@dataclass(frozen=True)
class HeadChoice:
    """The head that serves a task (:meth:`MultiTaskModel.head_for`).

    ``labels``: the head's label names in the order of its outputs (decode with these, so
    predictions map to label names, whatever the order of the task's label list); None for
    heads without a label set.
    """

    name: str
    labels: list[str] | None


class MultiTaskModel(nn.Module):
    """A shared encoder with one head per task.

    ``base_model`` records where the encoder came from (a hub id, "e5-small", a directory);
    it is written to ``xstilts_model.json`` on save.
    """

    def __init__(self, encoder: nn.Module, head_specs: list[HeadSpec] | tuple[HeadSpec, ...] = (), *, base_model: str | None = None):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict()
        self.head_specs: dict[str, HeadSpec] = {}
        self.base_model = base_model or getattr(getattr(encoder, "config", None), "_name_or_path", None) or "unknown"
        config = encoder.config
        self.hidden_size = encoder_hidden_size(config)
        self._dropout = _dropout_of(config)
        params = inspect.signature(encoder.forward).parameters
        self._encoder_inputs = tuple(k for k in _ENCODER_INPUTS if k in params)
        if "token_type_ids" in self._encoder_inputs and getattr(config, "type_vocab_size", 2) < 2:
            # XLM-R has a single token type: passing ids is pointless and 1s would index out of range
            self._encoder_inputs = tuple(k for k in self._encoder_inputs if k != "token_type_ids")
        for spec in head_specs:
            self.add_head(spec)

    # ------------------------------------------------------------------ heads
    def add_head(self, spec: HeadSpec) -> None:
        """Attach a freshly initialised head for ``spec.task`` (ConfigError if the name is taken)."""
        if spec.task in self.head_specs:
            raise ConfigError(f"the model already has a head named '{spec.task}' ({self.head_specs[spec.task].kind})", key="tasks")
        head = build_head(spec, self.hidden_size, self._dropout)
        for module in head.modules():
            if isinstance(module, nn.Linear):
                std = getattr(self.encoder.config, "initializer_range", 0.02)
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)
        ref = next(self.encoder.parameters(), None)
        if ref is not None:
            head.to(device=ref.device)
        self.heads[spec.task] = head
        self.head_specs[spec.task] = spec

    def remove_head(self, task: str) -> None:
        """Detach the head named ``task``."""
        self._spec(task)
        del self.heads[task]
        del self.head_specs[task]

    def ensure_head(self, spec: HeadSpec, *, key: str = "tasks") -> HeadSpec:
        """Add a head for ``spec``, or check that the model's head of that name fits it.

        A head carried over from an earlier stage must have the same kind, label count and
        label names in the same order (its outputs are trained against the task's label
        indices); a head saved without label names takes ``spec``'s. ConfigError (at ``key``)
        naming the head, both label lists and the task otherwise.
        """
        have = self.head_specs.get(spec.task)
        if have is None:
            self.add_head(spec)
            return spec
        if have.kind != spec.kind or (head_class(spec.kind).has_labels and have.num_labels != spec.num_labels):
            raise ConfigError(f"the model's head '{spec.task}' is a {have.kind} head with {have.num_labels} labels; "
                              f"task '{spec.task}' needs a {spec.kind} head with {spec.num_labels}", key=key)
        if have.labels is None:
            have.labels = spec.labels
        elif spec.labels is not None and have.labels != spec.labels:
            raise ConfigError(f"the model's head '{spec.task}' was trained with labels {have.labels}, but task "
                              f"'{spec.task}' lists {spec.labels}: put the task's label_list in the head's order, "
                              "or train a fresh head (init_heads: false)", key=key)
        return have

    def head_for(self, task: str, kind: str, labels: Sequence[str] | None = None, *, also: Sequence[str] = (),
                 head: str | None = None, known_labels: Callable[[str], Sequence[str] | None] | None = None
                 ) -> HeadChoice:
        """The head that evaluates ``task`` (of head kind ``kind``, with label names ``labels``).

        The head is ``head`` when given, else the one named ``task``, else the first of
        ``also`` (the task's training task, e.g. xnli -> mnli) the model has. A head of any
        other task is never used silently: XStiltsError listing the model's heads and how to
        choose one (``head=``). The head must be of kind ``kind``, and a head with a label set
        must have the task's labels as a set: predictions are then mapped by name
        (:attr:`HeadChoice.labels`), whatever the order of either list. A head saved without
        label names takes ``known_labels(head name)`` (its task's label list, when known),
        else the task's labels by position when the counts agree.
        """
        name = self._choose_head(task, kind, head, also)
        spec = self.head_specs[name]
        if spec.kind != kind:
            raise XStiltsError(f"the model's head '{name}' is a {spec.kind} head, but task '{task}' needs a {kind} "
                               f"head; {self._how_to_choose(task)}")
        if not head_class(kind).has_labels or labels is None:
            return HeadChoice(name, spec.labels)
        head_labels = spec.labels if spec.labels is not None else (known_labels(name) if known_labels else None)
        if head_labels is None or len(head_labels) != spec.num_labels:
            return HeadChoice(name, self._labels_by_position(name, spec, task, labels))
        if set(head_labels) != set(labels):
            raise XStiltsError(f"the model's head '{name}' predicts labels {list(head_labels)}, but task '{task}' has "
                               f"labels {list(labels)}: they differ, so its predictions cannot be scored against this "
                               f"task; {self._how_to_choose(task)}")
        return HeadChoice(name, list(head_labels))

    def _choose_head(self, task: str, kind: str, head: str | None, also: Sequence[str]) -> str:
        if head is not None:
            if head not in self.head_specs:
                raise XStiltsError(f"the model has no head '{head}' (heads: {self._describe_heads()})")
            return head
        for name in (task, *also):
            if name and name in self.head_specs:
                return name
        names = "', '".join(n for n in (task, *also) if n)
        raise XStiltsError(f"the model has no {kind} head for task '{task}' (looked for '{names}'; heads: "
                           f"{self._describe_heads()}); {self._how_to_choose(task)}")

    def _labels_by_position(self, name: str, spec: HeadSpec, task: str, labels: Sequence[str]) -> list[str]:
        if spec.num_labels != len(labels):
            raise XStiltsError(f"the model's head '{name}' has {spec.num_labels} labels but task '{task}' has "
                               f"{len(labels)} ({list(labels)}); {self._how_to_choose(task)}")
        log.warning("head '%s' was saved without label names: its outputs are taken as task '%s''s labels %s in "
                    "that order", name, task, list(labels))
        return list(labels)

    def _describe_heads(self) -> str:
        return ", ".join(f"{n} ({s.kind}" + (f", labels {s.labels}" if s.labels else "") + ")"
                         for n, s in self.head_specs.items()) or "none"

    def _how_to_choose(self, task: str) -> str:
        return (f"choose the head to use with head=NAME (xstilts eval --head NAME; one of: {self._describe_heads()}), "
                f"or fine-tune the model on '{task}' first")

    def _spec(self, task: str) -> HeadSpec:
        if task not in self.head_specs:
            raise UnknownNameError("head", task, list(self.head_specs))
        return self.head_specs[task]

    # ---------------------------------------------------------------- forward
    def _encoder_kwargs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {k: batch[k] for k in self._encoder_inputs if batch.get(k) is not None}

    def encode(self, **batch: Any) -> Tensor:
        """Last hidden state [B, L, H] of the encoder for a batch (non-input keys are ignored)."""
        return self.encoder(**self._encoder_kwargs(batch)).last_hidden_state

    def forward(self, task: str, **batch: Any) -> dict[str, Tensor]:
        """Run the encoder and ``task``'s head on a collated batch.

        Returns the head's outputs: ``{"logits"}`` (classification [B, K], multiple choice
        [B, C], tagging [B, L, K]) or ``{"start_logits", "end_logits"}`` ([B, L]); with
        ``"loss"`` when the batch holds the gold labels (``labels`` or
        ``start_positions``/``end_positions``).
        """
        self._spec(task)
        head = self.heads[task]
        inputs = self._encoder_kwargs(batch)
        if "input_ids" not in inputs:
            raise ConfigError("batch has no 'input_ids'", key="batch")
        inputs = head.encoder_inputs(inputs)
        hidden = self.encoder(**inputs).last_hidden_state
        out = head(hidden, inputs.get("attention_mask"), batch)
        loss = head.loss(out, batch)
        if loss is not None:
            out["loss"] = loss
        return out

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None, layer: int | None = None,
              pooling: str = "mean") -> Tensor:
        """Pooled hidden states [B, H] of ``layer`` for retrieval.

        ``layer``: index into the encoder's hidden states (0 = embeddings, 1..N = transformer
        layers, negative counts from the end); None = the last layer. ``pooling``: "mean"
        (attention-mask mean) or "cls" (first token). Not normalised.
        """
        n_layers = encoder_num_layers(self.encoder.config)
        if layer is not None and not -(n_layers + 1) <= layer <= n_layers:
            raise ConfigError(f"layer {layer} out of range for a {n_layers}-layer encoder (valid: 0..{n_layers} or negative)",
                              key="retrieval.layer")
        kwargs: dict[str, Tensor] = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if layer is None:
            hidden = self.encoder(**kwargs).last_hidden_state
        else:
            hidden = self.encoder(**kwargs, output_hidden_states=True).hidden_states[layer]
        return pool(hidden, attention_mask, pooling)

    # ------------------------------------------------------------ save / load
    def save(self, directory: str | Path, with_heads: bool = True, tokenizer: Any = None) -> None:
        """Write the model directory (layout in the module docstring) atomically.

        Everything is written to a temporary sibling directory that replaces ``directory`` at
        the end, so an interrupted save never leaves a half-written model behind.
        """
        from safetensors.torch import save_file

        from xstilts import __version__

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            build = tmp / "model"
            enc_dir = build / ENCODER_SUBDIR
            enc_dir.mkdir(parents=True)
            self.encoder.save_pretrained(enc_dir)
            if tokenizer is not None:
                save_tokenizer(tokenizer, enc_dir)
            else:
                log.warning("saving %s without a tokenizer: pass tokenizer= to make the directory self-contained", directory)
            specs = list(self.head_specs.values()) if with_heads else []
            if specs:
                state = {f"{task}.{name}": p.detach().to("cpu").contiguous()
                         for task, head in self.heads.items() for name, p in head.state_dict().items()}
                save_file(state, str(build / HEADS_FILE), metadata={"format": "pt"})
            meta = {"base_model": self.base_model, "heads": [s.to_dict() for s in specs],
                    "encoder_class": type(self.encoder).__name__, "xstilts_version": __version__}
            (build / XSTILTS_MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            if directory.exists():
                os.replace(directory, tmp / "old")
            os.replace(build, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, directory: str | Path, heads: bool | list[str] = True) -> tuple[MultiTaskModel, Any]:
        """Load a model directory: an xstilts one (encoder + the requested heads) or a plain
        ``save_pretrained`` encoder directory (no heads). Returns ``(model, tokenizer)``.

        ``heads``: True = all saved heads, False = none, a list = those named (CheckpointError
        naming the available heads when one is missing).
        """
        directory = Path(directory)
        meta, saved = _read_head_specs(directory)
        wanted = _wanted_heads(directory, saved, heads)
        heads_path = directory / HEADS_FILE
        if wanted and not heads_path.is_file():
            raise CheckpointError(f"{heads_path} is missing but {XSTILTS_MODEL_FILE} lists heads {sorted(saved)}")
        try:
            encoder, tokenizer = load_encoder(str(directory), local_files_only=True)
        except ModelLoadError as exc:
            raise CheckpointError(str(exc)) from exc
        model = cls(encoder, base_model=meta.get("base_model") or str(directory))
        if wanted:
            model._load_heads(heads_path, [saved[name] for name in wanted])
        return model, tokenizer

    def add_saved_head(self, directory: str | Path, name: str) -> HeadSpec:
        """Attach head ``name`` of the model directory ``directory`` with its saved weights
        (not its encoder): e.g. a head an earlier stage of a chain trained. CheckpointError
        naming the saved heads when it has none of that name; ConfigError if the name is taken."""
        directory = Path(directory)
        _, saved = _read_head_specs(directory)
        _wanted_heads(directory, saved, [name])
        self._load_heads(directory / HEADS_FILE, [saved[name]])
        return saved[name]

    def _load_heads(self, heads_path: Path, specs: list[HeadSpec]) -> None:
        """Add the heads of ``specs`` with their weights from ``heads.safetensors``."""
        from safetensors.torch import load_file

        state = load_file(str(heads_path))
        for spec in specs:
            self.add_head(spec)
            prefix = spec.task + "."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                self.heads[spec.task].load_state_dict(sub, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{heads_path}: weights of head '{spec.task}' do not fit its spec: {exc}") from exc

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, heads: bool | list[str] = False,
                        *, local_files_only: bool | None = None) -> tuple[MultiTaskModel, Any]:
        """Start from anything :func:`load_encoder` accepts; an xstilts model directory may
        also bring its heads (``heads=True`` or a list of names)."""
        path = Path(str(name_or_path)).expanduser()
        if path.is_dir() and (path / XSTILTS_MODEL_FILE).is_file():
            return cls.load(path, heads=heads)
        encoder, tokenizer = load_encoder(name_or_path, local_files_only=local_files_only)
        return cls(encoder, base_model=str(name_or_path)), tokenizer


def _read_head_specs(directory: Path) -> tuple[dict[str, Any], dict[str, HeadSpec]]:
    """``xstilts_model.json`` of a model directory and its head specs by name (none for a
    plain encoder directory); CheckpointError when it is not a model directory."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory (expected a model directory with {XSTILTS_MODEL_FILE} "
                              "or config.json)")
    is_xstilts = (directory / XSTILTS_MODEL_FILE).is_file()
    if not is_xstilts and not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is not a model directory: it has neither {XSTILTS_MODEL_FILE} nor config.json")
    try:
        meta = read_xstilts_model_json(directory) if is_xstilts else {"heads": []}
        saved = [HeadSpec.from_dict(d) for d in meta.get("heads", [])]
    except ModelLoadError as exc:
        raise CheckpointError(str(exc)) from exc
    except (ConfigError, UnknownNameError, TypeError) as exc:
        raise CheckpointError(f"{directory / XSTILTS_MODEL_FILE}: bad head spec: {exc}") from exc
    return meta, {s.task: s for s in saved}


def _wanted_heads(directory: Path, saved: dict[str, HeadSpec], heads: bool | list[str]) -> list[str]:
    """Names of the saved heads to load for ``heads`` (True: all, False: none, or a list)."""
    if heads is True:
        return list(saved)
    if heads is False:
        return []
    missing = [h for h in heads if h not in saved]
    if missing:
        raise CheckpointError(f"{directory} has no head(s) {missing}; saved heads: {sorted(saved) or 'none'}")
    return list(heads)
