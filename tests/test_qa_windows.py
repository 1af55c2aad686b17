"""Extractive QA windows and the max-context rule, as the reference places and chooses them.

Reference: google-research/xtreme ``third_party/processors/squad.py`` (the Hugging Face SQuAD
processor that ``third_party/run_squad.py`` uses):

* ``squad_convert_example_to_features``: window ``k`` starts at context token ``k * doc_stride``
  (``encoded_dict["start"] = len(spans) * doc_stride``) and holds
  ``min(tokens left, max_seq_length - question - special tokens)`` context tokens; windows are
  added while ``len(spans) * doc_stride < len(all_doc_tokens)`` and the previous window had
  overflowing tokens, i.e. the last window is the first one that reaches the end;
* ``_new_check_is_max_context``: a token's score in a window is ``min(left, right) + 0.01 *
  length``; the window with the highest score (the first on ties) is its max-context window;
* ``transformers.data.metrics.squad_metrics.compute_predictions_logits``: a start position
  whose ``token_is_max_context`` is False is never a candidate.

The contexts are the numbers "0 1 2 ... 49": one XLM-R token each, so context token ``p`` is
the number ``p`` and expected windows are plain arithmetic.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from xstilts.tasks.formats import FeaturizeOptions, get_format
from xstilts.tasks.formats.extractive_qa import max_context_flags
from xstilts.tasks.types import Answer, QAExample

QA = get_format("extractive_qa")
QUESTION = "Which number?"  # 3 tokens; + 4 special tokens (XLM-R pair)


def numbers(n: int) -> str:
    return " ".join(str(i) for i in range(n))


def reference_spans(n_doc: int, room: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window, by the reference's loop (written from its behaviour)."""
    spans: list[tuple[int, int]] = []
    while len(spans) * doc_stride < n_doc:
        start = len(spans) * doc_stride
        spans.append((start, min(n_doc - start, room)))
        if start + room >= n_doc:  # no overflowing tokens left
            break
    return spans


def window_numbers(feature, context: str) -> list[int]:
    """The context tokens of a window, as their numbers (= their context token index)."""
    return [int(context[s:e]) for s, e in feature["offset_mapping"] if s >= 0]


def featurize(tokenizer, n_doc: int, room: int, doc_stride: int, answer: int | None = None):
    context = numbers(n_doc)
    answers = [] if answer is None else [Answer(str(answer), (" " + context + " ").index(f" {answer} "))]
    ex = QAExample("ex", context, QUESTION, answers, is_impossible=answer is None)
    max_length = room + 3 + 4
    options = FeaturizeOptions(max_length=max_length, doc_stride=doc_stride, max_query_length=16)
    return ex, QA.featurize([ex], tokenizer, options)


# ----------------------------------------------------------------------------- window placement

@pytest.mark.parametrize(
    "n_doc,room,doc_stride,starts,lengths",
    [
        (50, 20, 8, [0, 8, 16, 24, 32], [20, 20, 20, 20, 18]),
        (50, 20, 7, [0, 7, 14, 21, 28, 35], [20, 20, 20, 20, 20, 15]),
        (40, 20, 10, [0, 10, 20], [20, 20, 20]),  # the third window ends exactly at the end
        (20, 20, 8, [0], [20]),  # fits in one window
        (45, 20, 20, [0, 20, 40], [20, 20, 5]),  # doc_stride == room: adjacent windows
    ],
)
def test_window_starts_step_by_doc_stride(tokenizer, n_doc, room, doc_stride, starts, lengths):
    assert reference_spans(n_doc, room, doc_stride) == list(zip(starts, lengths))  # hand-derived = reference loop
    ex, feats = featurize(tokenizer, n_doc, room, doc_stride)
    got = [window_numbers(f, ex.context) for f in feats]
    assert [w[0] for w in got] == starts
    assert [len(w) for w in got] == lengths
    assert all(w == list(range(w[0], w[0] + len(w))) for w in got)  # contiguous context tokens
    assert all(len(f["input_ids"]) <= room + 7 for f in feats)


