"""XTREME aggregation reproduces published tables."""

from __future__ import annotations

import pytest

from xstilts.errors import UnknownNameError, XStiltsError
from xstilts.evaluate.xtreme import language_average, task_metric, xtreme_scores

# Hu et al. 2020, "XTREME: A Massively Multilingual Multi-task Benchmark for Evaluating
# Cross-lingual Generalization" (ICML 2020, arXiv:2003.11080), Table 2 "Overall results of
# baselines across all XTREME tasks" (zero-shot). QA cells are F1 / EM; "Avg" is the
# published overall score.
XTREME_TABLE2 = {
    # model: (XNLI, PAWS-X, POS, NER, XQuAD F1/EM, MLQA F1/EM, TyDiQA-GoldP F1/EM, BUCC, Tatoeba, Avg)
    "mBERT": (65.4, 81.9, 70.3, 62.2, (64.5, 49.4), (61.4, 44.2), (59.7, 43.9), 56.7, 38.7, 59.6),
    "MMTE": (67.4, 81.3, 72.3, 58.3, (64.4, 46.2), (60.3, 41.4), (58.1, 43.8), 59.8, 37.9, 59.3),
}


def _per_task(row):
    xnli, pawsx, pos, ner, xquad, mlqa, tydiqa, bucc, tatoeba, _ = row
    qa = lambda fe: {"f1": fe[0], "exact_match": fe[1]}  # noqa: E731
    return {
        "xnli": {"accuracy": xnli}, "pawsx": {"accuracy": pawsx}, "udpos": {"f1": pos}, "panx": {"f1": ner},
        "xquad": qa(xquad), "mlqa": qa(mlqa), "tydiqa": qa(tydiqa), "bucc2018": {"f1": bucc}, "tatoeba": {"accuracy": tatoeba},
    }


@pytest.mark.parametrize("model", sorted(XTREME_TABLE2))
def test_xtreme_overall_reproduces_paper_table(model):
    row = XTREME_TABLE2[model]
    res = xtreme_scores(_per_task(row), "xtreme")
    assert round(res["overall"], 1) == row[-1]
    assert set(res["groups"]) == {"classification", "structured_prediction", "qa", "retrieval"}
    # mBERT: classification (65.4 + 81.9) / 2 = 73.65; QA ((64.5+49.4)/2 + (61.4+44.2)/2 + (59.7+43.9)/2) / 3
    assert res["groups"]["classification"] == pytest.approx((row[0] + row[1]) / 2)
    assert res["tasks"]["xquad"] == pytest.approx(sum(row[4]) / 2)


def test_incomplete_benchmark_has_no_overall_and_per_language_input_is_averaged():
    per_lang = {"de": {"accuracy": 80.0}, "en": {"accuracy": 90.0}, "es": {"accuracy": 85.0}, "fr": {"accuracy": 85.0},
                "ja": {"accuracy": 70.0}, "ko": {"accuracy": 70.0}, "zh": {"accuracy": 75.0}, "it": {"accuracy": 0.0}}
    res = xtreme_scores({"pawsx": per_lang, "xnli": {"accuracy": 70.0}}, "xtreme")
    # 'it' is not a PAWS-X XTREME language and is ignored: mean of the 7 official ones
    assert res["tasks"]["pawsx"] == pytest.approx(555 / 7)
    assert res["groups"] == {"classification": pytest.approx((555 / 7 + 70) / 2)}
    assert res["overall"] is None
    with pytest.raises(XStiltsError, match="missing: ja"):
        language_average("pawsx", {k: v for k, v in per_lang.items() if k != "ja"})


def test_xtreme_r_groups_and_errors():
    res = xtreme_scores({"xcopa": {"accuracy": 60.0}, "xnli": {"accuracy": 80.0}, "pawsx": {"accuracy": 99.0}}, "xtreme-r")
    assert res["groups"]["classification"] == 70.0 and "pawsx" not in res["tasks"]
    with pytest.raises(UnknownNameError):
        xtreme_scores({}, "xglue")
    with pytest.raises(XStiltsError, match="exact_match"):
        task_metric("mlqa", {"f1": 1.0})
