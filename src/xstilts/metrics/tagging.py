"""Tagging scores: entity-level F1 as ``seqeval`` (default, conlleval-like mode) and XTREME UD-POS.

Chunking follows seqeval's default (non-strict) mode, which is the one XTREME's
``third_party/run_tag.py`` and ``evaluate.py`` call for both PAN-X and UD-POS:

* each tag is split into a prefix (its first character) and a type (the rest after an
  optional ``-``; ``_`` when empty), e.g. ``B-PER`` -> (``B``, ``PER``), ``NOUN`` -> (``N``, ``OUN``);
* an ``I-X`` that follows ``O`` or an entity of another type *starts* an entity
  (conlleval's lenient handling of broken IOB2);
* sentences are concatenated with an ``O`` between them and entities are
  ``(type, start, end)`` over that flat sequence, micro-averaged.

For UD-POS this means a run of identical POS tags counts as a single "entity" (XTREME
reports this ``f1``); :func:`pos_scores` also reports plain token accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

from xstilts.errors import XStiltsError


def _split_tag(tag: str) -> tuple[str, str]:
    if not tag:
        raise XStiltsError("tagging: empty tag string in a tag sequence")
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        # E->E, E->I, S->E, S->I, O->E, O->I open a new chunk (O->I: the lenient broken-I- case)
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(sequences: Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
    """Entities ``(type, start, end)`` (inclusive) over the ``O``-joined concatenation of ``sequences``."""
    flat: list[str] = []
    for seq in sequences:
        flat.extend(seq)
        flat.append("O")
    flat.append("O")
    prev_tag, prev_type, begin = "O", "", 0
    chunks: list[tuple[str, int, int]] = []
    for i, chunk in enumerate(flat):
        tag, type_ = _split_tag(chunk)
        if _ends(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _check_aligned(predictions: Sequence[Sequence[str]], golds: Sequence[Sequence[str]], scorer: str) -> None:
    if len(predictions) != len(golds):
        raise XStiltsError(f"{scorer}: {len(predictions)} predicted sentences for {len(golds)} gold sentences")
    for i, (p, g) in enumerate(zip(predictions, golds)):
        if len(p) != len(g):
            raise XStiltsError(f"{scorer}: sentence {i} has {len(p)} predicted tags for {len(g)} gold tags")


def ner_scores(predictions: Sequence[Sequence[str]], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision / recall / F1 (percentages) with seqeval's default semantics."""
    _check_aligned(predictions, golds, "ner_scores")
    pred = set(get_entities(predictions))
    true = set(get_entities(golds))
    correct = len(pred & true)
    precision = correct / len(pred) if pred else 0.0
    recall = correct / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"f1": 100.0 * f1, "precision": 100.0 * precision, "recall": 100.0 * recall}


def pos_scores(predictions: Sequence[Sequence[str]], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """XTREME UD-POS: seqeval ``f1`` on the raw POS tag sequences (as XTREME reports it) + token accuracy."""
    scores = ner_scores(predictions, golds)
    total = sum(len(g) for g in golds)
    correct = sum(int(p == g) for ps, gs in zip(predictions, golds) for p, g in zip(ps, gs))
    return {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
            "accuracy": 100.0 * correct / total if total else 0.0}
