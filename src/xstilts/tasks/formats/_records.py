"""Field access for the records a format reads examples from: JSON objects and hub rows.

A format turns one *record* into one example. :class:`JsonRecord` wraps one object of a
JSON-lines file (errors name the file and line); :class:`HubRows` wraps the rows of a
``datasets.Dataset`` with the catalog's field mapping (``HubSource.fields``) and the
dataset's ``ClassLabel`` names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xstilts.errors import DataError


def get_path(obj: Any, dotted: str) -> Any:
    """``obj['a']['b']`` for ``'a.b'``; KeyError if a part is missing."""
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def dig(obj: Any, dotted: str) -> Any:
    """Like :func:`get_path`, but None where a part is missing."""
    try:
        return get_path(obj, dotted)
    except KeyError:
        return None


def _type_names(types: type | tuple[type, ...]) -> str:
    return types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)


def require_field(path: str | Path, obj: dict[str, Any], key: str, *, line: int | None = None,
                  record: str | None = None, types: type | tuple[type, ...] | None = None) -> Any:
    """``obj[key]`` (dotted keys allowed); DataError naming the file, line/record and key otherwise."""
    try:
        value = get_path(obj, key)
    except KeyError:
        raise DataError(path, f"missing field '{key}'", line=line, record=record) from None
    if types is not None and not isinstance(value, types):
        raise DataError(path, f"field '{key}' should be {_type_names(types)}, got {type(value).__name__}",
                        line=line, record=record)
    return value


def check_label(path: str | Path, label: str, label_list: Sequence[str] | None, *, line: int | None = None,
                record: str | None = None) -> str:
    """``label`` when the task has no label set or the set has it; DataError otherwise."""
    if label_list is not None and label not in label_list:
        raise DataError(path, f"unknown label {label!r}; expected one of {list(label_list)}", line=line, record=record)
    return label


class JsonRecord:
    """One JSON object of a file, read through a field mapping (example field -> dotted JSON key)."""

    def __init__(self, path: str | Path, obj: dict[str, Any], keys: Mapping[str, str], line: int | None,
                 index: int = 0):
        self.path, self.obj, self.keys, self.line = path, obj, keys, line
        self.index = index

    @property
    def id(self) -> str:
        """The record's ``id`` field, else its position among the examples read so far."""
        value = dig(self.obj, self.keys.get("id", "id"))
        return str(self.index) if value is None else str(value)

    def require(self, name: str, types: type | tuple[type, ...] | None = None) -> Any:
        """The value of example field ``name``; DataError naming file and line when absent/mistyped."""
        return require_field(self.path, self.obj, self.keys.get(name, name), line=self.line, types=types)

    def opt(self, name: str) -> Any:
        """The value of example field ``name``, None when absent."""
        return dig(self.obj, self.keys.get(name, name))

    def label(self, value: Any, label_list: Sequence[str] | None) -> str:
        """A string label checked against the task's label set."""
        return check_label(self.path, str(value), label_list, line=self.line)

    def error(self, message: str, record: str | None = None) -> DataError:
        """A DataError at this record."""
        return DataError(self.path, message, line=self.line, record=record)


class HubRows:
    """The rows of a hub dataset with the catalog's field mapping (``HubSource.fields``).

    A field missing from the mapping is read from the column of the same name; a mapping to
    a list of columns reads each (several choice columns). ``label_names`` gives the names of
    a ``ClassLabel`` column (or of a sequence of them, for tags).
    """

    def __init__(self, rows: Iterable[dict[str, Any]], fields: Mapping[str, Any], options: Mapping[str, Any],
                 source: str):
        self.rows, self.fields, self.options, self.source = rows, fields, options, source
        self.features = getattr(rows, "features", None) or {}

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return iter(enumerate(self.rows))

    def has(self, name: str) -> bool:
        """Whether the mapping names a column for example field ``name``."""
        return name in self.fields

    def get(self, row: dict[str, Any], name: str) -> Any:
        """Example field ``name`` of ``row`` (None when the column is absent)."""
        key = self.fields.get(name, name)
        if isinstance(key, list):
            return [dig(row, k) for k in key]
        return dig(row, key)

    def id(self, row: dict[str, Any], index: int) -> str:
        """The row's id column when the mapping names one, else its index."""
        return str(dig(row, self.fields["id"])) if "id" in self.fields else str(index)

    def label_names(self, name: str) -> list[str] | None:
        """Names of the ``ClassLabel`` behind example field ``name`` (None when it is not one)."""
        key = self.fields.get(name, name)
        feat = self.features.get(key) if isinstance(key, str) else None
        inner = getattr(feat, "feature", feat)  # Sequence(ClassLabel) for tags
        return list(getattr(inner, "names", []) or []) or None

    def option(self, name: str, language: str | None = None) -> Any:
        """A hub option; with ``language``, a per-language mapping is resolved for it."""
        value = self.options.get(name)
        if isinstance(value, dict) and language is not None:
            return value.get(language)
        return value

    def error(self, message: str, record: str | None = None) -> DataError:
        """A DataError naming the hub source."""
        return DataError(f"hub:{self.source}", message, record=record)
