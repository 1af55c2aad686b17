"""The five formats: how examples become features and model outputs become predictions.

``get_format(name)`` returns the (stateless, shared) instance of a format.
"""

from __future__ import annotations

from xstilts.errors import UnknownNameError
from xstilts.tasks.formats.base import FeaturizeOptions, Format
from xstilts.tasks.formats.classification import ClassificationFormat
from xstilts.tasks.formats.extractive_qa import ExtractiveQAFormat
from xstilts.tasks.formats.multiple_choice import MultipleChoiceFormat
from xstilts.tasks.formats.retrieval import RetrievalFormat
from xstilts.tasks.formats.tagging import TaggingFormat

_FORMATS: dict[str, Format] = {
    cls.name: cls()
    for cls in (ClassificationFormat, MultipleChoiceFormat, ExtractiveQAFormat, TaggingFormat, RetrievalFormat)
}

FORMAT_NAMES: tuple[str, ...] = tuple(_FORMATS)


def get_format(name: str) -> Format:
    """The format called ``name``; :class:`UnknownNameError` listing the valid ones otherwise."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise UnknownNameError("format", name, list(_FORMATS)) from None


__all__ = [
    "FORMAT_NAMES",
    "ClassificationFormat",
    "ExtractiveQAFormat",
    "FeaturizeOptions",
    "Format",
    "MultipleChoiceFormat",
    "RetrievalFormat",
    "TaggingFormat",
    "get_format",
]
