"""Reading configuration files and turning validation errors into :class:`ConfigError`.

The one YAML reader (:func:`read_yaml`) used for specs, stage configs and the task catalog,
and the one conversion from a pydantic ``ValidationError`` to a ``ConfigError``
(:func:`config_error`) that names the file and the dotted key. Below every layer: it knows
pydantic and YAML, nothing of tasks, models or experiments.

The reader is stricter than ``yaml.safe_load``: a key given twice in one mapping is an error
naming the key and both lines (``safe_load`` silently keeps the last one, which once
dropped a whole target from a spec); bytes that are not UTF-8 are an error naming the byte
offset, line and column; a syntax error names its line and column.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from xstilts.errors import ConfigError, suggest

M = TypeVar("M", bound=BaseModel)

_MERGE_TAG = "tag:yaml.org,2002:merge"
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(_Loader):  # type: ignore[misc,valid-type]
    """A safe loader that refuses a mapping with the same key twice (``<<`` merges excepted)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # unhashable key: the base constructor reports it
                continue
        return super().construct_mapping(node, deep=deep)


def _decode(data: bytes, file: Path) -> str:
    """UTF-8 text of ``data`` (a leading BOM dropped); ConfigError naming the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[:exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                          f"(line {line}, column {column}); save the file as UTF-8", file=file) from None


def _syntax_error(exc: yaml.YAMLError, text: str, file: Path) -> ConfigError:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (e.g. a control byte)
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return ConfigError(f"invalid YAML at line {line}, column {column}: character U+{code:04X} is not allowed",
                           file=file)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return ConfigError(f"invalid YAML{where}: {problem}" + (f" ({context})" if context else ""), file=file)


def parse_yaml(text: str, file: str | Path | None = None) -> Any:
    """Parse YAML ``text`` (safe types only); ConfigError for syntax errors and duplicate keys."""
    where = Path(file) if file is not None else Path("<string>")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(f"given twice in one mapping (lines {dup.first} and {dup.second}); YAML would "
                          "silently keep only the last one: remove or merge one of them",
                          key=str(dup.key), file=where) from None
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text, where) from None


def read_yaml(path: str | Path, *, what: str = "config file") -> Any:
    """Read and parse the YAML file ``path``: the one YAML reader of the package.

    Raises :class:`ConfigError` naming the file when it is missing or unreadable, is not
    UTF-8 (byte offset, line, column), is not valid YAML (line, column) or gives a key twice
    in one mapping (the key and both lines).
    """
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{what} not found", file=file)
    if not file.is_file():
        raise ConfigError(f"{what} is not a file", file=file)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror or exc}", file=file) from None
    return parse_yaml(_decode(data, file), file)


def read_yaml_mapping(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """:func:`read_yaml` for files whose top level is a mapping (an empty file is ``{}``)."""
    data = read_yaml(path, what=what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", file=path)
    return data


# --------------------------------------------------------------------------- validation errors


def _members(tp: Any) -> list[Any]:
    """The non-None members of a union (``[tp]`` when not a union), Annotated unwrapped."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [_members(a)[0] for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _fields(tp: Any) -> dict[str, Any] | None:
    """Field name -> annotation of a model or dataclass type (None for anything else)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(tp)}
    return None


def _union_member(members: list[Any], tag: str) -> Any:
    """The member of a union that pydantic's loc ``tag`` names ("StepSpec", "dict[str,int]",
    "function-after[check(), StepSpec]", ...); Any when it names a scalar."""
    name = tag.rsplit(", ", 1)[-1].rstrip("]") if tag.startswith("function-") else tag.split("[", 1)[0]
    for member in members:
        origin = typing.get_origin(member)
        if getattr(member, "__name__", None) == name or getattr(origin, "__name__", None) == name:
            return member
    return Any


def _step(tp: Any, part: Any) -> tuple[Any, bool]:
    """The type one loc ``part`` below ``tp``, and whether ``part`` is a real key (not a union tag)."""
    members = _members(tp)
    if isinstance(part, str) and len(members) > 1:  # pydantic names the union member it tried
        return _union_member(members, part), False
    if isinstance(part, str) and part.startswith("function-"):
        return tp, False
    tp = members[0] if members else tp
    fields = _fields(tp)
    if fields is not None:
        return fields.get(str(part), Any), True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict and len(args) == 2:
        return args[1], True
    if origin in (list, tuple, set, frozenset) and args:
        return args[0], True
    return Any, True


def _shown_loc(root: Any, loc: Iterable[Any], hidden: frozenset[str]) -> tuple[list[Any], Any]:
    """The user-facing parts of ``loc`` (union tags, validator names and ``hidden`` fields
    dropped) and the type the last part points into."""
    tp, shown = root, []
    for part in loc:
        tp, real = _step(tp, part)
        if real and part not in hidden:
            shown.append(part)
    return shown, tp


def _key(parts: list[Any], prefix: str, brackets: bool) -> str:
    out = prefix
    for p in parts:
        if isinstance(p, int) and brackets:
            out += f"[{p}]"
        else:
            out += f"{'.' if out else ''}{p}"
    return out or "<root>"


def _message(err: dict[str, Any], parent: Any, hidden: frozenset[str]) -> str:
    kind = err["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = [k for k in (_fields(_members(parent)[0]) or {}) if k not in hidden]
        close = suggest(str(err["loc"][-1]), allowed) if err.get("loc") and allowed else []
        hint = f". Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return "unknown key" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "") + hint
    if kind in ("missing", "missing_argument"):
        return "required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = err.get("input")
    if "input" in err and kind not in ("value_error", "assertion_error") and not isinstance(value, (dict, list)):
        msg += f" (got {value!r})"
    return msg


def config_error(exc: ValidationError, *, file: str | Path | None = None, model: Any = None, prefix: str = "",
                 brackets: bool = False, hidden: Iterable[str] = ()) -> ConfigError:
    """The one conversion of a pydantic ``ValidationError`` into a :class:`ConfigError`.

    Names ``file`` and the dotted key of the most specific problem (``prefix`` + its location;
    list indices as ``.0`` or, with ``brackets``, ``[0]``), says what was expected (for an
    unknown key: the keys allowed there, read from ``model``, the validated type), and counts
    the other problems. ``hidden`` are internal field names left out of the shown key.
    """
    hidden_set = frozenset(hidden)
    errors = exc.errors()
    if not errors:  # pragma: no cover - pydantic always reports at least one
        return ConfigError(str(exc), key=prefix or None, file=file)
    root = model if model is not None else Any
    # the deepest location is the most specific (a union reports every member it tried)
    first = max(errors, key=lambda e: len(e["loc"]))
    parts, _ = _shown_loc(root, first["loc"], hidden_set)
    _, parent = _shown_loc(root, first["loc"][:-1], hidden_set)
    msg = _message(first, parent, hidden_set)
    key = _key(parts, prefix, brackets)
    # other problems; a location above the first one is another member of the same union, not news
    others = sorted(k for k in {_key(_shown_loc(root, e["loc"], hidden_set)[0], prefix, brackets) for e in errors}
                    if k != key and not key.startswith((k + ".", k + "[")))
    if others:
        msg += f" (+{len(others)} more problem{'s' if len(others) > 1 else ''}: {', '.join(others)})"
    return ConfigError(msg, key=key, file=file)


def validate_model(model: type[M], data: Any, *, file: str | Path | None = None, prefix: str = "",
                   brackets: bool = False, hidden: Iterable[str] = ()) -> M:
    """``model.model_validate(data)``, a validation error raised as :func:`config_error`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, file=file, model=model, prefix=prefix, brackets=brackets, hidden=hidden) from None


# --------------------------------------------------------------------------- partial models


class Overrides(BaseModel):
    """Base of :func:`partial_model` classes: some settings of another model, all optional."""

    model_config = ConfigDict(extra="forbid")

    def overrides(self) -> dict[str, Any]:
        """The settings given explicitly (an explicit ``null`` included), as python values."""
        return self.model_dump(exclude_unset=True)


def partial_model(model: type[BaseModel], name: str, *, exclude: Iterable[str] = (),
                  base: type[Overrides] = Overrides) -> type[Overrides]:
    """A model with every field of ``model`` except ``exclude``, each optional (default None)
    with the same type and constraints: overrides validated where they are written, and
    defined once, by ``model``."""
    skip = set(exclude)
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        if field_name in skip:
            continue
        inner = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[field_name] = (inner | None, Field(default=None, description=info.description))
    return create_model(name, __base__=base, __module__=base.__module__, **fields)
