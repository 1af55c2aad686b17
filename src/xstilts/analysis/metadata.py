"""Language and task metadata for the analyses, tolerant of unknown names.

The analyses must not fail on a language or task the catalog does not know (a user's
own data, a code typo in an old run): an unknown language is ``None`` instead of its
:class:`~xstilts.languages.Language`, an unknown task ``None`` instead of its
:class:`TaskSpec`, and the report says so.
"""

from __future__ import annotations

from xstilts.errors import UnknownNameError
from xstilts.languages import find_language
from xstilts.tasks.catalog import TaskSpec, get_task

#: the columns groupings.attach_language_metadata adds
LANGUAGE_FIELDS = ("language_name", "family", "genus", "script", "resource_class")


def language_label(code: str) -> str:
    """Human label for figures: "German (de)", or "xx (no metadata)" for a code the table lacks."""
    lang = find_language(code)
    return f"{lang.name} ({code})" if lang is not None else f"{code} (no metadata)"


def language_name(code: str) -> str:
    """The language's name, or "(no metadata)"."""
    lang = find_language(code)
    return lang.name if lang is not None else "(no metadata)"


def find_task(name: str) -> TaskSpec | None:
    """The catalog's :class:`TaskSpec` of ``name``, or None for a task the catalog does not know."""
    try:
        return get_task(name)
    except UnknownNameError:
        return None
