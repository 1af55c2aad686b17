"""One inference loop for every forward pass without gradients.

The training engine's dev evaluation and zero-shot evaluation (heads and retrieval
embeddings) both call :func:`predict`, so they batch, place, cast and order outputs the same
way and cannot disagree::

    predict(model, target, fmt, features, *, batch_size=64, pad_token_id=0, device=None,
            precision="fp32", accelerator=None, transform=None, progress=False, desc="predict")
        -> dict[str, np.ndarray]   # aligned with ``features``

``target`` is a head name (outputs ``logits``, or ``start_logits`` / ``end_logits``) or a
:class:`SentenceEmbedding` (outputs ``embeddings`` [F, H]). ``fmt`` is anything with the
format contract's ``collate(features, pad_token_id)`` (this module does not import
``tasks``). Features are run sorted by length, in batches cut where they waste the fewest padded
tokens on the CPU (:func:`sorted_batch_sizes`; equal batches on a GPU), and the outputs put
back in feature order; token-level outputs are right-padded with :data:`OUTPUT_PAD` to the
widest feature.

Precision: ``fp32`` is exact. For ``bf16`` / ``fp16`` a model whose weights already have that
dtype (see :func:`cast_for_inference`, HF's ``bf16_full_eval``) runs as it is; a model in
fp32 (e.g. weights being trained) runs under ``torch.autocast``, which leaves it untouched.
On the CPU a model cast to bf16 runs its linear layers with the bias (and a feed-forward's
GELU) fused into oneDNN's GEMM (:mod:`xstilts.models.cpu_fusion`; ``XSTILTS_CPU_FUSION=0``
turns it off).

CPU streams: on the CPU, :data:`CPU_STREAMS` batches (2; ``XSTILTS_CPU_STREAMS`` overrides,
``1`` turns it off) run at once in a small thread pool, each on ``threads // streams`` of torch's
intra-op threads, longest batches first. Small encoders' kernels do not keep two threads busy
(the GEMMs split across them, element-wise ops and attention scale worse): two batches side by
side on one thread each took 0.88 of the time of one batch at a time on both threads in fp32 and
0.77 in bf16 (e5-small, the eval benchmark's batches, 2-core Xeon; benchmarks/RESULTS.md). Each
batch's numbers were the same bit for bit in every check (tests, the benchmark's fp32 scores), an
observation rather than a guarantee: a GEMM library may split a product differently on fewer
threads. torch's thread count is process-wide: it is lowered for the call and restored after it.
A caller inside ``torch.autocast`` runs one batch at a time in its own thread (autocast is
thread-local and would not reach the pool).

Distribution: with an ``accelerate.Accelerator`` of several processes each process runs
every ``world``-th batch of the shared length-sorted order on its unwrapped model (no
collective per batch), and one gather at the end gives every process all outputs, in
feature order, each feature exactly once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from xstilts.errors import ConfigError, UnknownNameError, XStiltsError
from xstilts.models.cpu_fusion import fused_cpu_linears
from xstilts.models.cpu_memory import tune_cpu_allocator
from xstilts.models.heads import POOLINGS, pool
from xstilts.models.loading import encoder_num_layers

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: what to use instead of fp16 without a GPU (every fp16-on-CPU message ends with it)
CPU_PRECISION_ADVICE = "on CPU use fp32 (or bf16 where the CPU has bf16 instructions: AVX512-BF16 or AMX)"
#: value that pads token-level outputs beyond a feature's length (never read by decoding)
OUTPUT_PAD = -1e4
#: batch keys that are targets, not model inputs
LABEL_KEYS = ("labels", "start_positions", "end_positions")
#: batches run at once on the CPU, each on its share of torch's intra-op threads (two streams
#: of one thread each beat one stream of two on a 2-core machine: benchmarks/RESULTS.md)
CPU_STREAMS = 2
#: environment override of :data:`CPU_STREAMS` ("1": one batch at a time on every thread)
CPU_STREAMS_ENV = "XSTILTS_CPU_STREAMS"
#: what a batch costs on the CPU beyond its tokens, in tokens (Python and dispatch per layer,
#: less efficient products on small batches): on the CPU :func:`sorted_batch_sizes` starts a
#: batch when it saves more padded tokens than this. Not used on a GPU, where a batch's fixed
#: cost is worth thousands of tokens: equal batches there.
BATCH_COST_TOKENS = 64
#: above this many features x batch size a sorted stream is cut into equal batches (bounds the
#: partition's time: 27 ms for 12,978 features x 32 here; see sorted_batch_sizes)
PARTITION_MAX_WORK = 1_000_000
#: encoders whose last hidden state, with only the first ``k`` layers kept, is exactly
#: ``hidden_states[k]`` (no final norm after the layer stack)
_TRUNCATABLE = ("bert", "xlm-roberta", "roberta", "camembert")


class Collator(Protocol):
    """What :func:`predict` needs of a format: ``Format.collate``."""

    def collate(self, features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SentenceEmbedding:
    """Predict pooled sentence embeddings (retrieval) instead of running a head.

    ``layer``: index into the encoder's hidden states (0 = embedding output, 1..N =
    transformer layers, negative counts from the end); None = the last layer. ``pooling``:
    ``"mean"`` (attention-mask mean) or ``"cls"``. Pooling is done in fp32. Not normalised.
    """

    layer: int | None = None
    pooling: str = "mean"


# ---------------------------------------------------------------------- device and precision
def resolve_device(device: str | None, precision: str = "fp32") -> torch.device:
    """``None``/``"auto"`` = the GPU when torch sees one, else the CPU; XStiltsError for an
    unknown device, a CUDA device without a GPU, an unknown precision or fp16 off CUDA."""
    check_precision(precision)
    if device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise XStiltsError(f"unknown device {device!r} (expected cpu, cuda, cuda:N or auto)") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise XStiltsError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    if precision == "fp16" and dev.type != "cuda":
        raise XStiltsError(f"precision fp16 needs a CUDA device; {CPU_PRECISION_ADVICE}")
    warn_if_bf16_emulated(dev, precision)
    return dev


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without them torch emulates
    bf16 matrix products through fp32 conversions: correct, but several times slower than fp32."""
    return any(bool(getattr(torch.cpu, check, lambda: False)())
               for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def warn_if_bf16_emulated(device: torch.device, precision: str) -> None:
    """Log once per process when ``precision`` bf16 is asked for on a CPU without bf16 instructions."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16_instructions():
        _warn_bf16_emulated()


@functools.cache
def _warn_bf16_emulated() -> None:
    logger.warning("precision bf16 on this CPU, which has no bf16 instructions (AVX512-BF16 or AMX): torch "
                   "emulates it, several times slower than fp32 (measured: XQuAD + PAN-X zero-shot eval on a "
                   "2-core AVX2 EPYC took 289 s in bf16, 69 s in fp32). Use precision fp32 on this machine; "
                   "bf16 pays off on a GPU or a CPU with those instructions.")


def check_precision(precision: str) -> None:
    """XStiltsError unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise XStiltsError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def cast_for_inference(model: nn.Module, precision: str) -> nn.Module:
    """Cast ``model``'s floating-point weights to ``precision``'s dtype once, in place (HF's
    ``bf16_full_eval``): several times faster than autocast, which re-casts fp32 weights on
    every call. Only for a model loaded for inference: the fp32 weights are gone afterwards."""
    check_precision(precision)
    if precision != "fp32":
        model.to(dtype=DTYPES[precision])
    if precision == "fp16":
        _keep_fp32_modules(model)
    return model


def _keep_fp32_modules(model: nn.Module) -> None:
    """Back to fp32: the sub-modules a transformers model keeps in fp32 (``_keep_in_fp32_modules``;
    T5/mT5's feed-forward output ``wo`` overflows in fp16, and casts its input to its own dtype)."""
    for module in model.modules():
        keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
        if not keep:
            continue
        for name, sub in module.named_modules():
            if keep & set(name.split(".")):
                sub.float()


def _param_dtype(model: nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _precision_context(model: nn.Module, precision: str, device: torch.device) -> Any:
    check_precision(precision)
    if precision == "fp32" or _param_dtype(model) == DTYPES[precision]:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def model_device(model: nn.Module, default: torch.device | None = None) -> torch.device:
    """Where ``model``'s parameters are (``default``, else the CPU, for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else (default or torch.device("cpu"))


# ---------------------------------------------------------------------- batching
def feature_length(feature: Mapping[str, Any]) -> int:
    """Tokens of a feature (multiple choice: its longest choice)."""
    ids = feature["input_ids"]
    if len(ids) and isinstance(ids[0], (list, tuple)):
        return max(len(r) for r in ids)
    return len(ids)


def length_sorted_batches(features: Sequence[Mapping[str, Any]], batch_size: int,
                          batch_cost: int | None = None) -> list[list[int]]:
    """Feature indices sorted by length (stable: ties keep feature order) in batches of at most
    ``batch_size``: equal batches, or with a ``batch_cost`` (tokens) cut where
    :func:`sorted_batch_sizes` finds the fewest padded tokens plus that cost per batch."""
    if batch_size < 1:
        raise XStiltsError(f"batch_size must be >= 1, got {batch_size}")
    lengths = [feature_length(f) for f in features]
    order = sorted(range(len(features)), key=lengths.__getitem__)
    sizes = (_equal_batch_sizes(len(order), batch_size) if batch_cost is None
             else sorted_batch_sizes([lengths[i] for i in order], batch_size, batch_cost))
    batches, start = [], 0
    for size in sizes:
        batches.append(order[start:start + size])
        start += size
    return batches


def _equal_batch_sizes(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - i) for i in range(0, n, batch_size)]


def sorted_batch_sizes(lengths: Sequence[int], batch_size: int, batch_cost: int) -> list[int]:
    """Sizes of consecutive batches (each at most ``batch_size``) of the ascending ``lengths``
    that minimise padded tokens plus ``batch_cost`` tokens per batch (the CPU's:
    :data:`BATCH_COST_TOKENS`): every batch is padded to its last (longest) feature.

    Cutting a sorted stream into equal batches pads every batch to a length that can be well
    above most of its features where lengths are sparse (the long tail; few features per
    language): a smaller batch there saves more tokens than its fixed cost. Exact dynamic
    programme, O(n * batch_size); beyond :data:`PARTITION_MAX_WORK` equal batches (their waste
    shrinks as n grows: 0.5-0.9 % in the eval benchmark at 300 examples per language, 6-8 % at 20)."""
    n = len(lengths)
    if batch_size < 1:
        raise XStiltsError(f"batch_size must be >= 1, got {batch_size}")
    if any(lengths[i] > lengths[i + 1] for i in range(n - 1)):
        raise ValueError("sorted_batch_sizes needs the lengths in ascending order")
    if n * batch_size > PARTITION_MAX_WORK:
        return _equal_batch_sizes(n, batch_size)
    best = [0] * (n + 1)  # best[i]: least cost of the first i features
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        longest = lengths[i - 1]
        best_j = max(0, i - batch_size)
        best_cost = best[best_j] + longest * (i - best_j)
        for j in range(best_j + 1, i):
            c = best[j] + longest * (i - j)
            if c <= best_cost:  # ties: the later cut (full batches first, as equal batches are cut)
                best_j, best_cost = j, c
        best[i], cut[i] = best_cost + batch_cost, best_j
    sizes, i = [], n
    while i > 0:
        sizes.append(i - cut[i])
        i = cut[i]
    return sizes[::-1]


def _shard(batches: list[list[int]], accelerator: Any) -> list[list[int]]:
    """This process's batches: every ``world``-th of the shared order. A process left with
    none reruns the first batch with its indices marked -1 (dropped after the gather), so
    every process has outputs of the right shape to gather."""
    if accelerator is None or accelerator.num_processes == 1:
        return batches
    mine = batches[accelerator.process_index::accelerator.num_processes]
    return mine or [[-1 - i for i in batches[0]]]


def _in_feature_order(chunks: Sequence[tuple[np.ndarray, np.ndarray]], n: int, start: int = 0,
                      width: int | None = None) -> np.ndarray:
    """Rows of (feature indices, outputs [B, ...]) chunks placed at their indices (indices < 0
    are dropped); trailing dims padded with :data:`OUTPUT_PAD` to the widest chunk.

    ``start``/``n``: only the rows of features ``start .. start + n - 1`` (one group of
    :func:`predict_groups`), placed from row 0. ``width``: dim 1 cut to this many columns
    (token-level outputs of a group: its own widest feature)."""
    tail = [max(a.shape[d] for _, a in chunks) for d in range(1, chunks[0][1].ndim)]
    if width is not None and tail:
        tail[0] = width
    out = np.full([n, *tail], OUTPUT_PAD, dtype=np.float32)
    for idx, arr in chunks:
        keep = (idx >= start) & (idx < start + n)
        if not keep.any():
            continue
        if width is not None and arr.ndim > 1:
            arr = arr[:, :width]
        out[(idx[keep] - start,) + tuple(slice(0, s) for s in arr.shape[1:])] = arr[keep]
    return out


# ---------------------------------------------------------------------- forward passes
@contextlib.contextmanager
def truncated_encoder(encoder: nn.Module, layer: int) -> Iterator[bool]:
    """Run only the first ``layer`` transformer layers when that is exact (BERT/XLM-R-style
    encoders without a final norm): their last hidden state then equals ``hidden_states[layer]``.
    Yields whether truncation applied; the full layer stack is restored on exit."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    model_type = getattr(getattr(encoder, "config", None), "model_type", "")
    if layers is None or model_type not in _TRUNCATABLE or not 0 < layer < len(layers):
        yield False
        return
    full = encoder.encoder.layer
    encoder.encoder.layer = nn.ModuleList(list(full)[:layer])
    try:
        yield True
    finally:
        encoder.encoder.layer = full


def _embedding_layer(model: nn.Module, target: SentenceEmbedding) -> int | None:
    """The non-negative hidden-state index of ``target.layer`` (None = last layer)."""
    if target.pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {target.pooling!r}", key="retrieval.pooling")
    if target.layer is None:
        return None
    n_layers = encoder_num_layers(model.encoder.config)
    if not -(n_layers + 1) <= target.layer <= n_layers:
        raise ConfigError(f"layer {target.layer} out of range for a {n_layers}-layer encoder "
                          f"(valid: 0..{n_layers} or negative)", key="retrieval.layer")
    return target.layer % (n_layers + 1)


def _embed(model: nn.Module, batch: dict[str, Tensor], layer: int | None, pooling: str, truncated: bool) -> Tensor:
    mask = batch.get("attention_mask")
    kwargs = {"input_ids": batch["input_ids"]}
    if mask is not None:
        kwargs["attention_mask"] = mask
    if layer is None or truncated:
        hidden = model.encoder(**kwargs).last_hidden_state
    else:
        hidden = model.encoder(**kwargs, output_hidden_states=True).hidden_states[layer]
    return pool(hidden.float(), mask, pooling)


def _forward_fn(model: nn.Module, target: str | SentenceEmbedding, stack: contextlib.ExitStack
                ) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A function batch -> outputs for ``target`` (entering what it needs on ``stack``)."""
    if isinstance(target, SentenceEmbedding):
        layer = _embedding_layer(model, target)
        truncated = layer is not None and stack.enter_context(truncated_encoder(model.encoder, layer))
        return lambda batch: {"embeddings": _embed(model, batch, layer, target.pooling, truncated)}
    if target not in getattr(model, "head_specs", {}):
        raise UnknownNameError("head", target, list(getattr(model, "head_specs", {})))
    return lambda batch: {k: v for k, v in model(target, **batch).items() if k != "loss"}


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """``batch`` on ``device``; to a GPU through pinned memory with ``non_blocking`` copies (the
    host does not wait for each copy: no sync per tensor per step). Training and inference use it."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    """The model inputs of a collated batch (no labels) on ``device``."""
    return to_device({k: v for k, v in batch.items() if isinstance(v, Tensor) and k not in LABEL_KEYS}, device)


def _gather(chunks: list[tuple[np.ndarray, np.ndarray]], accelerator: Any, device: torch.device
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """All processes' (indices, outputs) of one output key, as one chunk (one collective per array)."""
    tail = [max(a.shape[d] for _, a in chunks) for d in range(1, chunks[0][1].ndim)]
    local = np.concatenate([np.pad(a, [(0, 0)] + [(0, t - s) for t, s in zip(tail, a.shape[1:])],
                                   constant_values=OUTPUT_PAD) for _, a in chunks])
    index = torch.from_numpy(np.concatenate([i for i, _ in chunks])).to(device)
    values = torch.from_numpy(local).to(device)
    index = accelerator.pad_across_processes(index, dim=0, pad_index=-1)
    for dim in range(values.dim()):
        values = accelerator.pad_across_processes(values, dim=dim, pad_index=OUTPUT_PAD)
    return [(accelerator.gather(index).cpu().numpy(), accelerator.gather(values).cpu().numpy())]


def predict(
    model: nn.Module,
    target: str | SentenceEmbedding,
    fmt: Collator,
    features: Sequence[dict[str, Any]],
    *,
    batch_size: int = 64,
    pad_token_id: int = 0,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    accelerator: Any = None,
    transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    progress: bool = False,
    desc: str = "predict",
) -> dict[str, np.ndarray]:
    """Run ``model`` without gradients over ``features``; outputs aligned with ``features``.

    ``model``: a :class:`~xstilts.models.MultiTaskModel` (unwrapped from DDP). ``target``: a
    head name, or a :class:`SentenceEmbedding`. ``fmt``: the task's format (its ``collate``).
    ``device``: where batches go (the model is moved there); None = the accelerator's device,
    else the model's. ``precision``: see the module docstring. ``accelerator``: shard the
    batches over its processes and gather (every process returns all outputs).
    ``transform``: applied to every batch on the device before the forward pass (e.g. the
    compact vocabulary's id remapping). ``progress``: a tqdm bar (``desc``). The model is in
    eval mode during the call and gets its previous mode back.

    Returns ``{"logits"}`` / ``{"start_logits", "end_logits"}`` (as the head returns them, no
    loss) or ``{"embeddings"}``, float32 numpy arrays with one row per feature.
    """
    chunks, _ = _predict_chunks(model, target, fmt, features, batch_size=batch_size, pad_token_id=pad_token_id,
                                device=device, precision=precision, accelerator=accelerator, transform=transform,
                                progress=progress, desc=desc)
    return {k: _in_feature_order(v, len(features)) for k, v in chunks.items()}


def predict_groups(
    model: nn.Module,
    target: str | SentenceEmbedding,
    fmt: Collator,
    groups: Sequence[Sequence[dict[str, Any]]],
    **kwargs: Any,
) -> list[dict[str, np.ndarray]]:
    """:func:`predict` over several groups of features (e.g. every language of an evaluation)
    as ONE length-sorted stream of batches, outputs split back per group.

    Sorting all groups together fills batches with features of similar length from every
    group (far less padding than one sorted stream per group). The results are those of one
    :func:`predict` call per group up to float rounding (a feature's outputs do not depend on
    its batch neighbours; only the padded width of its batch can change the kernels' summation
    order, ~1e-6 in fp32), token-level outputs padded to each group's own widest feature, as
    :func:`predict` pads them. Keywords: as :func:`predict`.
    """
    flat = [f for group in groups for f in group]
    chunks, token_level = _predict_chunks(model, target, fmt, flat, **kwargs)
    out: list[dict[str, np.ndarray]] = []
    start = 0
    for group in groups:
        width = max((feature_length(f) for f in group), default=0)
        out.append({k: _in_feature_order(v, len(group), start, width if token_level[k] else None)
                    for k, v in chunks.items()} if group else {})
        start += len(group)
    return out


def _predict_chunks(model: nn.Module, target: str | SentenceEmbedding, fmt: Collator,
                    features: Sequence[dict[str, Any]], *, batch_size: int = 64, pad_token_id: int = 0,
                    device: str | torch.device | None = None, precision: str = "fp32", accelerator: Any = None,
                    transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
                    progress: bool = False, desc: str = "predict",
                    ) -> tuple[dict[str, list[tuple[np.ndarray, np.ndarray]]], dict[str, bool]]:
    """(feature indices, outputs) chunks of every output key (gathered over the processes), and
    per key whether its dim 1 is the token axis (every chunk as wide as its longest feature)."""
    check_precision(precision)
    if device is None:
        device = accelerator.device if accelerator is not None else model_device(model)
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    if on_cpu:
        tune_cpu_allocator()  # freed activations reused, not unmapped and faulted in again
    model.to(device)
    batches = length_sorted_batches(features, batch_size, BATCH_COST_TOKENS if on_cpu else None)
    if not batches:
        return {}, {}
    show = progress and (accelerator is None or accelerator.is_main_process)
    step = _Step(fmt, features, pad_token_id, device, transform)
    was_training = model.training
    model.eval()
    try:
        chunks, token_level = _run_batches(model, target, step, _shard(batches, accelerator), precision,
                                           _progress(desc, show))
    finally:
        model.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        chunks = {k: _gather(v, accelerator, device) for k, v in chunks.items()}
        token_level = {k: bool(accelerator.gather(torch.tensor([int(v)], device=device)).all()) for k, v in
                       sorted(token_level.items())}
    return chunks, token_level


@dataclass(frozen=True)
class _Step:
    """How one batch of feature indices becomes model inputs on the device."""

    fmt: Collator
    features: Sequence[dict[str, Any]]
    pad_token_id: int
    device: torch.device
    transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None

    def inputs(self, idx: list[int]) -> dict[str, Tensor]:
        rows = [self.features[i if i >= 0 else -1 - i] for i in idx]  # i < 0: a rerun batch, dropped later
        batch = _to_device(self.fmt.collate(rows, self.pad_token_id), self.device)
        return self.transform(batch) if self.transform is not None else batch


def _run_batches(model: nn.Module, target: str | SentenceEmbedding, step: _Step, batches: list[list[int]],
                 precision: str, bar: Callable[[Iterable[Any], int], Iterable[Any]] | None = None
                 ) -> tuple[dict[str, list[tuple[np.ndarray, np.ndarray]]], dict[str, bool]]:
    """(feature indices, outputs) of every batch, per output key, without gradients; and per
    key whether dim 1 of every batch's output is as wide as the batch's longest feature.
    On the CPU up to :func:`cpu_streams` batches run at once (see the module docstring);
    ``bar`` wraps the finished batches (a progress bar)."""
    chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    token_level: dict[str, bool] = {}
    with contextlib.ExitStack() as stack:
        forward = _forward_fn(model, target, stack)
        # the caller's autocast is thread-local: it would not reach the pool's threads, so a caller
        # inside autocast runs its batches in its own thread (and unfused: its weights are not bf16)
        caller_autocast = torch.is_autocast_enabled(step.device.type)
        if step.device.type == "cpu" and precision == "bf16" and not caller_autocast:
            stack.enter_context(fused_cpu_linears(model))  # bf16 weights only: bias (+ GELU) inside the GEMM

        def one(idx: list[int]) -> tuple[list[int], dict[str, Tensor]]:
            # grad mode and autocast are thread-local: entered here, in whichever thread runs the batch
            with torch.inference_mode(), _precision_context(model, precision, step.device):
                return idx, forward(step.inputs(idx))

        streams = 1 if caller_autocast else cpu_streams(step.device, len(batches))
        if streams > 1:
            pool = stack.enter_context(_cpu_stream_pool(streams))
            # longest first: the streams finish together (the short batches fill in at the end)
            done: Iterable[tuple[list[int], dict[str, Tensor]]] = pool.map(one, batches[::-1])
        else:
            done = map(one, batches)
        for idx, outputs in (bar(done, len(batches)) if bar is not None else done):
            width = max(feature_length(step.features[i if i >= 0 else -1 - i]) for i in idx)
            for key, val in outputs.items():
                chunks.setdefault(key, []).append((np.asarray(idx), val.float().cpu().numpy()))
                token_level[key] = token_level.get(key, True) and val.dim() > 1 and val.shape[1] == width
    return chunks, token_level


def cpu_streams(device: torch.device, n_batches: int = 2) -> int:
    """How many batches run at once on ``device``: on the CPU, :data:`CPU_STREAMS` (or
    ``XSTILTS_CPU_STREAMS``), at most one per intra-op thread and per batch; 1 elsewhere."""
    if device.type != "cpu" or n_batches < 2:
        return 1
    raw = os.environ.get(CPU_STREAMS_ENV)
    if raw is None or not raw.strip():
        wanted = CPU_STREAMS
    else:
        try:
            wanted = int(raw)
        except ValueError:
            wanted = 0
        if wanted < 1:
            raise ConfigError(f"{CPU_STREAMS_ENV} must be a whole number >= 1 (1 = one batch at a time), got {raw!r}",
                              key=CPU_STREAMS_ENV)
    return max(1, min(wanted, torch.get_num_threads(), n_batches))


@contextlib.contextmanager
def _cpu_stream_pool(streams: int) -> Iterator[Any]:
    """A pool of ``streams`` threads, each running its batches' kernels on ``threads // streams``
    intra-op threads (torch's thread count is process-wide: restored on exit)."""
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // streams))  # new threads start with this count
    try:
        pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="xstilts-predict")
        try:
            yield pool
        finally:  # an error or Ctrl-C: the batches not started are dropped, the running ones finish
            pool.shutdown(wait=True, cancel_futures=True)
    finally:  # even when a second signal interrupts the shutdown
        torch.set_num_threads(threads)


def _progress(desc: str, enabled: bool) -> Callable[[Iterable[Any], int], Iterable[Any]] | None:
    """A function wrapping finished batches in a tqdm bar (None when ``enabled`` is false)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda items, total: tqdm(items, total=total, desc=desc, leave=False, disable=None)


__all__ = [
    "DTYPES",
    "OUTPUT_PAD",
    "PRECISIONS",
    "SentenceEmbedding",
    "cast_for_inference",
    "check_precision",
    "cpu_has_bf16_instructions",
    "cpu_streams",
    "feature_length",
    "length_sorted_batches",
    "predict",
    "sorted_batch_sizes",
    "predict_groups",
    "resolve_device",
    "warn_if_bf16_emulated",
    "truncated_encoder",
]
