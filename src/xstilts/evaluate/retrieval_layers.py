"""Which encoder layer a retrieval setting means, numbered as XTREME numbers it.

XTREME (google-research/xtreme ``third_party/evaluate_retrieval.py``, ``extract_embeddings``)
keeps ``all_layer_outputs[-num_layers:]`` of the model's hidden states, i.e. it drops the
embedding output, and ``--specific_layer k`` indexes that list from 0. So XTREME's layer ``k``
is the output of the ``(k+1)``-th transformer layer, Hugging Face's ``hidden_states[k + 1]``:

============================  ===========  ======================  ==================
encoder                       XTREME       ``hidden_states``       source
============================  ===========  ======================  ==================
12 layers (mBERT, XLM-R Base)  7 (default)  ``hidden_states[8]``    ``scripts/run_tatoeba.sh``
24 layers (XLM-R Large)        13           ``hidden_states[14]``   ``scripts/run_tatoeba.sh``
24 layers, jiant               "layer 14"   ``hidden_states[14]``   jiant ``xtreme_runconfig_writer.py``
============================  ===========  ======================  ==================

jiant (``jiant/proj/main/modeling/taskmodels.py``, ``EmbeddingModel``) indexes the hidden
states directly (``hidden_states[14]``, embedding output at 0), so jiant's 14 is XTREME's 13.

xstilts's ``layer`` follows XTREME: 0 = the first transformer layer's output, ``N - 1`` = the
last; negative values count from the end (-1 = last). The default reproduces both of XTREME's
values with ``N // 2 + 1`` (7 of 12, 13 of 24); other depths use the same rule (an
extrapolation, marked so in docs/PROTOCOL.md).
"""

from __future__ import annotations

from xstilts.errors import XStiltsError

#: how ``layer`` is written into every retrieval result
LAYER_CONVENTION = "xtreme: 0-based transformer layer (embedding output excluded); hidden_states[layer + 1]"


def default_retrieval_layer(num_layers: int) -> int:
    """XTREME's default ``--specific_layer`` for an ``num_layers``-deep encoder: 7 of 12, 13 of 24 (``N // 2 + 1``)."""
    if num_layers < 1:
        raise XStiltsError(f"an encoder needs at least one transformer layer, got {num_layers}")
    return min(num_layers - 1, num_layers // 2 + 1)


def resolve_layer(layer: int | None, num_layers: int) -> int:
    """The XTREME layer index (0..N-1) of ``layer`` (None = the default; negative counts from the end)."""
    if layer is None:
        return default_retrieval_layer(num_layers)
    if not -num_layers <= layer < num_layers:
        raise XStiltsError(f"retrieval layer {layer} is out of range for a {num_layers}-layer encoder: layers are "
                           f"numbered as XTREME's --specific_layer, 0..{num_layers - 1} (0 = the first transformer "
                           "layer's output; negative counts from the end)")
    return layer % num_layers


def hidden_states_index(layer: int, num_layers: int) -> int:
    """Index into Hugging Face's ``hidden_states`` (0 = embeddings) of XTREME layer ``layer``."""
    return resolve_layer(layer, num_layers) + 1
