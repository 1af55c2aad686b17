"""Extractive QA scores with parity to the official scorers.

* :func:`squad_scores` — SQuAD v1.1 ``evaluate-v1.1.py`` (used by XTREME for XQuAD and
  TyDiQA-GoldP): lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse
  whitespace; exact match and bag-of-tokens F1, maximised over the gold answers.
* :func:`mlqa_scores` — MLQA ``mlqa_evaluation_v1.py``: punctuation is every Unicode
  character whose category starts with ``P`` (plus ASCII punctuation), articles are removed
  per language, Chinese is split into characters ("mixed segmentation").
* :func:`squad_v2_scores` — SQuAD v2.0 ``evaluate-v2.0.py``: a question with no gold answer
  is right iff the prediction is empty.

All scores are percentages. As in the official scripts, a gold question with no prediction
scores 0 (v1.1, MLQA; a warning is logged) — callers that want a hard error check ids first.
"""

from __future__ import annotations

import functools
import logging
import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from xstilts.errors import UnknownNameError

logger = logging.getLogger(__name__)

_ASCII_PUNCT = frozenset(string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")

# ---------------------------------------------------------------- SQuAD v1.1 / v2.0


def normalize_squad(text: str) -> str:
    """SQuAD's ``normalize_answer``: lower, remove punctuation, articles, extra whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _ASCII_PUNCT)
    text = _SQUAD_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _max_over_golds(fn: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    return max(fn(prediction, g) for g in golds)


def _em_f1_v1(
    predictions: Mapping[str, str],
    golds: Mapping[str, Sequence[str]],
    normalize: Callable[[str], str],
    tokenize: Callable[[str], list[str]],
    scorer: str,
) -> dict[str, float]:
    if not golds:
        raise ValueError(f"{scorer}: no gold questions to score")
    em_total = f1_total = 0.0
    missing = 0
    for qid, answers in golds.items():
        if qid not in predictions:
            missing += 1
            continue
        if not answers:
            raise ValueError(f"{scorer}: question {qid!r} has no gold answer (use squad_v2_scores for unanswerable questions)")
        pred = predictions[qid]
        em_total += _max_over_golds(lambda p, g: float(normalize(p) == normalize(g)), pred, answers)
        f1_total += _max_over_golds(lambda p, g: _token_f1(tokenize(p), tokenize(g)), pred, answers)
    if missing:
        logger.warning("%s: %d of %d questions have no prediction and score 0 (as the official script)", scorer, missing, len(golds))
    n = len(golds)
    return {"exact_match": 100.0 * em_total / n, "f1": 100.0 * f1_total / n}


def squad_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 (percentages) of ``predictions`` (id -> answer text).

    ``golds`` maps each question id to its gold answer texts (at least one).
    """
    return _em_f1_v1(predictions, golds, normalize_squad, lambda s: normalize_squad(s).split(), "squad")


def squad_v2_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD v2.0 scores; ``golds[id] == []`` marks an unanswerable question.

    Returns ``exact_match``, ``f1`` and, for the subsets that are non-empty, ``has_ans_*`` and
    ``no_ans_*`` versions. As ``evaluate-v2.0.py``: gold answers that normalise to "" are
    dropped, a question without gold answers has gold ``[""]``, an empty prediction/gold pair
    scores 1, and questions without a prediction are left out (with a warning).
    """
    if not golds:
        raise ValueError("squad_v2: no gold questions to score")

    def tokens(s: str) -> list[str]:
        return normalize_squad(s).split() if s else []

    def f1(pred: str, gold: str) -> float:
        p, g = tokens(pred), tokens(gold)
        if not p or not g:
            return float(p == g)
        return _token_f1(p, g)

    exact: dict[str, float] = {}
    f1s: dict[str, float] = {}
    has_ans: list[str] = []
    no_ans: list[str] = []
    missing = 0
    for qid, answers in golds.items():
        gold = [a for a in answers if normalize_squad(a)]
        (has_ans if gold else no_ans).append(qid)
        if not gold:
            gold = [""]
        if qid not in predictions:
            missing += 1
            continue
        pred = predictions[qid]
        exact[qid] = max(float(normalize_squad(pred) == normalize_squad(g)) for g in gold)
        f1s[qid] = max(f1(pred, g) for g in gold)
    if missing:
        logger.warning("squad_v2: %d of %d questions have no prediction and are left out (as the official script)", missing, len(golds))
    if not exact:
        raise ValueError("squad_v2: no question has a prediction")
    out = {"exact_match": 100.0 * sum(exact.values()) / len(exact), "f1": 100.0 * sum(f1s.values()) / len(f1s)}
    for prefix, ids in (("has_ans", has_ans), ("no_ans", no_ans)):
        ids = [i for i in ids if i in exact]
        if ids:
            out[f"{prefix}_exact_match"] = 100.0 * sum(exact[i] for i in ids) / len(ids)
            out[f"{prefix}_f1"] = 100.0 * sum(f1s[i] for i in ids) / len(ids)
    return out


# ---------------------------------------------------------------- MLQA



@functools.cache
def mlqa_punctuation() -> frozenset[str]:
    """MLQA's punctuation: every Unicode character of a ``P*`` category, plus ASCII punctuation.
    Built on first use (a loop over 1.1M code points, ~0.9 s), then cached."""
    return frozenset(chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")) | _ASCII_PUNCT


def __getattr__(name: str) -> frozenset[str]:
    """``MLQA_PUNCT`` stays importable, built lazily (see :func:`mlqa_punctuation`)."""
    if name == "MLQA_PUNCT":
        return mlqa_punctuation()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_WHITESPACE_LANGS = ("en", "es", "hi", "vi", "de", "ar")
_MIXED_SEGMENTATION_LANGS = ("zh",)
MLQA_LANGUAGES = _WHITESPACE_LANGS + _MIXED_SEGMENTATION_LANGS

_MLQA_ARTICLES: dict[str, re.Pattern[str] | None] = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "hi": None,  # Hindi has no formal articles
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    # MLQA's pattern '\sال^|ال': the first branch can never match, so in effect every
    # occurrence of the definite-article letters 'ال' is replaced by a space, also inside words.
    "ar": re.compile(r"\sال^|ال"),
    "zh": None,  # Chinese has no formal articles
}
_CJK = re.compile("[\u4e00-\u9fa5]")


def _mixed_segmentation(text: str) -> list[str]:
    """Split CJK ideographs (U+4E00-U+9FA5) and punctuation into single tokens, the rest on whitespace."""
    out: list[str] = []
    buf = ""
    punct = mlqa_punctuation()
    for ch in text:
        if _CJK.search(ch) or ch in punct:
            if buf:
                out.extend(buf.split())
                buf = ""
            out.append(ch)
        else:
            buf += ch
    if buf:
        out.extend(buf.split())
    return out


def _check_mlqa_lang(lang: str) -> None:
    if lang not in _MLQA_ARTICLES:
        raise UnknownNameError("MLQA language", lang, MLQA_LANGUAGES)


def normalize_mlqa(text: str, lang: str) -> str:
    """MLQA's ``normalize_answer(s, lang)``: lower, Unicode punctuation, articles, segmentation."""
    _check_mlqa_lang(lang)
    text = text.lower()
    punct = mlqa_punctuation()
    text = "".join(ch for ch in text if ch not in punct)
    pattern = _MLQA_ARTICLES[lang]
    if pattern is not None:
        text = pattern.sub(" ", text)
    tokens = _mixed_segmentation(text) if lang in _MIXED_SEGMENTATION_LANGS else text.split()
    return " ".join(t for t in tokens if t.strip())


def mlqa_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]], lang: str) -> dict[str, float]:
    """MLQA exact match and F1 (percentages) with the language-aware normalisation of ``lang``.

    ``lang`` is the context language, one of en es hi vi de ar zh (as the official script;
    others raise :class:`~xstilts.errors.UnknownNameError`).
    """
    _check_mlqa_lang(lang)
    return _em_f1_v1(
        predictions, golds, lambda s: normalize_mlqa(s, lang), lambda s: normalize_mlqa(s, lang).split(), f"mlqa[{lang}]"
    )
