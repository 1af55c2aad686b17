"""glibc malloc settings for compute on the CPU: keep freed tensor memory for reuse.

PyTorch's CPU tensors come from ``malloc``. glibc serves a request above its mmap threshold
(dynamic, at most 32 MiB by default) with a fresh ``mmap`` and unmaps it on ``free``, and
returns the top of the heap to the system above its trim threshold. An encoder's activations
(e5-small, a batch of 32 x 384 tokens: a 75 MB feed-forward activation in every layer) are
allocated and freed in every layer of every batch, so each is a new mapping whose pages fault
on first touch and are zeroed by the kernel. Measured on the 2-core Xeon of
``benchmarks/RESULTS.md`` (glibc 2.36): a GELU over ``[8000, 1536]`` took 25.8 ms with glibc's
defaults and 8.1 ms with the settings below, a ``[8000, 384] x [384, 1536]`` linear layer 63 ms
and 50 ms. It is why Intel's and PyTorch's CPU performance guides preload jemalloc or tcmalloc.

:func:`tune_cpu_allocator` sets, once per process (``mallopt``), a mmap threshold and a trim
threshold of 1 GiB (freed blocks stay with the process and are reused) and asks for at most
one malloc arena. Older glibc releases refuse a mmap threshold above 32 MiB, the cap their
dynamic threshold reaches anyway; there nothing is set.

Threads: a thread arena's heaps are at most 64 MiB; a larger block is always mapped, and an
emptied extra heap is unmapped, whatever the thresholds. The arena limit only binds threads
that get an arena after it is set, and glibc may still hand them an arena that an earlier
thread (a tokenizer's, an OpenMP worker's) made. The CPU streams of
:mod:`xstilts.models.predict` run in threads, so set late the settings do part of their work:
the eval benchmark's xstilts process (fp32, 20 examples per language) had 2.25M minor page
faults and 5.8 s of system time with glibc's defaults, 0.62M and 2.7 s with the settings set
when its first batch ran, 0.43M and 1.9 s with the same settings from the process's start
(``MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824``,
which is how to get all of it).

What they cost: freed memory stays with the process (up to 1 GiB free at the heap's top,
per process) instead of going back to the system at once. The inference loop and the training
engine set them when they compute on the CPU; nothing is set for GPU work. Nothing is changed
(a debug message says why) where the C library is not glibc, with ``XSTILTS_MALLOC_TUNING=0``,
and when the user chose allocator settings already (``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``glibc.malloc``
tunables in ``GLIBC_TUNABLES``, or jemalloc / tcmalloc / mimalloc in ``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

logger = logging.getLogger(__name__)

#: environment switch: "0" (or false/no/off) leaves glibc's malloc settings as they are
MALLOC_TUNING_ENV = "XSTILTS_MALLOC_TUNING"
#: glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
#: the mmap and trim thresholds set
THRESHOLD = 1 << 30
#: environment variables through which a user chose their own allocator settings
_USER_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def _skip_reason() -> str | None:
    """Why the settings are not applied in this process (None: they are)."""
    if os.environ.get(MALLOC_TUNING_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return f"{MALLOC_TUNING_ENV}=0"
    if not sys.platform.startswith("linux"):
        return f"platform {sys.platform} (glibc only)"
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc_version = ""
    if not libc_version.startswith("glibc"):
        return "the C library is not glibc"
    chosen = [name for name in _USER_SETTINGS if os.environ.get(name)]
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    preload = os.environ.get("LD_PRELOAD", "")
    chosen += [f"LD_PRELOAD ({name})" for name in _OTHER_ALLOCATORS if name in preload]
    if chosen:
        return f"allocator settings already chosen: {', '.join(chosen)}"
    return None


@functools.cache
def tune_cpu_allocator() -> dict[str, int] | None:
    """Apply the module's malloc settings once per process; the settings applied, or None."""
    reason = _skip_reason()
    if reason is not None:
        logger.debug("malloc settings left as they are: %s", reason)
        return None
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError) as exc:
        logger.debug("malloc settings left as they are: no mallopt (%s)", exc)
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not mallopt(M_MMAP_THRESHOLD, THRESHOLD):
        # older glibc caps it at 32 MiB, which its dynamic threshold reaches anyway: no gain
        logger.debug("malloc settings left as they are: this glibc refuses a mmap threshold of %d", THRESHOLD)
        return None
    applied = {"mmap_threshold": THRESHOLD}
    if mallopt(M_TRIM_THRESHOLD, THRESHOLD):
        applied["trim_threshold"] = THRESHOLD
    if mallopt(M_ARENA_MAX, 1):  # accepted always; binds only threads without an arena yet
        applied["arena_max"] = 1
    logger.debug("malloc settings for CPU compute: %s", applied)
    return applied


__all__ = ["MALLOC_TUNING_ENV", "tune_cpu_allocator"]
