"""Masked-LM auxiliary task: raw text lines, BERT-style masking, and an LM head over the encoder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xstilts.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def read_mlm_lines(files: Sequence[Path], max_examples: int | None = None, seed: int = 0) -> list[str]:
    """Non-empty lines of the raw text files (one sentence or paragraph per line), optionally subsampled."""
    lines: list[str] = []
    for f in files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise ConfigError(f"MLM text file not found: {path}", key="mlm.files")
        try:
            with path.open(encoding="utf-8") as fh:
                lines.extend(s for s in (raw.strip() for raw in fh) if s)
        except UnicodeDecodeError as exc:
            raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not lines:
        raise DataError(", ".join(str(f) for f in files), "the MLM text files hold no non-empty line")
    if max_examples is not None and len(lines) > max_examples:
        import numpy as np

        keep = np.sort(np.random.default_rng(seed).choice(len(lines), max_examples, replace=False))
        lines = [lines[i] for i in keep]
    return lines


def tokenize_mlm(lines: Sequence[str], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenise lines into features (``input_ids``, ``attention_mask``) truncated to ``max_length``."""
    enc = tokenizer(list(lines), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    return [
        {"input_ids": ids, "attention_mask": am, "special_tokens_mask": sm}
        for ids, am, sm in zip(enc["input_ids"], enc["attention_mask"], enc["special_tokens_mask"])
    ]


def collate_mlm(features: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad MLM features to the longest in the batch (special tokens and padding marked as special)."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    am = torch.zeros((len(features), width), dtype=torch.long)
    special = torch.ones((len(features), width), dtype=torch.bool)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        am[i, :n] = torch.tensor(f["attention_mask"])
        special[i, :n] = torch.tensor(f["special_tokens_mask"], dtype=torch.bool)
    return {"input_ids": ids, "attention_mask": am, "special_tokens_mask": special}


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    mask_prob: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (as ``DataCollatorForLanguageModeling``) with an explicit generator.

    ``mask_prob`` of the non-special tokens are chosen; of those 80 % become the mask
    token, 10 % a random token, 10 % stay. Returns ``(masked_ids, labels)`` with labels
    -100 on positions not chosen. At least one token per batch is chosen.
    """
    labels = input_ids.clone()
    probs = torch.full(input_ids.shape, mask_prob)
    probs.masked_fill_(special_tokens_mask, 0.0)
    chosen = torch.bernoulli(probs, generator=generator).bool()
    if not chosen.any():
        candidates = (~special_tokens_mask).nonzero()
        if len(candidates):
            pick = candidates[torch.randint(len(candidates), (1,), generator=generator)][0]
            chosen[pick[0], pick[1]] = True
    labels[~chosen] = -100
    masked = input_ids.clone()
    replace = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & chosen
    masked[replace] = mask_token_id
    rand = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & chosen & ~replace
    random_words = torch.randint(vocab_size, input_ids.shape, dtype=torch.long, generator=generator)
    masked[rand] = random_words[rand]
    return masked, labels


class MLMHead(nn.Module):
    """RoBERTa-style LM head: dense + GELU + LayerNorm, then a decoder tied to the input embeddings."""

    def __init__(self, embeddings: nn.Embedding, hidden_size: int, layer_norm_eps: float = 1e-5):
        super().__init__()
        vocab, dim = embeddings.weight.shape
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.project = nn.Linear(hidden_size, dim) if dim != hidden_size else nn.Identity()
        self.embeddings = embeddings  # shared with the encoder: the tied decoder weight
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(nn.functional.gelu(self.dense(hidden)))
        return nn.functional.linear(self.project(x), self.embeddings.weight, self.bias)

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters of the head itself (without the tied embedding), for checkpoints."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("embeddings.")}


class PretrainedLMHead(nn.Module):
    """Wraps an encoder's own (tied) LM head when the loaded model has one."""

    def __init__(self, lm_head: nn.Module):
        super().__init__()
        self.lm_head = lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())


def build_mlm_head(encoder: nn.Module, source: str | None = None) -> nn.Module:
    """The MLM head of the stage: the encoder's own tied LM head if the loaded module has one;
    else an :class:`MLMHead` tied to the input embeddings, holding the pretrained LM head of the
    checkpoint ``source`` when it has one (XLM-R's ``lm_head.*``, BERT's ``cls.predictions.*``;
    an xstilts model dir: its base model's), freshly initialised only where none exists (logged)."""
    out = encoder.get_output_embeddings() if hasattr(encoder, "get_output_embeddings") else None
    lm_head = getattr(encoder, "lm_head", None)
    if out is not None and lm_head is not None:
        logger.info("MLM auxiliary: using the encoder's own LM head")
        return PretrainedLMHead(lm_head)
    cfg = encoder.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model")
    eps = getattr(cfg, "layer_norm_eps", None) or getattr(cfg, "layer_norm_epsilon", 1e-5)
    head = MLMHead(encoder.get_input_embeddings(), hidden, eps)
    if source is not None and _load_pretrained_head(head, source):
        return head
    logger.warning("MLM auxiliary: %s has no pretrained LM head; a new LM head is initialised (decoder tied to the "
                   "input embeddings)", source or "the encoder")
    return head


def _load_pretrained_head(head: MLMHead, source: str) -> bool:
    """Load the pretrained LM head of ``source`` into ``head``; False when there is none that fits."""
    from xstilts.train.lm_head import pretrained_lm_head_state

    found = pretrained_lm_head_state(source)
    if found is None:
        return False
    state, where = found
    own = head.own_state_dict()
    misfit = sorted(k for k, v in state.items() if own[k].shape != v.shape)
    if misfit:
        logger.warning("MLM auxiliary: the LM head of %s does not fit this encoder (%s)", where, ", ".join(misfit))
        return False
    head.load_state_dict(state, strict=False)
    logger.info("MLM auxiliary: the pretrained LM head of %s (decoder tied to the input embeddings)", where)
    return True
