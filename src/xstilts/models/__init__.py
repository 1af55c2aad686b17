"""Models: loading any encoder, the offline multilingual-e5-small, and one head per format.

Public API::

    load_encoder(name_or_path, *, local_files_only=None) -> (encoder, tokenizer)
    prepare_e5_small(force=False) -> Path
    HeadSpec, MultiTaskModel, HeadChoice
    Head, register_head, head_kinds()     the head registry (one class per head kind)
"""

from xstilts.models.e5 import E5_ALIAS, e5_small_dir, is_e5_small_built, prepare_e5_small
from xstilts.models.heads import (
    Head,
    HeadChoice,
    HeadSpec,
    MultiTaskModel,
    head_class,
    head_kinds,
    pool,
    register_head,
    unregister_head,
)
from xstilts.models.loading import (
    encoder_hidden_size,
    encoder_num_layers,
    hub_reachable,
    load_encoder,
    resolve_model,
)

__all__ = [
    "E5_ALIAS",
    "Head",
    "HeadChoice",
    "HeadSpec",
    "MultiTaskModel",
    "e5_small_dir",
    "encoder_hidden_size",
    "encoder_num_layers",
    "head_class",
    "head_kinds",
    "hub_reachable",
    "is_e5_small_built",
    "load_encoder",
    "pool",
    "prepare_e5_small",
    "register_head",
    "resolve_model",
    "unregister_head",
]
