"""The pretrained masked-LM head of a checkpoint, for the MLM auxiliary task.

Encoders are loaded without their LM head (``AutoModel``), but checkpoints trained with MLM
keep it beside the encoder weights: XLM-R / RoBERTa as ``lm_head.{dense,layer_norm,bias}``,
BERT as ``cls.predictions.{transform.dense,transform.LayerNorm,bias}``. Both are
dense -> GELU -> LayerNorm -> decoder tied to the input embeddings (+ bias), the shape of
:class:`~xstilts.train.mlm.MLMHead`, so continuing MLM starts from the head pretraining left, as
jiant's ``from_transformers_with_mlm`` load mode does (``jiant/proj/main/modeling/model_setup.py``,
``load_lm_heads_from_transformers_weights``). :func:`pretrained_lm_head_state` finds those
weights without loading the rest of the checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: (key prefix in the checkpoint, {key after the prefix: MLMHead parameter})
LM_HEAD_LAYOUTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("lm_head.", {"dense.weight": "dense.weight", "dense.bias": "dense.bias",
                  "layer_norm.weight": "layer_norm.weight", "layer_norm.bias": "layer_norm.bias",
                  "bias": "bias", "decoder.bias": "bias"}),
    ("cls.predictions.", {"transform.dense.weight": "dense.weight", "transform.dense.bias": "dense.bias",
                          "transform.LayerNorm.weight": "layer_norm.weight", "transform.LayerNorm.bias": "layer_norm.bias",
                          "bias": "bias", "decoder.bias": "bias"}),
)
HEAD_PARAMETERS = frozenset({"dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"})
_MAX_BASE_HOPS = 8  # xstilts model dirs naming their base model, followed at most this far


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a ``save_pretrained`` directory (safetensors first, shards included)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [directory / s for s in shards if (directory / s).is_file()]
        if (directory / single).is_file():
            return [directory / single]
    return []


def _read_prefixed(files: list[Path], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The tensors whose key starts with one of ``prefixes`` (other tensors are not loaded)."""
    out: dict[str, Any] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                out.update({k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefixes)})
        else:
            import torch

            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            out.update({k: v for k, v in state.items() if k.startswith(prefixes)})
    return out


def _head_state(tensors: dict[str, Any]) -> dict[str, Any] | None:
    """MLMHead parameters from the first layout whose keys are all there (None: no complete head)."""
    for prefix, names in LM_HEAD_LAYOUTS:
        state = {ours: tensors[prefix + theirs] for theirs, ours in names.items() if prefix + theirs in tensors}
        if set(state) == HEAD_PARAMETERS:
            return state
    return None


def _checkpoint_dirs(name_or_path: str) -> list[tuple[Path, str]]:
    """Directories whose weights may hold the LM head, with what each is: the model itself, then
    (for an xstilts model dir, whose encoder was saved without one) its base model, and so on."""
    from xstilts.models.loading import read_xstilts_model_json, resolve_model

    out: list[tuple[Path, str]] = []
    name = name_or_path
    for _ in range(_MAX_BASE_HOPS):
        try:
            resolved = resolve_model(name)
        except Exception as exc:  # noqa: BLE001 - no head found is not an error: a new head is made
            logger.debug("no LM head look-up in %s: %s", name, exc)
            break
        directory = resolved.local if resolved.local is not None else _hub_snapshot(str(resolved.hub_id))
        if directory is not None:
            out.append((directory, name))
        if resolved.xstilts_dir is None:
            break
        base = read_xstilts_model_json(resolved.xstilts_dir).get("base_model")
        if not base or base == name:
            break
        name = str(base)
    return out


def _hub_snapshot(hub_id: str) -> Path | None:
    """The local snapshot directory of a cached hub model (None when it is not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # noqa: BLE001 - e.g. an id that is not a valid repo name
        return None
    return Path(found).parent if isinstance(found, str) else None


def pretrained_lm_head_state(name_or_path: str) -> tuple[dict[str, Any], str] | None:
    """``(MLMHead state dict, where it came from)`` for the model ``name_or_path`` (hub id, HF
    directory, xstilts model directory: its base model's head), or None when no checkpoint in
    reach has a complete LM head (e.g. a sentence-embedding model or an mT5 encoder)."""
    prefixes = tuple(prefix for prefix, _ in LM_HEAD_LAYOUTS)
    for directory, name in _checkpoint_dirs(name_or_path):
        state = _head_state(_read_prefixed(weight_files(directory), prefixes))
        if state is not None:
            return state, name
    return None
