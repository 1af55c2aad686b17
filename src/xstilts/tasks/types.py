"""Typed examples: one dataclass per format, shared by readers, featurisers and scorers.

Every example has a string ``id`` unique within its (task, language, split). Labels are
``None`` where a split has no gold labels (e.g. PAN-X test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass
class ClassificationExample:
    """One text (``text_b is None``) or a text pair, with a string label from the task's label set."""

    id: str
    text_a: str
    text_b: str | None = None
    label: str | None = None


@dataclass
class MultipleChoiceExample:
    """A context and question with N candidate answers; ``label`` is the index of the right one.

    For COPA/XCOPA the ``question`` is "cause" / "effect" rendered as a connective by the
    reader (e.g. "What was the cause?"), so the featuriser needs no task-specific code.
    """

    id: str
    context: str
    question: str
    choices: list[str]
    label: int | None = None


@dataclass
class Answer:
    text: str
    start: int  # character offset into the context


@dataclass
class QAExample:
    """Extractive QA (SQuAD v1.1 / v2.0 style). Unanswerable questions have no answers."""

    id: str
    context: str
    question: str
    answers: list[Answer] = field(default_factory=list)
    is_impossible: bool = False
    title: str | None = None


@dataclass
class TaggingExample:
    """A pre-tokenised sentence (words) and one tag per word."""

    id: str
    tokens: list[str]
    tags: list[str] | None = None


@dataclass
class BitextExample:
    """A translation pair for retrieval: ``source`` (non-English) and ``target`` (English)."""

    id: str
    source: str
    target: str


Example = Union[ClassificationExample, MultipleChoiceExample, QAExample, TaggingExample, BitextExample]
