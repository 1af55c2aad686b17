"""Language and task metadata for the analyses, tolerant of unknown names.

The analyses must not fail on a language or task the catalog does not know (a user's
own data, a code typo in an old run): they get ``None`` fields and the report says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


@dataclass(frozen=True)
class TaskInfo:
    """What the analyses need of a task; fields are None for a task the catalog lacks."""

    name: str
    primary_metric: str | None = None
    format: str | None = None
    domain: str | None = None
    label_list: tuple[str, ...] | None = None
    eval_split: str | None = None
    known: bool = False


def language_info(code: str) -> LanguageInfo:
    """Look ``code`` up in :mod:`xstilts.languages`; unknown codes give an all-None record."""
    try:
        from xstilts.languages import find_language
    except ImportError:  # languages layer not available
        log.debug("xstilts.languages not importable; no metadata for %s", code)
        return LanguageInfo(code)
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


def task_info(name: str) -> TaskInfo:
    """Look ``name`` up in the task catalog; unknown names give ``known=False``."""
    try:
        from xstilts.errors import UnknownNameError
        from xstilts.tasks.catalog import get_task
    except ImportError:
        log.debug("xstilts.tasks.catalog not importable; no metadata for %s", name)
        return TaskInfo(name)
    try:
        spec = get_task(name)
    except UnknownNameError:
        return TaskInfo(name)
    labels = getattr(spec, "label_list", None)
    return TaskInfo(
        name=name,
        primary_metric=getattr(spec, "primary_metric", None),
        format=getattr(spec, "format", None),
        domain=getattr(spec, "domain", None),
        label_list=tuple(labels) if labels else None,
        eval_split=getattr(spec, "eval_split", None),
        known=True,
    )
