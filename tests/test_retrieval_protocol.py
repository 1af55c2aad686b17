"""Retrieval protocol against the reference code: Tatoeba direction, the BUCC threshold rule, layer numbering.

Every expected number below is derived by hand from the reference code named next to it
(google-research/xtreme and nyu-mll/jiant, read on GitHub); nothing is copied from them.
"""

from __future__ import annotations

import numpy as np
import pytest

from xstilts.errors import UnknownNameError
from xstilts.metrics import (
    bucc_candidates,
    bucc_extract,
    bucc_score,
    optimize_threshold,
    prf,
    tatoeba_accuracy,
    tatoeba_predictions,
    tatoeba_scores,
)

XX = np.array([[3, 4], [5, 4], [4, 3]], dtype=np.float32)
EN = np.array([[3, 5], [2, 5], [4, 1]], dtype=np.float32)


def _unit(*degrees: float) -> np.ndarray:
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def test_tatoeba_primary_accuracy_is_xtremes_direction():
    # google-research/xtreme third_party/utils_retrieve.py similarity_search(x=xx, y=en): the
    # index holds the non-English rows (idx.add(x)) and the English rows query it
    # (idx.search(y, 1)), after L2 normalisation. Cosines (rows: en, cols: xx):
    #   en0: .994 .937 .926 -> xx0 (right)   en1: .965 .870 .854 -> xx0 (wrong)   en2: .776 .910 .922 -> xx2 (right)
    # -> 2/3 = 66.67. The other direction (xx queries the English pool): xx0 -> en0 right,
    #   xx1 -> en0 wrong (.937 > .910), xx2 -> en0 wrong (.926 > .922) -> 1/3 = 33.33.
    scores = tatoeba_scores(XX, EN)
    assert scores["accuracy"] == pytest.approx(200 / 3)
    assert scores["accuracy_xx_to_en"] == pytest.approx(100 / 3)
    en_to_xx, xx_to_en = tatoeba_predictions(XX, EN)
    assert en_to_xx.tolist() == [0, 0, 2] and xx_to_en.tolist() == [0, 0, 0]
    # the one-direction scorer: queries first, index second
    assert tatoeba_accuracy(EN, XX) == pytest.approx(200 / 3)
    assert tatoeba_accuracy(XX, EN) == pytest.approx(100 / 3)


def test_bucc_threshold_keeps_scores_equal_to_it():
    # xtreme third_party/utils_retrieve.py bucc_optimize: sorted 1.2 (gold), 1.1 (gold), 1.1, 1.0;
    # the best cut (F1 1.0) is after the second item, threshold = (1.1 + 1.1) / 2 = 1.1.
    # bucc_extract keeps score >= 1.1: three pairs, 2 correct -> P 2/3, R 1, F1 80.0.
    # A strict '>' would keep only the first: P 1, R 1/2, F1 66.67.
    cands = {("a", "1"): 1.2, ("b", "2"): 1.1, ("c", "3"): 1.1, ("d", "4"): 1.0}
    gold = {("a", "1"), ("b", "2")}
    th = optimize_threshold(cands, gold)
    assert th == pytest.approx(1.1)
    res = bucc_score(cands, gold)
    assert res["f1"] == pytest.approx(80.0) and res["precision"] == pytest.approx(200 / 3)
    assert bucc_extract(cands, th) == {("a", "1"), ("b", "2"), ("c", "3")}
    strict = prf([p for p, s in cands.items() if s > th], gold)
    assert strict["f1"] == pytest.approx(200 / 3)
    # a given threshold is used as is (the dev-tuned one in the reference protocol)
    assert bucc_score(cands, gold, threshold=1.15)["f1"] == pytest.approx(200 / 3)


def test_bucc_repeated_sentences_all_ids_or_dropped():
    # Source texts A, B, A (ids s1, s2, s3), targets a, b: identical texts are embedded once
    # (xtreme utils_retrieve.py text_load_unify / unique_embeddings). With k=1 and the
    # absolute margin the scores are cosines: A-a and B-b at 5 degrees (cos 5 = .99619).
    # jiant jiant/tasks/evaluate/core.py Bucc2018EvaluationScheme (create_ids_map): a text
    # stands for every id it has -> (s1,t1), (s3,t1), (s2,t2). xtreme read_sent2id drops a
    # repeated sentence -> (s2,t2) only.
    src = _unit(0, 90, 0)
    tgt = _unit(5, 95)
    args = (src, tgt, ["s1", "s2", "s3"], ["t1", "t2"], ["A", "B", "A"], ["a", "b"])
    every = bucc_candidates(*args, k=1, margin="absolute")
    assert set(every) == {("s1", "t1"), ("s3", "t1"), ("s2", "t2")}
    assert every[("s1", "t1")] == pytest.approx(np.cos(np.radians(5)), abs=1e-6)
    assert set(bucc_candidates(*args, k=1, margin="absolute", duplicates="drop")) == {("s2", "t2")}
    with pytest.raises(UnknownNameError):
        bucc_candidates(*args, duplicates="first")


def test_layers_are_numbered_as_xtreme_specific_layer():
    # xtreme third_party/evaluate_retrieval.py extract_embeddings keeps
    # all_layer_outputs[-num_layers:] (the embedding output dropped) and --specific_layer k
    # indexes it: run_tatoeba.sh's 7 of 12 -> hidden_states[8]; 13 of 24 -> hidden_states[14],
    # which is jiant's retrieval_layer 14 (xtreme_runconfig_writer.py; EmbeddingModel indexes
    # hidden_states directly).
    from xstilts.errors import XStiltsError
    from xstilts.evaluate.retrieval_layers import default_retrieval_layer, hidden_states_index, resolve_layer

    assert default_retrieval_layer(12) == 7 and hidden_states_index(7, 12) == 8
    assert default_retrieval_layer(24) == 13 and hidden_states_index(13, 24) == 14
    assert resolve_layer(-1, 12) == 11 and hidden_states_index(-1, 12) == 12
    assert default_retrieval_layer(2) == 1
    with pytest.raises(XStiltsError, match="0..11"):
        resolve_layer(12, 12)
