"""Error types shared by every layer.

Every error a user can cause derives from :class:`XStiltsError`; the CLI prints
its message (no traceback) and exits with status 2. Messages say what was wrong,
where (file, line, key) and what to do.
"""

from __future__ import annotations

from pathlib import Path


class XStiltsError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(XStiltsError):
    """A spec/config value is invalid. ``key`` is the dotted path of the offending key."""

    def __init__(self, message: str, *, key: str | None = None, file: str | Path | None = None):
        self.key = key
        self.file = str(file) if file is not None else None
        where = ""
        if file is not None:
            where += f"{file}"
        if key is not None:
            where += f"{': ' if where else ''}key '{key}'"
        super().__init__(f"{where}: {message}" if where else message)


class DataError(XStiltsError):
    """A data file is malformed. Names the file, the line/record and what was expected."""

    def __init__(self, file: str | Path, message: str, *, line: int | None = None, record: str | None = None):
        self.file = str(file)
        self.line = line
        self.record = record
        loc = self.file
        if line is not None:
            loc += f", line {line}"
        if record is not None:
            loc += f", record {record}"
        self.detail = message
        super().__init__(f"{loc}: {message}")


class DataNotFoundError(XStiltsError):
    """The requested task/language/split has no data locally (or on the hub when offline)."""


class UnknownNameError(XStiltsError):
    """An unknown task / language / model / option; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]):
        self.kind, self.name, self.valid = kind, name, list(valid)
        shown = ", ".join(sorted(self.valid))
        super().__init__(f"unknown {kind} '{name}'. Valid values: {shown}")


class ModelLoadError(XStiltsError):
    """A model could not be loaded (not cached offline, not a model directory, …)."""


class CheckpointError(XStiltsError):
    """A directory that should be a checkpoint is not one, or is from another run."""


class StoreError(XStiltsError):
    """The results store (``OUTPUT_DIR/results.sqlite``) cannot be used: corrupt or unreadable."""


class DiskFullError(XStiltsError):
    """A write failed because a file system is full. Names the file system and what to do."""
