"""The end of a launched process's process group.

``accelerate`` sets up the process group (gloo or NCCL) when a stage's ``Accelerator`` is
made under ``accelerate launch`` / ``torchrun``, and nothing tears it down. A process that
exits with it alive races gloo's worker threads against interpreter shutdown, and now and
then aborts ("terminate called without an active exception", SIGABRT) after its work is
done, so the launcher reports a failed stage. The group belongs to the process, not to a
stage (a process may train and then evaluate on it), so the entry points that launched
processes run (``xstilts`` and ``python -m xstilts.experiments.executor``) release it when
they finish without error. After an error it is left alone: a peer may still wait on a
collective, and the process exits non-zero anyway.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)


def release_process_group() -> bool:
    """Destroy the default process group if this process set one up; True if it did.

    Cheap when torch was never imported (nothing to release then)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    dist.destroy_process_group()
    logger.debug("process group destroyed")
    return True
