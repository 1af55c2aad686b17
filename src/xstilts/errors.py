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

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...], *,
                 extra: dict[str, str] | None = None):
        self.kind, self.name, self.valid = kind, name, list(valid)
        self.suggestions = suggest(name, self.valid, extra)
        hint = f" Did you mean {' or '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        shown = ", ".join(sorted(self.valid))
        super().__init__(f"unknown {kind} '{name}'.{hint} Valid values: {shown}")


def suggest(name: str, valid: list[str] | tuple[str, ...], extra: dict[str, str] | None = None,
            n: int = 3) -> list[str]:
    """The valid names closest to ``name`` (difflib, case-insensitive), best first, at most ``n``.

    ``extra`` maps other spellings (e.g. language names) to the valid name they stand for;
    a close match among them suggests that valid name."""
    import difflib

    lowered: dict[str, str] = {str(v).lower(): str(v) for v in valid}
    lowered.update({k.lower(): v for k, v in (extra or {}).items() if k.lower() not in lowered})
    key = str(name).strip().lower()
    out: list[str] = []
    for match in difflib.get_close_matches(key, list(lowered), n=n * 2, cutoff=0.6):
        if lowered[match] not in out:
            out.append(lowered[match])
    return out[:n]


class ModelLoadError(XStiltsError):
    """A model could not be loaded (not cached offline, not a model directory, …)."""


class CheckpointError(XStiltsError):
    """A directory that should be a checkpoint is not one, or is from another run."""


class StoreError(XStiltsError):
    """The results store (``OUTPUT_DIR/results.sqlite``) cannot be used: corrupt or unreadable."""


class DiskFullError(XStiltsError):
    """A write failed because a file system is full. Names the file system and what to do."""