def test_doc_stride_larger_than_a_window_is_lowered(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        ex, feats = featurize(tokenizer, 50, 20, 32)
    assert any("doc_stride=32" in r.message for r in caplog.records)
    got = [window_numbers(f, ex.context) for f in feats]
    assert [w[0] for w in got] == [0, 20, 40]  # step lowered to the window size: no token skipped
    assert sorted(n for w in got for n in w) == list(range(50))


# ----------------------------------------------------------------------------- max context

def owners(feats, context: str) -> dict[int, int]:
    """Context token -> index of the window whose ``max_context`` marks it."""
    out: dict[int, int] = {}
    for k, f in enumerate(feats):
        for (s, e), flag in zip(f["offset_mapping"], f["max_context"]):
            if s >= 0 and flag:
                assert int(context[s:e]) not in out, "a token has one max-context window"
                out[int(context[s:e])] = k
    return out


def test_max_context_rule_hand_derived(tokenizer):
    # windows [0,20) [7,27) [14,34) [21,41) [28,48) [35,50)
    ex, feats = featurize(tokenizer, 50, 20, 7)
    own = owners(feats, ex.context)
    assert sorted(own) == list(range(50))  # every token has exactly one max-context window
    expected = {
        5: 0,  # only window 0 holds tokens 0-6
        13: 0,  # window 0: min(13, 6) = 6; window 1: min(6, 13) = 6 -> tie (same length): the first
        14: 1,  # window 0: min(14, 5) = 5; window 1: min(7, 12) = 7; window 2: min(0, 19) = 0
        18: 1,  # 1 / 8 / 4
        41: 4,  # window 4: min(13, 6) + 0.20 = 6.20; window 5: min(6, 8) + 0.15 = 6.15 (length decides)
        42: 5,  # window 4: 5.20; window 5: min(7, 7) + 0.15 = 7.15
        49: 5,  # only the last window
    }
    assert {p: own[p] for p in expected} == expected
    # the same rule on (start, length) alone
    flags = max_context_flags([0, 7, 14, 21, 28, 35], [20, 20, 20, 20, 20, 15])
    assert [int(np.flatnonzero(f)[0]) + s for f, s in zip(flags, [0, 7, 14, 21, 28, 35])] == [0, 14, 21, 28, 35, 42]
    assert sum(int(f.sum()) for f in flags) == 50


def test_max_context_mask_is_zero_outside_the_context(tokenizer):
    ex, feats = featurize(tokenizer, 50, 20, 7)
    for f in feats:
        assert len(f["max_context"]) == len(f["input_ids"])
        assert all(flag == 0 for (s, _), flag in zip(f["offset_mapping"], f["max_context"]) if s < 0)
    assert "max_context" not in QA.collate(feats, tokenizer.pad_token_id)


def _logits_for(feats, spans: dict[tuple[int, int], float], context: str) -> dict[str, np.ndarray]:
    """Logits -50 everywhere, ``score / 2`` at the start and end of the one-token span p in window k."""
    width = max(len(f["input_ids"]) for f in feats)
    start = np.full((len(feats), width), -50.0)
    end = np.full((len(feats), width), -50.0)
    for (k, p), score in spans.items():
        pos = next(j for j, (s, e) in enumerate(feats[k]["offset_mapping"]) if s >= 0 and int(context[s:e]) == p)
        start[k, pos] = end[k, pos] = score / 2
    return {"start_logits": start, "end_logits": end}


def test_decode_takes_a_start_only_from_its_max_context_window(tokenizer):
    ex, feats = featurize(tokenizer, 50, 20, 7)
    # tokens 16 and 18 are in windows 0, 1 and 2 and have their max context in window 1
    # (16: min(16, 3) = 3 / min(9, 10) = 9 / min(2, 17) = 2). Window 0 scores "18" highest,
    # window 1 prefers "16".
    outputs = _logits_for(feats, {(0, 18): 40.0, (1, 16): 10.0}, ex.context)
    assert owners(feats, ex.context)[16] == 1 and owners(feats, ex.context)[18] == 1
    assert QA.decode([ex], feats, outputs) == {"ex": "16"}  # 18 in window 0 is not a candidate
    # without the max-context marks every window's starts would compete: "18" would win
    bare = [{k: v for k, v in f.items() if k != "max_context"} for f in feats]
    assert QA.decode([ex], bare, outputs) == {"ex": "18"}
    # the same token scored in its max-context window is taken
    outputs = _logits_for(feats, {(1, 18): 40.0, (1, 16): 10.0}, ex.context)
    assert QA.decode([ex], feats, outputs) == {"ex": "18"}


def test_gold_positions_decode_back_in_every_window_layout(tokenizer):
    """Oracle logits at each window's gold positions decode to the answer, wherever it lies."""
    for answer in (0, 13, 18, 41, 49):
        ex, feats = featurize(tokenizer, 50, 20, 7, answer=answer)
        hits = [k for k, f in enumerate(feats) if f["start_positions"] != 0]
        assert hits  # the answer (one token) is inside at least one window
        width = max(len(f["input_ids"]) for f in feats)
        start = np.full((len(feats), width), -5.0)
        end = np.full((len(feats), width), -5.0)
        for k in hits:
            start[k, feats[k]["start_positions"]] = end[k, feats[k]["end_positions"]] = 5.0
        assert QA.decode([ex], feats, {"start_logits": start, "end_logits": end}) == {"ex": str(answer)}
