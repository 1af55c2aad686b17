"""Metrics against hand-computed values and the official behaviour (edge cases of each scorer)."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

from xstilts.errors import UnknownNameError, XStiltsError
from xstilts.metrics import (
    accuracy,
    bucc_f1,
    get_entities,
    knn,
    margin_scores,
    mine_bitext,
    mlqa_scores,
    ner_scores,
    normalize_mlqa,
    normalize_squad,
    optimize_threshold,
    pos_scores,
    squad_scores,
    squad_v2_scores,
    tatoeba_accuracy,
)


# ------------------------------------------------------------------ accuracy
def test_accuracy_hand_computed():
    assert accuracy(["a", "b", "c", "a"], ["a", "b", "a", "b"]) == 50.0
    assert accuracy([0, 1, 2], [0, 1, 2]) == 100.0
    with pytest.raises(XStiltsError, match="aligned"):
        accuracy([1, 2], [1])


# ------------------------------------------------------------------ SQuAD v1.1
def test_squad_normalisation_articles_punct_case():
    assert normalize_squad("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_squad("an apple, a day") == "apple day"
    # 'a'/'an'/'the' only as whole words
    assert normalize_squad("Theatre anatomy") == "theatre anatomy"
    # SQuAD removes ASCII punctuation only; a Unicode dash/quote survives
    assert normalize_squad("«Paris»") == "«paris»"


def test_squad_scores_hand_computed():
    golds = {"q1": ["the Eiffel Tower"], "q2": ["Denver Broncos", "Broncos"], "q3": ["in 1990"]}
    preds = {"q1": "Eiffel tower.", "q2": "the Denver Broncos team", "q3": "1990s"}
    s = squad_scores(preds, golds)
    # q1: EM 1, F1 1 (differs only in article, case, punctuation)
    # q2: EM 0; vs "denver broncos": pred [denver broncos team] -> p 2/3 r 1 -> f1 0.8; vs "broncos": p 1/3 r 1 -> 0.5
    # q3: EM 0, F1 0 ("1990s" vs "in 1990" share no token)
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)


def test_squad_missing_prediction_scores_zero():
    s = squad_scores({"a": "x"}, {"a": ["x"], "b": ["y"]})
    assert s == {"exact_match": 50.0, "f1": 50.0}


def test_squad_repeated_tokens_counter_semantics():
    # Counter intersection: pred "the the cat cat" -> [cat, cat]; gold "cat" -> common 1: p 1/2, r 1 -> 2/3
    s = squad_scores({"q": "cat cat"}, {"q": ["cat"]})
    assert s["f1"] == pytest.approx(100 * 2 / 3)


# ------------------------------------------------------------------ SQuAD v2
def test_squad_v2_no_answer_handling():
    golds = {"a": [], "b": [], "c": ["Paris"], "d": ["the"]}  # "the" normalises to "" -> unanswerable
    preds = {"a": "", "b": "London", "c": "paris", "d": ""}
    s = squad_v2_scores(preds, golds)
    assert s["exact_match"] == pytest.approx(75.0)
    assert s["f1"] == pytest.approx(75.0)
    assert s["no_ans_exact_match"] == pytest.approx(100 * 2 / 3)
    assert s["has_ans_f1"] == 100.0
    assert s["no_ans_f1"] == pytest.approx(100 * 2 / 3)


def test_squad_v2_empty_prediction_for_answerable_is_wrong():
    s = squad_v2_scores({"c": ""}, {"c": ["Paris"]})
    assert s["f1"] == 0.0 and s["exact_match"] == 0.0 and "no_ans_f1" not in s


# ------------------------------------------------------------------ MLQA
def test_mlqa_unicode_punctuation_removed():
    # MLQA strips every Unicode P* character, SQuAD only ASCII punctuation
    assert normalize_mlqa("«Paris»", "en") == "paris"
    s = mlqa_scores({"q": "«Paris»"}, {"q": ["Paris"]}, "en")
    assert s["exact_match"] == 100.0
    assert squad_scores({"q": "«Paris»"}, {"q": ["Paris"]})["exact_match"] == 0.0


@pytest.mark.parametrize(
    "lang,pred,gold",
    [
        ("en", "The answer", "answer"),
        ("es", "La casa de los padres", "casa de padres"),
        ("de", "Der Hund des Nachbarn", "Hund Nachbarn"),
        ("vi", "những con mèo", "con mèo"),
        ("ar", "الكتاب", "كتاب"),
    ],
)
def test_mlqa_articles_per_language(lang, pred, gold):
    assert normalize_mlqa(pred, lang) == normalize_mlqa(gold, lang)
    assert mlqa_scores({"q": pred}, {"q": [gold]}, lang)["exact_match"] == 100.0


def test_mlqa_articles_are_language_specific():
    # "die" is a German article but not an English one
    assert normalize_mlqa("die Katze", "de") == "katze"
    assert normalize_mlqa("die Katze", "en") == "die katze"
    # Arabic: MLQA replaces 'ال' everywhere, also inside a word
    assert normalize_mlqa("مالك", "ar") == "م ك"


def test_mlqa_chinese_mixed_segmentation():
    assert normalize_mlqa("北京是中国的首都。", "zh") == "北 京 是 中 国 的 首 都"
    assert normalize_mlqa("iPhone手机", "zh") == "iphone 手 机"
    # pred 北京市 vs gold 北京: common 2 chars, p 2/3, r 1 -> f1 0.8; SQuAD would give 0
    s = mlqa_scores({"q": "北京市"}, {"q": ["北京"]}, "zh")
    assert s["exact_match"] == 0.0
    assert s["f1"] == pytest.approx(80.0)
    assert squad_scores({"q": "北京市"}, {"q": ["北京"]})["f1"] == 0.0


def test_mlqa_max_over_golds_and_unknown_language():
    s = mlqa_scores({"q": "Der Vertrag"}, {"q": ["ein Abkommen", "Vertrag"]}, "de")
    assert s == {"exact_match": 100.0, "f1": 100.0}
    with pytest.raises(UnknownNameError, match="MLQA language"):
        mlqa_scores({"q": "x"}, {"q": ["x"]}, "fr")


# ------------------------------------------------------------------ NER / POS
def test_ner_hand_computed_with_broken_i_tags():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    # sentence 1: the PER is predicted starting with a broken I- tag (lenient: still PER 0-1);
    #             LOC predicted as I-LOC (lenient start) -> correct
    # sentence 2: ORG predicted as I-PER -> wrong type
    pred = [["I-PER", "I-PER", "O", "I-LOC"], ["I-PER", "O"]]
    s = ner_scores(pred, gold)
    # 3 gold, 3 predicted, 2 correct
    assert s["precision"] == pytest.approx(200 / 3)
    assert s["recall"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(200 / 3)


def test_ner_type_change_inside_i_run_splits_entities():
    assert get_entities([["B-PER", "I-LOC", "I-LOC"]]) == [("PER", 0, 0), ("LOC", 1, 2)]
    assert get_entities([["O", "I-MISC"]]) == [("MISC", 1, 1)]
    assert get_entities([["B-PER"], ["I-PER"]]) == [("PER", 0, 0), ("PER", 2, 2)]  # sentences never merge


def test_ner_no_entities_is_zero_not_error():
    assert ner_scores([["O", "O"]], [["O", "O"]]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    with pytest.raises(XStiltsError, match="sentence 0"):
        ner_scores([["O"]], [["O", "O"]])


TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "E-PER", "S-LOC"]
UPOS = ["NOUN", "VERB", "ADJ", "ADP", "DET", "PUNCT", "PROPN", "PRON", "SCONJ", "INTJ", "X", "SYM", "NUM", "AUX", "CCONJ"]


@pytest.mark.parametrize("vocab", [TAGS, UPOS], ids=["iob", "upos"])
def test_tagging_matches_seqeval_on_random_sequences(vocab):
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.metrics.sequence_labeling import get_entities as sq_entities

    rng = random.Random(13)
    for _ in range(60):
        n = rng.randint(1, 6)
        gold = [[rng.choice(vocab) for _ in range(rng.randint(1, 8))] for _ in range(n)]
        pred = [[t if rng.random() < 0.6 else rng.choice(vocab) for t in s] for s in gold]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert get_entities(gold) == sq_entities(gold)
            ours = ner_scores(pred, gold)
            assert ours["f1"] == pytest.approx(100 * f1_score(gold, pred))
            assert ours["precision"] == pytest.approx(100 * precision_score(gold, pred))
            assert ours["recall"] == pytest.approx(100 * recall_score(gold, pred))


def test_pos_scores_xtreme_semantics_and_accuracy():
    gold = [["DET", "NOUN", "NOUN", "VERB"]]
    pred = [["DET", "NOUN", "VERB", "VERB"]]
    s = pos_scores(pred, gold)
    # XTREME's seqeval view: gold chunks DET(0), NOUN(1-2), VERB(3); pred DET(0), NOUN(1), VERB(2-3) -> 1/3 correct
    assert s["f1"] == pytest.approx(100 / 3)
    assert s["accuracy"] == 75.0


# ------------------------------------------------------------------ retrieval
def _parallel(n=50, d=16, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    tgt = rng.normal(size=(n, d)).astype(np.float32)
    src = tgt + noise * rng.normal(size=(n, d)).astype(np.float32)
    return src, tgt


def test_tatoeba_accuracy_hand_computed():
    tgt = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    src = np.array([[2, 0.1], [1, 1.2], [0.1, 3]], dtype=np.float32)  # 0->0 right, 1->2 wrong, 2->1 wrong
    assert tatoeba_accuracy(src, tgt) == pytest.approx(100 / 3)
    s, t = _parallel()
    assert tatoeba_accuracy(s, t) == 100.0
    assert tatoeba_accuracy(s, t, margin="ratio") == 100.0
    # random pairing: near chance
    rng = np.random.default_rng(1)
    assert tatoeba_accuracy(rng.normal(size=(200, 16)), rng.normal(size=(200, 16))) < 10


def test_knn_numpy_fallback_matches_faiss(monkeypatch):
    from xstilts.metrics import retrieval

    s, t = _parallel(noise=1.0)
    sims_f, idx_f = knn(s, t, 4)
    monkeypatch.setattr(retrieval, "_faiss", lambda: None)
    sims_n, idx_n = knn(s, t, 4)
    np.testing.assert_allclose(sims_f, sims_n, atol=1e-5)
    np.testing.assert_array_equal(idx_f, idx_n)


def test_margin_ratio_hand_computed():
    x = np.array([[1, 0], [0, 1]], dtype=np.float32)
    y = np.array([[1, 0], [0.6, 0.8]], dtype=np.float32)
    m = margin_scores(x, y, k=1, margin="ratio")
    # cos matrix [[1, .6], [0, .8]]; fwd 1-NN: [1, .8]; bwd 1-NN: y0 -> 1, y1 -> .8
    # m[0,1] = .6 / ((1 + .8)/2) = 2/3
    assert m[0, 1] == pytest.approx(0.6 / 0.9)
    assert m[1, 1] == pytest.approx(0.8 / 0.8)
    d = margin_scores(x, y, k=1, margin="distance")
    assert d[0, 0] == pytest.approx(0.0)


def test_bucc_mining_threshold_and_f1():
    s, t = _parallel(n=40, noise=0.2)
    rng = np.random.default_rng(3)
    # 20 extra source sentences without a translation
    s = np.vstack([s, rng.normal(size=(20, s.shape[1])).astype(np.float32)])
    src_ids = [f"s{i}" for i in range(len(s))]
    tgt_ids = [f"t{i}" for i in range(len(t))]
    gold = [(f"s{i}", f"t{i}") for i in range(40)]
    res = bucc_f1(s, t, src_ids, tgt_ids, gold)
    assert res["f1"] == 100.0 and res["precision"] == 100.0
    # a threshold above every score extracts nothing
    assert bucc_f1(s, t, src_ids, tgt_ids, gold, threshold=1e9)["f1"] == 0.0
    pairs = mine_bitext(s, t)
    assert len({p[0] for p in pairs}) == len(pairs) and len({p[1] for p in pairs}) == len(pairs)


def test_optimize_threshold_hand_computed():
    cands = [(("a", "1"), 1.5), (("b", "2"), 1.4), (("c", "9"), 1.3), (("d", "4"), 1.0)]
    gold = {("a", "1"), ("b", "2"), ("d", "4")}
    # cut after 2: p 1, r 2/3 -> f1 .8; after 4: p 3/4 r 1 -> .857 -> best; threshold below the last score
    th = optimize_threshold(cands, gold)
    assert th < 1.0
    cands2 = [(("a", "1"), 1.5), (("b", "2"), 1.4), (("c", "9"), 1.3), (("x", "4"), 1.0), (("y", "5"), 0.9)]
    assert optimize_threshold(cands2, {("a", "1"), ("b", "2")}) == pytest.approx((1.4 + 1.3) / 2)
