"""Extractive QA, SQuAD v1.1 and v2.0 style (SQuAD, XQuAD, MLQA, TyDiQA-GoldP).

Featurisation follows the reference recipe (google-research/xtreme ``third_party/run_squad.py``
with its ``processors/squad.py``, ``squad_convert_example_to_features``, the Hugging Face
SQuAD processor): the question, truncated to ``max_query_length`` tokens, is the first
segment and the context the second. A long context is split into windows:

* ``max_length``: tokens per window, question and special tokens included, so a window
  holds ``room = max_length - question tokens - special tokens`` context tokens;
* ``doc_stride``: the **step** between the starts of consecutive windows, in context tokens
  (the reference's meaning). Window ``k`` starts at context token ``k * doc_stride``;
  consecutive windows overlap by ``room - doc_stride`` tokens; the last window is the first
  one that reaches the end of the context. A ``doc_stride`` larger than ``room`` would skip
  tokens, so it is lowered to ``room`` (no overlap) with a warning.

(Before format version 2, ``doc_stride`` was the overlap, as in the fast tokenizer's
``stride`` argument.) A training window whose context does not contain the whole answer (or
an unanswerable question) points both positions at the CLS token (index 0).

Each feature marks, in ``max_context``, the context tokens for which it is the window with
the most context, by the reference's rule (``_new_check_is_max_context``): among the windows
that contain a token, the one maximising ``min(tokens left of it, tokens right of it) +
0.01 * window length``, the first such window on ties.

Decoding is the reference's post-processing (``compute_predictions_logits`` of
``transformers.data.metrics.squad_metrics``): for each example gather all its windows; in
each, take the ``n_best_size`` best start and end positions, keep pairs inside the context
whose **start** has its max context in that window, with ``end >= start`` and at most
``max_answer_length`` tokens, and return the pair with the highest ``start + end`` logit,
sliced from the original context by character offsets. The ``n_best_size`` candidates are
ranked among the window's context tokens (the reference ranks all positions of the padded
window and then drops those outside the context; this can only add valid candidates). With
unanswerable questions (SQuAD v2) the best span is compared with the null score (CLS start +
end, minimum over windows): ``null - best > null_score_diff_threshold`` -> ``""``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from xstilts.errors import ConfigError, DataError, XStiltsError
from xstilts.tasks.formats._common import check_coverage, check_metric, collate_flat, column, group_features
from xstilts.tasks.formats._records import HubRows, JsonRecord, require_field
from xstilts.tasks.formats.base import FeaturizeOptions, Format, join_text
from xstilts.tasks.types import Answer, QAExample

logger = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")
CLS_INDEX = 0
NO_OFFSET = [-1, -1]


def _answer(path: str | Path, ans: Any, j: int, context: str, record: str, check_answers: bool) -> Answer:
    """``answers[j]`` of a question: an object with ``text`` and a non-negative ``answer_start``
    that points at the text in the context (when ``check_answers``)."""
    if not isinstance(ans, dict):
        raise DataError(path, f"answers[{j}] should be an object with text and answer_start", record=record)
    text = require_field(path, ans, "text", record=record, types=str)
    start = require_field(path, ans, "answer_start", record=record, types=int)
    if start < 0:
        raise DataError(path, f"answers[{j}] has a negative answer_start {start}; expected the character offset "
                              "of the answer in the context (an unanswerable question has no answers and "
                              "is_impossible: true)", record=record)
    if check_answers and context[start:start + len(text)] != text:
        found = context[start:start + len(text)]
        raise DataError(path, f"answers[{j}] text {text!r} does not match the context at answer_start {start} "
                              f"(context there: {found!r})", record=record)
    return Answer(text=text, start=start)


def qa_example(path: str | Path, qa: dict[str, Any], context: str, title: str | None, where: str,
               check_answers: bool = True) -> QAExample:
    """One SQuAD-style question (``id``, ``question``, ``answers``, ``is_impossible``) of a context.

    DataError naming ``path`` and the question (its id, else ``where``) when a field is missing,
    an answer does not sit at its ``answer_start`` or is negative, or a question has no answers
    without ``is_impossible``.
    """
    qid = qa.get("id")
    record = f"id {qid}" if qid is not None else where
    if not isinstance(qid, (str, int)):
        raise DataError(path, "question without an 'id'", record=where)
    question = require_field(path, qa, "question", record=record, types=str)
    raw_answers = qa.get("answers", [])
    if not isinstance(raw_answers, list):
        raise DataError(path, "'answers' should be a list of {text, answer_start}", record=record)
    impossible = bool(qa.get("is_impossible", False))
    answers = [_answer(path, ans, j, context, record, check_answers) for j, ans in enumerate(raw_answers)]
    if not answers and not impossible:
        raise DataError(path, "question has no answers and is not marked is_impossible", record=record)
    return QAExample(id=str(qid), context=context, question=question, answers=answers, is_impossible=impossible,
                     title=title)


def truncate_questions(
    questions: Sequence[str], tokenizer: Any, max_query_length: int
) -> tuple[list[str], list[int]]:
    """Left-strip each question and cut it after its ``max_query_length``-th token (by char offset).

    Returns the truncated questions and their lengths in tokens.
    """
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out, lengths = [], []
    for q, offsets in zip(questions, enc["offset_mapping"]):
        if len(offsets) > max_query_length:
            q = q[: offsets[max_query_length - 1][1]]
        out.append(q)
        lengths.append(min(len(offsets), max_query_length))
    return out, lengths


def window_steps(tokenizer: Any, options: FeaturizeOptions, question_lengths: Sequence[int],
                 examples: Sequence[QAExample]) -> list[tuple[int, int]]:
    """``(room, step)`` per example: context tokens per window and the step between window starts.

    ``room = max_length - question tokens - special tokens``; ``step`` is ``doc_stride``,
    lowered to ``room`` (with one warning) where it is larger.
    """
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    out: list[tuple[int, int]] = []
    lowered = 0
    for n_question, ex in zip(question_lengths, examples):
        room = options.max_length - n_question - n_special
        if room < 2:
            raise ConfigError(
                f"max_length={options.max_length} leaves no room for the context after the question of "
                f"example '{ex.id}' ({n_question} tokens, max_query_length={options.max_query_length}) "
                f"and {n_special} special tokens; raise max_length or lower max_query_length",
                key="max_length",
            )
        lowered += options.doc_stride > room
        out.append((room, min(options.doc_stride, room)))
    if lowered:
        logger.warning(
            "doc_stride=%d (the step between window starts) is larger than the context tokens a window holds "
            "(max_length=%d less the question and special tokens) for %d of %d examples; their step is "
            "that window size (no overlap)",
            options.doc_stride, options.max_length, lowered, len(examples),
        )
    return out


def max_context_flags(starts: Sequence[int], lengths: Sequence[int]) -> list[np.ndarray]:
    """For each window (context tokens ``[start, start + length)``), whether each of its tokens
    has its maximum context in that window.

    The reference's rule (google-research/xtreme ``third_party/processors/squad.py``,
    ``_new_check_is_max_context``): a token's score in a window is ``min(left, right) + 0.01 *
    length`` (``left`` / ``right``: window tokens before / after it); the best window wins, the
    first one on ties.
    """
    n_doc = max((s + n for s, n in zip(starts, lengths)), default=0)
    best = np.full(n_doc, -np.inf)
    owner = np.full(n_doc, -1)
    for k, (s, n) in enumerate(zip(starts, lengths)):
        pos = np.arange(s, s + n)
        score = np.minimum(pos - s, s + n - 1 - pos) + 0.01 * n
        better = score > best[pos]
        best[pos[better]] = score[better]
        owner[pos[better]] = k
    return [owner[s:s + n] == k for k, (s, n) in enumerate(zip(starts, lengths))]


def mark_max_context(features: Sequence[dict[str, Any]], step: int) -> None:
    """Add ``max_context`` to the windows of one example (in order; window ``k`` starts at
    context token ``k * step``): 1 where a context token has its maximum context in that window."""
    ctx = [[j for j, o in enumerate(f["offset_mapping"]) if o[0] >= 0] for f in features]
    flags = max_context_flags([k * step for k in range(len(features))], [len(c) for c in ctx])
    for feat, positions, flag in zip(features, ctx, flags):
        mask = [0] * len(feat["offset_mapping"])
        for j, is_max in zip(positions, flag):
            mask[j] = int(is_max)
        feat["max_context"] = mask


def answer_token_span(
    offsets: Sequence[Sequence[int]], start_char: int, end_char: int
) -> tuple[int, int]:
    """Token positions of the characters ``[start_char, end_char)`` in one window.

    ``offsets`` hold ``[-1, -1]`` outside the context. Returns ``(CLS_INDEX, CLS_INDEX)``
    when the window's context does not contain the whole answer.
    """
    ctx = [j for j, o in enumerate(offsets) if o[0] >= 0]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
        return CLS_INDEX, CLS_INDEX
    start = max(j for j in ctx if offsets[j][0] <= start_char)
    end = next((j for j in ctx if j >= start and offsets[j][1] >= end_char), None)
    if end is None:
        return CLS_INDEX, CLS_INDEX
    return start, end


def has_key(features: Any, key: str) -> bool:
    """Whether the features (dicts or a ``datasets.Dataset``) carry ``key``."""
    if hasattr(features, "column_names"):
        return key in features.column_names
    return len(features) > 0 and key in features[0]


def best_span_in_window(
    start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray, starts_ok: np.ndarray,
    n_best_size: int, max_answer_length: int,
) -> tuple[float, tuple[int, int]] | None:
    """The best ``(start + end logit, (char start, char end))`` span of one window, or None.

    Candidates: the ``n_best_size`` best starts (among ``starts_ok``: context tokens whose max
    context is this window) and ends (among context tokens); ``end >= start`` and at most
    ``max_answer_length`` tokens. The first best pair wins ties (starts, then ends, in logit order).
    """
    in_ctx = offsets[:, 0] >= 0
    ok_starts = np.nonzero(starts_ok & in_ctx)[0]
    ends = np.nonzero(in_ctx)[0]
    if not len(ok_starts) or not len(ends):
        return None
    top_s = ok_starts[np.argsort(-start_logits[ok_starts], kind="stable")[:n_best_size]]
    top_e = ends[np.argsort(-end_logits[ends], kind="stable")[:n_best_size]]
    best: tuple[float, tuple[int, int]] | None = None
    for si in top_s:
        for ei in top_e:
            if ei < si or ei - si + 1 > max_answer_length:
                continue
            score = float(start_logits[si] + end_logits[ei])
            if best is None or score > best[0]:
                best = (score, (int(offsets[si, 0]), int(offsets[ei, 1])))
    return best


class ExtractiveQAFormat(Format):
    """Windows of (question, context) with start/end positions; decodes to answer strings."""

    name: ClassVar[str] = "extractive_qa"
    head_kind: ClassVar[str | None] = "extractive_qa"
    metrics: ClassVar[tuple[str, ...]] = ("squad", "mlqa", "squad_v2")
    json_fields: ClassVar[dict[str, str]] = {"id": "id", "context": "context", "question": "question",
                                             "answers": "answers", "is_impossible": "is_impossible", "title": "title"}
    #: the usual SQuAD-style evaluation windows (384 tokens)
    eval_max_length: ClassVar[int | None] = 384
    #: 2: ``doc_stride`` is the step between window starts (was: the overlap); ``max_context``
    version: ClassVar[int] = 2

    def example_from_json(self, record: JsonRecord, label_list: Sequence[str] | None = None) -> QAExample:
        """``context``, ``question``, ``answers`` ([{text, answer_start}] or the hub's {text: [...],
        answer_start: [...]}), optional ``is_impossible`` and ``title``."""
        context = record.require("context", str)
        qa = {"id": record.id, "question": record.require("question", str),
              "answers": record.opt("answers") or [], "is_impossible": bool(record.opt("is_impossible"))}
        if isinstance(qa["answers"], dict):  # Hugging Face layout {text: [...], answer_start: [...]}
            a = qa["answers"]
            qa["answers"] = [{"text": t, "answer_start": s} for t, s in zip(a.get("text", []), a.get("answer_start", []))]
            qa["is_impossible"] = qa["is_impossible"] or not qa["answers"]
        try:
            return qa_example(record.path, qa, context, record.opt("title"), f"line {record.line}")
        except DataError as exc:
            raise DataError(record.path, exc.detail, line=record.line, record=exc.record) from None

    def examples_from_hub(self, rows: HubRows, label_list: Sequence[str] | None = None,
                          language: str | None = None) -> list[QAExample]:
        """SQuAD-layout rows; the ``id_prefix`` option (per language) keeps one language of a
        multilingual split (TyDiQA-GoldP ids start with ``english-``, ``arabic-``, ...)."""
        prefix = rows.option("id_prefix", language)
        out: list[QAExample] = []
        for i, row in rows:
            if prefix and not str(row["id"]).startswith(prefix):
                continue
            ans = row.get("answers") or {"text": [], "answer_start": []}
            answers = [_answer(f"hub:{rows.source}", {"text": t, "answer_start": int(s)}, j, row["context"],
                               f"id {row['id']}", check_answers=False)
                       for j, (t, s) in enumerate(zip(ans["text"], ans["answer_start"]))]
            out.append(QAExample(id=str(row["id"]), context=row["context"], question=row["question"], answers=answers,
                                 is_impossible=not answers, title=row.get("title")))
        return out

    def is_labelled(self, example: QAExample) -> bool:
        """Whether the question has gold answers or is marked unanswerable."""
        return bool(example.answers) or example.is_impossible

    def input_json(self, example: QAExample) -> dict[str, Any]:
        """The question and the context."""
        return {"question": example.question, "context": example.context}

    def gold_json(self, example: QAExample) -> list[str]:
        """The gold answer texts (``[]`` when unanswerable)."""
        return [a.text for a in example.answers]

    def input_text(self, example: QAExample) -> str:
        """The question and the context (not the answers)."""
        return join_text([example.question, example.context])

    def featurize(
        self,
        examples: Sequence[QAExample],
        tokenizer: Any,
        options: FeaturizeOptions,
        label_list: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One feature per window (module docstring); every feature holds ``start_positions`` /
        ``end_positions``, ``offset_mapping`` and ``max_context`` (1 on the context tokens whose
        maximum context is this window, 0 elsewhere).

        The positions use the first gold answer; unanswerable questions and windows without the
        whole answer point at CLS (0). Examples without gold answers get CLS positions too (the
        positions are then meaningless and only the decoding matters).
        """
        if not examples:
            return []
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("extractive QA needs a fast tokenizer (offset mappings)", key="tokenizer")
        questions, _ = truncate_questions([ex.question for ex in examples], tokenizer, options.max_query_length)
        q_lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
        windows = window_steps(tokenizer, options, q_lengths, examples)
        by_overlap: dict[int, list[int]] = {}
        for i, (room, step) in enumerate(windows):
            by_overlap.setdefault(room - step, []).append(i)
        per_example: list[list[dict[str, Any]]] = [[] for _ in examples]
        for overlap, members in by_overlap.items():
            # the fast tokenizer's ``stride`` is the overlap: windows start every room - overlap = step tokens
            enc = tokenizer([questions[i] for i in members], [examples[i].context for i in members],
                            truncation="only_second", max_length=options.max_length, stride=overlap,
                            return_overflowing_tokens=True, return_offsets_mapping=True)
            for row, local in enumerate(enc["overflow_to_sample_mapping"]):
                i = members[int(local)]
                per_example[i].append(self._window(enc, row, i, examples[i]))
        for feats, (_, step) in zip(per_example, windows):
            mark_max_context(feats, step)
        features = [feat for feats in per_example for feat in feats]
        logger.debug("extractive_qa: %d examples -> %d windows", len(examples), len(features))
        return features

    def _window(self, enc: Any, row: int, example_index: int, ex: QAExample) -> dict[str, Any]:
        """Row ``row`` of a batch encoding as a feature: inputs, offsets (context only), positions."""
        seq_ids = enc.sequence_ids(row)
        offsets = [list(o) if s == 1 else list(NO_OFFSET) for o, s in zip(enc["offset_mapping"][row], seq_ids)]
        feat: dict[str, Any] = {k: enc[k][row] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        feat["example_index"] = example_index
        feat["offset_mapping"] = offsets
        if ex.is_impossible or not ex.answers:
            start, end = CLS_INDEX, CLS_INDEX
        else:
            answer = ex.answers[0]
            start, end = answer_token_span(offsets, answer.start, answer.start + len(answer.text))
        feat["start_positions"] = start
        feat["end_positions"] = end
        return feat

    def collate(self, features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """``[B, L_max]`` inputs; ``start_positions`` / ``end_positions`` ``[B]``."""
        return collate_flat(features, pad_token_id, MODEL_KEYS)

    def decode(
        self,
        examples: Sequence[QAExample],
        features: Sequence[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        label_list: Sequence[str] | None = None,
        *,
        n_best_size: int = 20,
        max_answer_length: int = 30,
        null_score_diff_threshold: float = 0.0,
        allow_no_answer: bool | None = None,
        **options: Any,
    ) -> dict[str, str]:
        """Best answer span per example over all its windows (see module docstring).

        ``allow_no_answer`` (SQuAD v2 behaviour) defaults to True when any example is
        unanswerable. An example with no valid span and no-answer disallowed decodes to "".
        """
        start_logits = outputs["start_logits"]
        end_logits = outputs["end_logits"]
        if len(start_logits) != len(features) or len(end_logits) != len(features):
            raise XStiltsError(
                f"extractive_qa: {len(start_logits)} start / {len(end_logits)} end logit rows for {len(features)} features"
            )
        if allow_no_answer is None:
            allow_no_answer = any(ex.is_impossible for ex in examples)
        all_offsets = column(features, "offset_mapping")
        all_max_ctx = column(features, "max_context") if has_key(features, "max_context") else None
        predictions: dict[str, str] = {}
        for ex_idx, feat_ids in enumerate(group_features(features, len(examples))):
            if not feat_ids:
                continue
            example = examples[ex_idx]
            best_score, best_span, min_null = -np.inf, None, np.inf
            for f in feat_ids:
                offsets = np.asarray(all_offsets[f], dtype=np.int64).reshape(-1, 2)
                n = len(offsets)
                s = np.asarray(start_logits[f][:n], dtype=np.float64)
                e = np.asarray(end_logits[f][:n], dtype=np.float64)
                min_null = min(min_null, s[CLS_INDEX] + e[CLS_INDEX])
                starts_ok = offsets[:, 0] >= 0
                if all_max_ctx is not None:
                    starts_ok &= np.asarray(all_max_ctx[f], dtype=bool)
                found = best_span_in_window(s, e, offsets, starts_ok, n_best_size, max_answer_length)
                if found is not None and found[0] > best_score:
                    best_score, best_span = found
            if best_span is None or (allow_no_answer and min_null - best_score > null_score_diff_threshold):
                predictions[example.id] = ""
            else:
                predictions[example.id] = example.context[best_span[0] : best_span[1]].strip()
        return predictions

    def score(
        self,
        examples: Sequence[QAExample],
        predictions: dict[str, Any],
        metric: str,
        language: str | None = None,
    ) -> dict[str, float]:
        """Exact match and F1 with the named scorer: ``squad``, ``mlqa`` (needs ``language``) or ``squad_v2``."""
        check_metric(self.name, metric, self.metrics)
        check_coverage(examples, predictions, self.name)
        from xstilts import metrics

        preds = {ex.id: predictions[ex.id] for ex in examples}
        if metric == "squad_v2":
            golds = {ex.id: [] if ex.is_impossible else [a.text for a in ex.answers] for ex in examples}
            return dict(metrics.squad_v2_scores(preds, golds))
        unanswerable = [ex.id for ex in examples if not ex.answers]
        if unanswerable:
            raise XStiltsError(
                f"extractive_qa: metric '{metric}' needs gold answers, but {len(unanswerable)} examples have none "
                f"(e.g. '{unanswerable[0]}'); use metric 'squad_v2' for unanswerable questions"
            )
        golds = {ex.id: [a.text for a in ex.answers] for ex in examples}
        if metric == "mlqa":
            if not language:
                raise XStiltsError("extractive_qa: metric 'mlqa' needs the language of the examples")
            return dict(metrics.mlqa_scores(preds, golds, language))
        return dict(metrics.squad_scores(preds, golds))
