"""The formats: how examples are read, become features, and model outputs become predictions.

Formats live in a registry keyed by name. ``get_format(name)`` returns the (stateless,
shared) instance; ``register_format`` adds one (a subclass of :class:`Format`, e.g. from
your own module), after which catalog entries, the generic ``jsonl_<name>`` reader,
training and evaluation accept it. Every list of formats elsewhere is derived from here
(:func:`format_names`).
"""

from __future__ import annotations

from xstilts.errors import ConfigError, UnknownNameError
from xstilts.tasks.formats._records import HubRows, JsonRecord
from xstilts.tasks.formats.base import FeaturizeOptions, Format
from xstilts.tasks.formats.classification import ClassificationFormat
from xstilts.tasks.formats.extractive_qa import ExtractiveQAFormat
from xstilts.tasks.formats.multiple_choice import MultipleChoiceFormat
from xstilts.tasks.formats.retrieval import RetrievalFormat
from xstilts.tasks.formats.tagging import TaggingFormat

_FORMATS: dict[str, Format] = {}


def register_format(fmt: Format | type[Format], *, replace: bool = False) -> Format:
    """Register a format (an instance or a :class:`Format` subclass) under its ``name``.

    ConfigError when the name is taken (unless ``replace``) or the class misses a ``name``
    / ``head_kind``. Returns the registered instance.
    """
    instance = fmt() if isinstance(fmt, type) else fmt
    if not isinstance(instance, Format):
        raise ConfigError(f"{type(instance).__name__} is not a subclass of xstilts.tasks.formats.Format", key="format")
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not name or not hasattr(instance, "head_kind"):
        raise ConfigError(f"format class {type(instance).__name__} needs a class attribute 'name' (non-empty str) "
                          "and 'head_kind' (a head kind or None)", key="format")
    if name in _FORMATS and not replace and type(_FORMATS[name]) is not type(instance):
        raise ConfigError(f"a format named '{name}' is already registered ({type(_FORMATS[name]).__name__})",
                          key="format")
    _FORMATS[name] = instance
    return instance


def unregister_format(name: str) -> None:
    """Remove a registered format (tests that register their own clean up with this)."""
    get_format(name)
    del _FORMATS[name]


def get_format(name: str) -> Format:
    """The format called ``name``; :class:`UnknownNameError` listing the valid ones otherwise."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise UnknownNameError("format", name, list(_FORMATS)) from None


def format_names() -> tuple[str, ...]:
    """Names of every registered format, in registration order."""
    return tuple(_FORMATS)


for _cls in (ClassificationFormat, MultipleChoiceFormat, ExtractiveQAFormat, TaggingFormat, RetrievalFormat):
    register_format(_cls)

#: the formats that ship with xstilts (``format_names()`` also lists registered ones)
FORMAT_NAMES: tuple[str, ...] = format_names()


__all__ = [
    "FORMAT_NAMES",
    "ClassificationFormat",
    "ExtractiveQAFormat",
    "FeaturizeOptions",
    "Format",
    "HubRows",
    "JsonRecord",
    "MultipleChoiceFormat",
    "RetrievalFormat",
    "TaggingFormat",
    "format_names",
    "get_format",
    "register_format",
    "unregister_format",
]
