"""Language and task metadata for the analyses, tolerant of unknown names.

The analyses must not fail on a language or task the catalog does not know (a user's
own data, a code typo in an old run): an unknown language gets ``None`` fields, an unknown
task is ``None`` instead of its :class:`TaskSpec`, and the report says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xstilts.errors import UnknownNameError
from xstilts.languages import find_language
from xstilts.tasks.catalog import TaskSpec, get_task

log = logging.getLogger(__name__)

LANGUAGE_FIELDS = ("language_name", "family", "genus", "script", "resource_class")


@dataclass(frozen=True)
class LanguageInfo:
    """What the analyses need of a language; every field but ``code`` may be None."""

    code: str
    name: str | None = None
    family: str | None = None
    genus: str | None = None
    script: str | None = None
    resource_class: int | None = None

    @property
    def known(self) -> bool:
        return self.name is not None

    @property
    def label(self) -> str:
        """Human label for figures: "German (de)", or the bare code when unknown."""
        return f"{self.name} ({self.code})" if self.name else self.code


def language_info(code: str) -> LanguageInfo:
    """Look ``code`` up in :mod:`xstilts.languages`; unknown codes give an all-None record."""
    lang = find_language(code)
    if lang is None:
        return LanguageInfo(code)
    return LanguageInfo(
        code=code,
        name=lang.name,
        family=lang.family,
        genus=lang.genus,
        script=lang.script,
        resource_class=lang.resource_class,
    )


def find_task(name: str) -> TaskSpec | None:
    """The catalog's :class:`TaskSpec` of ``name``, or None for a task the catalog does not know."""
    try:
        return get_task(name)
    except UnknownNameError:
        return None
