"""`xstilts data` command group (to be filled by its layer's owner)."""

from __future__ import annotations

from xstilts.cli._app import app, console, handle_errors  # noqa: F401
