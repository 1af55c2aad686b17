"""Statistics, gains and groupings on small synthetic result tables with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from xstilts.analysis.gains import compute_gains, per_language_gains, summarize_gains
from xstilts.analysis.groupings import (
    add_resource_level,
    attach_language_metadata,
    flag_high_low_divergence,
    flag_negative_groups,
    gains_by_group,
)
from xstilts.languages import Language
from xstilts.analysis.similarity import (
    correlate_with_gains,
    jaccard,
    jensen_shannon,
    weighted_jaccard,
    word_counts,
)
from xstilts.analysis.stats import (
    bootstrap_hierarchical_ci,
    rank_correlation,
    sign_flip_greater,
    wilcoxon_greater,
)
from xstilts.errors import DataError
from xstilts.tasks.catalog import TaskSpec

FAST = dict(n_boot=500, n_perm=500)

def lang(code: str, name: str, family: str, genus: str, script: str, resource_class: int) -> Language:
    """A row of the language table (what the analyses read of a language)."""
    return Language(code, code, code, name, family, genus, script, resource_class)


LANGS = {
    "de": lang("de", "German", "Indo-European", "Germanic", "Latin", 5),
    "fr": lang("fr", "French", "Indo-European", "Romance", "Latin", 5),
    "sw": lang("sw", "Swahili", "Niger-Congo", "Bantoid", "Latin", 2),
    "yo": lang("yo", "Yoruba", "Niger-Congo", "Defoid", "Latin", 2),
    "ja": lang("ja", "Japanese", "Japonic", "Japanese", "Japanese", 5),
}


def lookup(code: str) -> Language | None:
    return LANGS.get(code)


def task_spec(name: str, primary_metric: str, fmt: str, eval_split: str = "test", *, domain: str | None = None,
              label_list: list[str] | None = None) -> TaskSpec:
    """A minimal catalog entry (what the analyses read of a task)."""
    return TaskSpec(name=name, format=fmt, role="both", languages=["en"], splits=[eval_split], eval_split=eval_split,
                    metric="accuracy" if primary_metric == "accuracy" else "ner_f1", primary_metric=primary_metric,
                    domain=domain, label_list=label_list)


def tasks(name: str) -> TaskSpec | None:
    return {"xnli": task_spec("xnli", "accuracy", "classification", "test"),
            "panx": task_spec("panx", "f1", "tagging", "dev")}.get(name)


def metrics_frame(gain_fn, *, setups=("anli", "cosmosqa"), targets=("xnli", "panx"), langs=("de", "fr", "sw", "yo"),
                  seeds=(1, 2, 3), model="m", baseline=True) -> pd.DataFrame:
    rows = []
    for t in targets:
        metric, split = ("accuracy", "test") if t == "xnli" else ("f1", "dev")
        for lang in langs:
            for seed in seeds:
                base = 50.0 + 3 * seed + len(lang) + hash((t, lang)) % 7
                if baseline:
                    rows.append(("m", "baseline", t, lang, seed, split, metric, base, "b"))
                    rows.append(("m", "baseline", t, lang, seed, split, "other", base - 10, "b"))
                for s in setups:
                    rows.append((model, s, t, lang, seed, split, metric, base + gain_fn(s, t, lang, seed), "x"))
                    rows.append((model, s, t, lang, seed, split, "other", 0.0, "x"))
    return pd.DataFrame(rows, columns=["model", "setup", "target", "language", "seed", "split", "metric", "value", "stage_id"])


def test_constant_gain_of_two_gives_mean_two_and_ci_two():
    gt = compute_gains(metrics_frame(lambda *a: 2.0), task_lookup=tasks)
    assert gt.notes == []
    assert np.allclose(gt.gains["gain"], 2.0)
    assert gt.metric_by_target == {"xnli": "accuracy", "panx": "f1"}
    for by in (("model", "setup", "target"), ("model", "setup"), ("model",)):
        s = summarize_gains(gt.gains, by, **FAST)
        assert np.allclose(s["mean_gain"], 2.0)
        assert np.allclose(s["std_seeds"], 0.0)
        assert np.allclose(s["ci_low"], 2.0) and np.allclose(s["ci_high"], 2.0)
        assert (s["wilcoxon_p"] < 0.01).all() and (s["sign_flip_p"] < 0.01).all()
        assert (s["note"] == "").all()
    overall = summarize_gains(gt.gains, ("model",), **FAST)
    assert overall["n_cells"].iloc[0] == 2 * 2 * 4 * 3


def test_targets_weigh_equally_and_std_across_seeds():
    # xnli gain = seed, panx gain = 10 (panx has only 2 languages: equal weight per target anyway)
    def gain(s, t, lang, seed):
        return float(seed) if t == "xnli" else 10.0

    m = metrics_frame(gain, setups=("anli",))
    m = m[~((m["target"] == "panx") & m["language"].isin(["sw", "yo"]))]
    gt = compute_gains(m, task_lookup=tasks)
    s = summarize_gains(gt.gains, ("model", "setup"), **FAST).iloc[0]
    assert s["mean_gain"] == pytest.approx((2.0 + 10.0) / 2)
    assert s["std_seeds"] == pytest.approx(np.std([1 / 2 + 5, 2 / 2 + 5, 3 / 2 + 5], ddof=1))
    assert s["ci_low"] <= s["mean_gain"] <= s["ci_high"]
    assert s["ci_low"] >= 5.5 - 1e-9 and s["ci_high"] <= 6.5 + 1e-9
    pl = per_language_gains(gt.gains)
    assert pl[(pl.target == "xnli") & (pl.language == "de")]["mean_gain"].iloc[0] == pytest.approx(2.0)


def test_single_seed_has_no_ci_and_says_so():
    gt = compute_gains(metrics_frame(lambda *a: 1.0, seeds=(7,)), task_lookup=tasks)
    s = summarize_gains(gt.gains, ("model", "setup"), **FAST)
    assert s["mean_gain"].tolist() == pytest.approx([1.0, 1.0])
    assert s["std_seeds"].isna().all() and s["ci_low"].isna().all() and s["ci_high"].isna().all()
    assert s["note"].str.contains("single seed").all()


def test_missing_baseline_is_reported_not_invented():
    m = metrics_frame(lambda *a: 2.0)
    m = m[~((m["setup"] == "baseline") & (m["target"] == "panx") & (m["seed"] == 3))]
    gt = compute_gains(m, task_lookup=tasks)
    assert len(gt.missing_baseline) == 2 * 4  # 2 setups x 4 languages, panx seed 3
    assert any("no matching 'baseline'" in n and "panx" in n for n in gt.notes)
    assert np.allclose(gt.gains["gain"], 2.0)
    none = compute_gains(m[m["setup"] != "baseline"], task_lookup=tasks)
    assert none.gains.empty and any("no 'baseline' runs" in n for n in none.notes)
    assert summarize_gains(none.gains, ("model", "setup")).empty


def test_unknown_target_falls_back_with_note_and_bad_columns_raise():
    m = metrics_frame(lambda *a: 1.0, targets=("mytask",))
    m["metric"] = m["metric"].replace({"accuracy": "f1"})
    gt = compute_gains(m, task_lookup=tasks)
    assert gt.metric_by_target == {"mytask": "f1"}
    assert any("not in the task catalog" in n for n in gt.notes)
    with pytest.raises(DataError, match="missing columns"):
        compute_gains(m.drop(columns=["seed"]), task_lookup=tasks)


def test_negative_family_is_flagged_and_high_low_divergence():
    # Niger-Congo (sw, yo; class 2) loses 3 points with anli, Indo-European gains 2
    def gain(s, t, lang, seed):
        if s == "anli":
            return -3.0 + 0.1 * seed if lang in ("sw", "yo") else 2.0
        return 1.0

    gt = compute_gains(metrics_frame(gain), task_lookup=tasks)
    meta, notes = attach_language_metadata(gt.gains, lookup=lookup)
    assert notes == []
    fam = gains_by_group(meta, "family", **FAST)
    row = fam[(fam.setup == "anli") & (fam.family == "Niger-Congo")].iloc[0]
    assert row["mean_gain"] == pytest.approx(-2.8)
    neg = flag_negative_groups(fam)
    assert neg[["setup", "family"]].values.tolist() == [["anli", "Niger-Congo"]]
    assert bool(neg["significant"].iloc[0]) is True
    levels = add_resource_level(meta)
    div = flag_high_low_divergence(levels, per_target=False)
    flagged = div[div.flagged]
    assert flagged["setup"].tolist() == ["anli"]
    assert flagged["gain_high"].iloc[0] == pytest.approx(2.0) and flagged["gain_low"].iloc[0] == pytest.approx(-2.8)
    # a user-given low-resource list
    user = add_resource_level(meta, low_languages=["de"])
    assert set(user[user.language == "de"]["resource_level"]) == {"low"}
    rc = gains_by_group(meta, "resource_class", **FAST)
    assert set(rc["resource_class"]) == {"2", "5"}


def test_language_without_metadata_is_grouped_unknown_with_note():
    gt = compute_gains(metrics_frame(lambda *a: 1.0, langs=("de", "xx")), task_lookup=tasks)
    meta, notes = attach_language_metadata(gt.gains, lookup=lookup)
    assert any("xx" in n and "no metadata" in n for n in notes)
    fam = gains_by_group(meta, "family", **FAST)
    assert "unknown" in set(fam["family"])
    assert set(add_resource_level(meta)["resource_level"]) == {"high", "unknown"}


def test_paired_tests():
    assert sign_flip_greater([2.0] * 5) == pytest.approx(1 / 32)  # exact: only all-plus reaches the mean
    assert sign_flip_greater([1.0, -1.0]) == pytest.approx(0.75)
    assert sign_flip_greater([0.0] * 3) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    big = rng.normal(1.0, 1.0, size=40)
    assert sign_flip_greater(big, n_perm=2000) < 0.01
    assert sign_flip_greater(-big, n_perm=2000) > 0.9
    assert wilcoxon_greater([2.0] * 8) == pytest.approx(1 / 256)
    assert math.isnan(wilcoxon_greater([0.0, 0.0, 1.0]))


def test_bootstrap_ci_covers_and_needs_two_seeds():
    blocks = [np.array([[1.0, 3.0], [2.0, 4.0]])]
    lo, hi = bootstrap_hierarchical_ci(blocks, n_boot=2000)
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert all(math.isnan(v) for v in bootstrap_hierarchical_ci([np.ones((1, 3))]))


def test_rank_correlation_exactly_one_and_minus_one():
    x = np.arange(12.0)
    c = rank_correlation(x, x**3 + 5, n_boot=300)
    assert c.spearman == pytest.approx(1.0) and c.kendall == pytest.approx(1.0)
    assert c.spearman_ci_low == pytest.approx(1.0) and c.kendall_ci_high == pytest.approx(1.0)
    d = rank_correlation(x, -x, n_boot=300)
    assert d.spearman == pytest.approx(-1.0) and d.kendall_ci_low == pytest.approx(-1.0)
    assert math.isnan(rank_correlation([1, 2], [1, 2]).spearman)
    # agreement with scipy on noisy data
    from scipy.stats import kendalltau, spearmanr

    rng = np.random.default_rng(1)
    a = rng.normal(size=30)
    b = a + rng.normal(size=30)
    c = rank_correlation(a, b, n_boot=300)
    assert c.spearman == pytest.approx(spearmanr(a, b)[0]) and c.kendall == pytest.approx(kendalltau(a, b)[0])
    assert c.spearman_ci_low < c.spearman < c.spearman_ci_high


def test_correlate_with_gains_overall_and_per_group():
    pts = pd.DataFrame({"sim": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "mean_gain": [1, 2, 3, 4, 5, 6],
                        "family": ["A", "A", "A", "B", "B", "B"], "noise": [3, 1, 2, 2, 3, 1]})
    c = correlate_with_gains(pts, ["sim", "noise"], by="family", n_boot=200)
    overall = c[(c.group == "all") & (c.measure == "sim")].iloc[0]
    assert overall["spearman"] == pytest.approx(1.0) and overall["spearman_ci_low"] == pytest.approx(1.0)
    assert set(c["group"]) == {"all", "A", "B"}


def test_overlap_and_divergence_measures():
    a, b = word_counts(["the cat sat", "the cat"]), word_counts(["The dog sat"])
    assert jaccard(a, b) == pytest.approx(2 / 4)
    assert weighted_jaccard(a, a) == pytest.approx(1.0)
    assert jensen_shannon(a, a) == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon({"x": 1}, {"y": 1}) == pytest.approx(1.0)
    assert 0 < jensen_shannon(a, b) < 1
