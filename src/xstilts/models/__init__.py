"""Models: loading any encoder, the offline multilingual-e5-small, and one head per format.

Public API::

    load_encoder(name_or_path, *, local_files_only=None) -> (encoder, tokenizer)
    prepare_e5_small(force=False) -> Path
    HeadSpec, MultiTaskModel
"""

from xstilts.models.e5 import E5_ALIAS, e5_small_dir, is_e5_small_built, prepare_e5_small
from xstilts.models.heads import HEAD_KINDS, HeadSpec, MultiTaskModel, pool
from xstilts.models.loading import (
    encoder_hidden_size,
    encoder_num_layers,
    hub_reachable,
    load_encoder,
    resolve_model,
)

__all__ = [
    "E5_ALIAS",
    "HEAD_KINDS",
    "HeadSpec",
    "MultiTaskModel",
    "e5_small_dir",
    "encoder_hidden_size",
    "encoder_num_layers",
    "hub_reachable",
    "is_e5_small_built",
    "load_encoder",
    "pool",
    "prepare_e5_small",
    "resolve_model",
]
