"""One head per format on a shared encoder, and the multi-task model that carries them.

:class:`MultiTaskModel` is a plain ``nn.Module``: it knows nothing of devices, precision or
distribution (``accelerate`` owns those). ``forward(task, **batch)`` takes a batch as
``Format.collate`` produces it (plus the labels) and routes it through the encoder and the
named task's head. A model directory written by :meth:`MultiTaskModel.save` holds::

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xstilts.errors import CheckpointError, ConfigError, ModelLoadError, UnknownNameError
from xstilts.models.loading import (
    ENCODER_SUBDIR,
    XSTILTS_MODEL_FILE,
    encoder_hidden_size,
    encoder_num_layers,
    load_encoder,
    read_xstilts_model_json,
)

log = logging.getLogger(__name__)

HEAD_KINDS = ("classification", "multiple_choice", "extractive_qa", "tagging")
POOLINGS = ("cls", "mean")
HEADS_FILE = "heads.safetensors"
IGNORE_INDEX = -100
_ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
_LABEL_KEYS = ("labels", "start_positions", "end_positions")


@dataclass
class HeadSpec:
    """What head a task needs: its ``kind`` (the format's head kind), label count and pooling.

    ``num_labels``: classes (classification, tagging); ignored by multiple choice and QA.
    ``pooling``: "cls" (first token) or "mean" (attention-mask mean), for classification and
    multiple choice.
    """

    task: str
    kind: str
    num_labels: int = 2
    pooling: str = "cls"

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise UnknownNameError("head kind", self.kind, HEAD_KINDS)
        if self.pooling not in POOLINGS:
            raise UnknownNameError("pooling", self.pooling, POOLINGS)
        if self.kind in ("classification", "tagging") and self.num_labels < 1:
            raise ConfigError(f"a {self.kind} head needs num_labels >= 1, got {self.num_labels}", key=f"{self.task}.num_labels")
        if "." in self.task or not self.task:
            raise ConfigError(f"head name '{self.task}' must be non-empty and contain no '.'", key="task")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (as stored in ``xstilts_model.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        """Inverse of :meth:`to_dict`; ConfigError naming the missing/unknown key."""
        known = {"task", "kind", "num_labels", "pooling"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown head spec key(s) {sorted(unknown)}; valid: {sorted(known)}", key="heads")
        missing = {"task", "kind"} - set(data)
        if missing:
            raise ConfigError(f"head spec lacks {sorted(missing)}", key="heads")
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


class PooledHead(nn.Module):
    """RoBERTa-style sequence head: dropout -> dense -> tanh -> dropout -> projection."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, num_outputs)

    def forward(self, pooled: Tensor) -> Tensor:
        x = self.dropout(pooled)
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


class TokenHead(nn.Module):
    """Per-token head: dropout -> linear (tagging: K classes; QA: start/end)."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_outputs)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out_proj(self.dropout(hidden))


def _dropout_of(config: Any) -> float:
    for attr in ("classifier_dropout", "hidden_dropout_prob", "dropout_rate", "dropout"):
        value = getattr(config, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.1


def build_head(spec: HeadSpec, hidden: int, dropout: float) -> nn.Module:
    """The module for ``spec`` on an encoder of width ``hidden``."""
    if spec.kind == "classification":
        return PooledHead(hidden, spec.num_labels, dropout)
    if spec.kind == "multiple_choice":
        return PooledHead(hidden, 1, dropout)  # one score per choice
    if spec.kind == "extractive_qa":
        return TokenHead(hidden, 2, 0.0)  # start, end (as HF's QA heads: no dropout)
    if spec.kind == "tagging":
        return TokenHead(hidden, spec.num_labels, dropout)
    raise UnknownNameError("head kind", spec.kind, HEAD_KINDS)


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

        Returns ``{"logits"}`` (classification [B, K], multiple choice [B, C], tagging
        [B, L, K]) or ``{"start_logits", "end_logits"}`` ([B, L]); with ``"loss"`` when the
        batch holds ``labels`` (or ``start_positions``/``end_positions``).
        """
        spec = self._spec(task)
        head = self.heads[task]
        inputs = self._encoder_kwargs(batch)
        if "input_ids" not in inputs:
            raise ConfigError("batch has no 'input_ids'", key="batch")
        num_choices = None
        if spec.kind == "multiple_choice":
            if inputs["input_ids"].dim() != 3:
                raise ConfigError(f"multiple choice batches need input_ids of shape [B, C, L], got {tuple(inputs['input_ids'].shape)}", key="input_ids")
            num_choices = inputs["input_ids"].shape[1]
            inputs = {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}
        hidden = self.encoder(**inputs).last_hidden_state
        mask = inputs.get("attention_mask")
        out: dict[str, Tensor] = {}

        if spec.kind in ("classification", "multiple_choice"):
            logits = head(pool(hidden, mask, spec.pooling))
            if num_choices is not None:
                logits = logits.view(-1, num_choices)
            out["logits"] = logits
            labels = batch.get("labels")
            if labels is not None:
                if spec.kind == "classification" and spec.num_labels == 1:  # regression
                    out["loss"] = F.mse_loss(logits.squeeze(-1).float(), labels.float())
                else:
                    out["loss"] = F.cross_entropy(logits.float(), labels.long().view(-1), ignore_index=IGNORE_INDEX)
        elif spec.kind == "tagging":
            logits = head(hidden)
            out["logits"] = logits
            labels = batch.get("labels")
            if labels is not None:
                out["loss"] = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.long().reshape(-1),
                                              ignore_index=IGNORE_INDEX)
        else:  # extractive_qa; unanswerable questions point at position 0 (CLS), as in SQuAD v2 fine-tuning
            start_logits, end_logits = head(hidden).split(1, dim=-1)
            out["start_logits"] = start_logits.squeeze(-1).contiguous()
            out["end_logits"] = end_logits.squeeze(-1).contiguous()
            starts, ends = batch.get("start_positions"), batch.get("end_positions")
            if starts is not None and ends is not None:
                length = hidden.shape[1]  # positions beyond the window are ignored
                starts = starts.long().view(-1).clamp(0, length)
                ends = ends.long().view(-1).clamp(0, length)
                loss_s = F.cross_entropy(out["start_logits"].float(), starts, ignore_index=length)
                loss_e = F.cross_entropy(out["end_logits"].float(), ends, ignore_index=length)
                out["loss"] = (loss_s + loss_e) / 2
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
                tokenizer.save_pretrained(enc_dir)
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
        if not directory.is_dir():
            raise CheckpointError(f"{directory} is not a directory (expected a model directory with {XSTILTS_MODEL_FILE} or config.json)")
        is_xstilts = (directory / XSTILTS_MODEL_FILE).is_file()
        if not is_xstilts and not (directory / "config.json").is_file():
            raise CheckpointError(f"{directory} is not a model directory: it has neither {XSTILTS_MODEL_FILE} nor config.json")
        try:
            meta = read_xstilts_model_json(directory) if is_xstilts else {"heads": []}
        except ModelLoadError as exc:
            raise CheckpointError(str(exc)) from exc
        try:
            saved = [HeadSpec.from_dict(d) for d in meta.get("heads", [])]
        except (ConfigError, UnknownNameError, TypeError) as exc:
            raise CheckpointError(f"{directory / XSTILTS_MODEL_FILE}: bad head spec: {exc}") from exc
        by_name = {s.task: s for s in saved}
        if heads is True:
            wanted = list(by_name)
        elif heads is False:
            wanted = []
        else:
            missing = [h for h in heads if h not in by_name]
            if missing:
                raise CheckpointError(f"{directory} has no head(s) {missing}; saved heads: {sorted(by_name) or 'none'}")
            wanted = list(heads)
        heads_path = directory / HEADS_FILE
        if wanted and not heads_path.is_file():
            raise CheckpointError(f"{heads_path} is missing but {XSTILTS_MODEL_FILE} lists heads {sorted(by_name)}")
        try:
            encoder, tokenizer = load_encoder(str(directory), local_files_only=True)
        except ModelLoadError as exc:
            raise CheckpointError(str(exc)) from exc
        model = cls(encoder, base_model=meta.get("base_model") or str(directory))
        if wanted:
            from safetensors.torch import load_file

            state = load_file(str(heads_path))
            for task in wanted:
                model.add_head(by_name[task])
                prefix = task + "."
                sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                try:
                    model.heads[task].load_state_dict(sub, strict=True)
                except RuntimeError as exc:
                    raise CheckpointError(f"{heads_path}: weights of head '{task}' do not fit its spec: {exc}") from exc
        return model, tokenizer

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
