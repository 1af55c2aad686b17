"""bf16 inference on the CPU with each linear layer's bias (and a following GELU) fused into its GEMM.

In eager PyTorch a bf16 ``nn.Linear`` on the CPU is ``addmm``: the bias is first copied into
the output (one pass over it), then oneDNN multiplies into it; a BERT/XLM-R feed-forward's GELU
is one more pass. oneDNN can do both inside the GEMM (its post-ops): ``torch.ops.mkldnn.
_linear_pointwise`` is that call, the one torch's own compiler (Inductor, CPU freezing) emits
for these patterns. On e5-small's forward passes over length-sorted eval batches it took
0.85 of the unfused time (2-core Xeon with AMX, ABBA-interleaved per batch, bf16); in fp32 the
gain was 3-4 %, inside the noise, and fp32 stays exact, so only bf16 is fused.

:func:`fused_cpu_linears` patches, for the duration of a ``with`` block, the ``forward`` of
every plain ``nn.Linear`` whose weight is bf16 on the CPU (instance attributes; removed on
exit, so the model, its ``state_dict`` and its hooks are unchanged), and the ``forward`` of
transformers ``*Intermediate`` blocks (``dense`` then an exact GELU) to the fused
linear + GELU. Used only under ``torch.inference_mode`` (no autograd through the fused op).

The op is internal to torch: the first use checks it against ``F.linear`` (+ ``F.gelu``) on a
small input and, when it is missing or disagrees, everything runs unfused (one debug line).
``XSTILTS_CPU_FUSION=0`` turns it off.
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
    weight = getattr(linear, "weight", None)
    return (type(linear) is nn.Linear and weight is not None and weight.dtype == torch.bfloat16
            and weight.device.type == "cpu" and weight.dim() == 2
            and (linear.bias is None or linear.bias.dtype == torch.bfloat16))


def _exact_gelu(act: object) -> bool:
    """An erf GELU (transformers' ``GELUActivation`` on ``F.gelu``, or ``nn.GELU()``), not the tanh form."""
    if type(act).__name__ == "GELUActivation":
        return getattr(act, "act", None) is F.gelu
    return type(act) is nn.GELU and act.approximate == "none"


def _linear_forward(linear: nn.Linear, gelu: bool = False) -> Callable[[Tensor], Tensor]:
    weight, bias = linear.weight, linear.bias
    return lambda x: _fused(x, weight, bias, gelu)


@contextlib.contextmanager
def fused_cpu_linears(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s bf16 CPU linear layers run fused (see the module docstring);
    yields how many modules were patched (0 when the op is unavailable or nothing is bf16)."""
    patched: list[nn.Module] = []
    try:
        if any(_fusable(m) for m in model.modules()) and fused_linear_available():
            intermediate_dense: set[int] = set()
            for module in model.modules():
                dense, act = getattr(module, "dense", None), getattr(module, "intermediate_act_fn", None)
                if (type(module).__name__.endswith("Intermediate") and dense is not None and _fusable(dense)
                        and _exact_gelu(act) and "forward" not in vars(module)):
                    module.forward = _linear_forward(dense, gelu=True)
                    patched.append(module)
                    intermediate_dense.add(id(dense))
            for module in model.modules():
                if id(module) not in intermediate_dense and _fusable(module) and "forward" not in vars(module):
                    module.forward = _linear_forward(module)
                    patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            vars(module).pop("forward", None)
