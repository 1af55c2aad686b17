"""bf16 inference on the CPU with each linear layer's bias (and a following GELU) fused into its GEMM.

In eager PyTorch a bf16 ``nn.Linear`` on the CPU is ``addmm``: the bias is first copied into
the output (one pass over it), then oneDNN multiplies into it; a BERT/XLM-R feed-forward's GELU
is one more pass. oneDNN can do both inside the GEMM (its post-ops): ``torch.ops.mkldnn.
_linear_pointwise`` is that call, the one torch's own compiler (Inductor, CPU freezing) emits
for these patterns. On e5-small's forward passes over length-sorted eval batches it took
0.85 of the unfused time (2-core Xeon with AMX, ABBA-interleaved per batch, bf16); in fp32 the
gain was 3-4 %, inside the noise, and fp32 stays exact, so only bf16 is fused.

:func:`fused_cpu_linears` patches, for the duration of a ``with`` block, the ``forward`` of
every plain ``nn.Linear`` with a bias whose weight is bf16 on the CPU (instance attributes;
removed on exit, so the model and its ``state_dict`` are unchanged and its hooks still run), and
the ``forward`` of transformers ``*Intermediate`` blocks made of exactly ``dense`` then an exact
GELU (no other children, no hooks on ``dense``) to the fused linear + GELU. A patched layer
runs its own ``forward`` instead when gradients are on or the input's dtype is not its
weight's. ``predict`` enters it for bf16 models on the CPU outside autocast; layers without a
bias (T5/mT5) are left alone (nothing to fuse; not measured).

The op is internal to torch: the first use checks it against ``F.linear`` (+ ``F.gelu``) on a
small input and, when it is missing or disagrees, everything runs unfused (one debug line). It
is also off on a CPU without native bf16 (AVX512-BF16 or AMX), where oneDNN emulates bf16 and
the fusion was never measured. ``XSTILTS_CPU_FUSION=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: environment switch: "0" runs every linear layer unfused
ENV = "XSTILTS_CPU_FUSION"


def _fused(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: bool) -> Tensor:
    flat = x.reshape(-1, x.shape[-1])
    if gelu:
        out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "gelu", [], "none")
    else:
        out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
    return out.reshape(*x.shape[:-1], out.shape[-1])


@functools.cache
def fused_linear_available() -> bool:
    """Whether this torch's oneDNN fused linear runs here and agrees with the unfused ops (bf16)."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        logger.debug("oneDNN fused linear unavailable in this torch: bf16 CPU inference runs unfused")
        return False
    from xstilts.models.predict import cpu_has_bf16_instructions  # predict imports this module

    if not cpu_has_bf16_instructions():
        logger.debug("no native bf16 on this CPU: bf16 CPU inference runs unfused")
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 64, generator=gen).bfloat16()
    w = (torch.randn(48, 64, generator=gen) / 8).bfloat16()
    b = torch.randn(48, generator=gen).bfloat16()
    try:  # the caller may be inside autocast (a training run's bf16 dev evaluation): the check is not
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            plain = _fused(x, w, b, gelu=False).float()
            act = _fused(x, w, b, gelu=True).float()
            ref = F.linear(x.float(), w.float(), b.float())
            # bf16 output rounding is 2^-8 relative; the check catches a wrong op, not rounding
            ok = (torch.allclose(plain, ref, rtol=2e-2, atol=2e-2)
                  and torch.allclose(act, F.gelu(ref), rtol=2e-2, atol=2e-2))
    except Exception as exc:  # noqa: BLE001 - any failure of an internal op means: run unfused
        logger.debug("oneDNN fused linear failed its check (%s): bf16 CPU inference runs unfused", exc)
        return False
    if not ok:
        logger.debug("oneDNN fused linear disagrees with F.linear: bf16 CPU inference runs unfused")
    return ok


def _fusable(linear: nn.Module) -> bool:
    """A plain bf16 CPU ``nn.Linear`` with a bf16 bias (the post-op the fusion saves)."""
    weight = getattr(linear, "weight", None)
    bias = getattr(linear, "bias", None)
    return (type(linear) is nn.Linear and weight is not None and weight.dtype == torch.bfloat16
            and weight.device.type == "cpu" and weight.dim() == 2
            and bias is not None and bias.dtype == torch.bfloat16)


def _fusable_intermediate(module: nn.Module) -> bool:
    """A transformers ``*Intermediate`` block whose forward is exactly ``act(dense(x))``: only those
    two children (RoBERTa-PreLayerNorm's also holds a LayerNorm it runs first), an erf GELU, and
    nothing on ``dense`` that its own call would run (hooks, a patched forward)."""
    dense = getattr(module, "dense", None)
    if not type(module).__name__.endswith("Intermediate") or dense is None or not _fusable(dense):
        return False
    if {name for name, _ in module.named_children()} - {"dense", "intermediate_act_fn"}:
        return False
    hooked = dense._forward_hooks or dense._forward_pre_hooks or "forward" in vars(dense)
    return not hooked and _exact_gelu(getattr(module, "intermediate_act_fn", None)) and "forward" not in vars(module)


def _exact_gelu(act: object) -> bool:
    """An erf GELU (transformers' ``GELUActivation`` on ``F.gelu``, or ``nn.GELU()``), not the tanh form."""
    if type(act).__name__ == "GELUActivation":
        return getattr(act, "act", None) is F.gelu
    return type(act) is nn.GELU and act.approximate == "none"


def _fused_forward(module: nn.Module, linear: nn.Linear, gelu: bool) -> Callable[[Tensor], Tensor]:
    """``module``'s patched forward: ``linear`` (+ GELU) fused, its own forward where the fused op
    does not apply (gradients wanted, or an input of another dtype, e.g. under autocast)."""
    own = type(module).forward.__get__(module)

    def forward(x: Tensor) -> Tensor:
        weight = linear.weight  # read at call time: a parameter may be reassigned inside the block
        if x.dtype != weight.dtype or torch.is_grad_enabled():
            return own(x)
        return _fused(x, weight, linear.bias, gelu)

    return forward


@contextlib.contextmanager
def fused_cpu_linears(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s bf16 CPU linear layers run fused (see the module docstring);
    yields how many modules were patched (0 when the op is unavailable or nothing is bf16)."""
    # one walk: modules() visits a block before its children, so a fused block's `dense` is
    # known (and skipped: the block's forward no longer calls it) by the time it comes up
    plan: list[tuple[nn.Module, nn.Linear, bool]] = []
    in_block: set[int] = set()
    for module in model.modules():
        if _fusable_intermediate(module):
            plan.append((module, module.dense, True))
            in_block.add(id(module.dense))
        elif id(module) not in in_block and _fusable(module) and "forward" not in vars(module):
            plan.append((module, module, False))
    patched: list[nn.Module] = []
    try:
        if plan and fused_linear_available():  # no check at all for a model with nothing to fuse
            for module, linear, gelu in plan:
                module.forward = _fused_forward(module, linear, gelu)
                patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            vars(module).pop("forward", None)
