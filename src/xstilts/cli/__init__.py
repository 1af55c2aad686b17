"""The ``xstilts`` command line. Thin: parse, call one function of a layer below, print.

Each command group lives in its own module and registers itself on :data:`app`.
Heavy imports (torch, transformers) happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

from xstilts.cli._app import app, main  # noqa: F401

# register command groups (import for side effects)
from xstilts.cli import (  # noqa: F401,E402
    models,
    tasks,
    langs,
    data,
    train,
    eval as eval_,
    run,
    report,
    store,
    export,
    summarize,
)

__all__ = ["app", "main"]
