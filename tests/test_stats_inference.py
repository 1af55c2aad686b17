"""Simulation checks of the report's statistics: intervals, error rates, power (seconds, fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from xstilts.analysis.inference import (
    adjust_pvalues,
    adjust_tables,
    binomial_item_variance,
    design_spread,
    difference_in_mean_gain,
    format_p,
    infer_gains,
    minimal_detectable_effect,
    paired_item_variance,
    seed_level_test,
    significance_mark,
    t_test_power,
)
from xstilts.analysis.stats import rank_correlation


def _random_dataset(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(3, 26))
    kind = rng.integers(0, 5)
    x = rng.normal(size=n)
    if kind == 1:
        x = rng.integers(0, 2, size=n).astype(float)  # binary measure
    elif kind == 2:
        x = rng.integers(0, 3, size=n).astype(float)  # heavy ties
    y = rng.uniform(-1, 2) * x + rng.normal(size=n) * rng.uniform(0, 1.5)
    if kind == 3:
        y = np.exp(x)  # perfectly monotone
    if kind == 4:
        y = np.round(y)  # ties in y
    return x, y


def test_rank_correlation_ci_contains_its_estimate_on_1000_random_data_sets():
    rng = np.random.default_rng(2026)
    checked = 0
    for i in range(1000):
        x, y = _random_dataset(rng)
        c = rank_correlation(x, y, n_boot=99, n_perm=0, seed=i)
        if not np.isfinite(c.spearman) or not np.isfinite(c.spearman_ci_low):
            continue
        checked += 1
        assert c.spearman_ci_low - 1e-9 <= c.spearman <= c.spearman_ci_high + 1e-9, (i, c)
        assert c.kendall_ci_low - 1e-9 <= c.kendall <= c.kendall_ci_high + 1e-9, (i, c)
        assert c.ci_method
    assert checked > 700


def test_rank_correlation_counts_degenerate_resamples_and_uses_exact_permutation():
    x = np.array([0, 0, 0, 0, 1, 1.0])
    y = np.array([1, 2, 3, 4, 5, 6.0])
    c = rank_correlation(x, y, n_boot=500, n_perm=1000)
    assert c.n == 6 and c.n_degenerate > 0  # resamples with x constant are counted, not dropped
    assert c.spearman_ci_low <= c.spearman <= c.spearman_ci_high
    assert c.p_method == "exact permutation"
    # all 720 pairings enumerated: the two 1s get the top two ranks in 2 * 4! of them (one-sided 1/15);
    # two-sided about twice that, not the asymptotic t-test's
    assert 0.1 < c.spearman_p < 0.2


def _null_grids(rng, n_sims, n_tests, n_seeds, n_langs, effect=None):
    """Per-seed gains of n_tests (setup, target) groups: run effect + language noise, mean 0 (+ effect)."""
    run = rng.normal(0, 1.0, size=(n_sims, n_tests, n_seeds, 1))
    lang = rng.normal(0, 2.0, size=(n_sims, n_tests, n_seeds, n_langs))
    gains = run + lang
    if effect is not None:
        gains = gains + np.asarray(effect)[None, :, None, None]
    return gains.mean(axis=-1)  # [sims, tests, seeds]


@pytest.mark.parametrize("method", ["holm", "fdr_bh"])
def test_corrected_false_positive_rate_is_at_most_five_percent(method):
    rng = np.random.default_rng(7)
    n_sims, n_tests = 2000, 12
    per_seed = _null_grids(rng, n_sims, n_tests, n_seeds=3, n_langs=8)
    p = seed_level_test(per_seed)["p"]
    adjusted = adjust_pvalues(p, method)
    family_wise = float(np.mean((adjusted < 0.05).any(axis=1)))
    assert family_wise <= 0.065
    # and uncorrected, each single test holds its level
    assert abs(float(np.mean(p < 0.05)) - 0.05) < 0.01


def test_a_planted_effect_of_twice_the_mde_is_found():
    rng = np.random.default_rng(11)
    n_sims, n_tests, n_seeds, n_langs = 2000, 12, 3, 8
    sd_per_seed = math.sqrt(1.0 + 4.0 / n_langs)  # run sd 1, language sd 2 averaged over 8 languages
    mde = minimal_detectable_effect(sd_per_seed, n_seeds, n_tests=n_tests)
    effect = np.zeros(n_tests)
    effect[0] = 2 * mde
    per_seed = _null_grids(rng, n_sims, n_tests, n_seeds, n_langs, effect)
    p = seed_level_test(per_seed)["p"]
    adjusted = adjust_pvalues(p, "holm")
    assert float(np.mean(adjusted[:, 0] < 0.05)) >= 0.8
    # the MDE is calibrated: at 1x the MDE a single uncorrected test at alpha/m has about 80 % power
    effect[0] = mde
    single = seed_level_test(_null_grids(rng, n_sims, 1, n_seeds, n_langs, effect[:1]))["p"][:, 0]
    assert abs(float(np.mean(single < 0.05 / n_tests)) - 0.8) < 0.04
    assert t_test_power(mde, sd_per_seed / math.sqrt(n_seeds), n_seeds - 1, alpha=0.05 / n_tests) == pytest.approx(0.8)


def _gains_frame(rng, n_seeds, effect=0.0, setups=("a", "b"), targets=("x", "y"), langs="abcdef"):
    rows = []
    for s in setups:
        for t in targets:
            for seed in range(n_seeds):
                run = rng.normal(0, 1.0)
                for lang in langs:
                    g = run + rng.normal(0, 2.0) + (effect if s == "a" else 0.0)
                    rows.append(("m", s, t, lang, seed, g))
    return pd.DataFrame(rows, columns=["model", "setup", "target", "language", "seed", "gain"])


def test_infer_gains_null_grids_through_the_frames():
    rng = np.random.default_rng(3)
    p = []
    for _ in range(50):
        g = _gains_frame(rng, 3)
        tables = [infer_gains(g, ("model", "setup", "target")), infer_gains(g, ("model", "setup"))]
        p.append(np.concatenate([t["p_value"].to_numpy(float) for t in tables]))
    hits = int((adjust_pvalues(np.stack(p), "holm") < 0.05).any(axis=1).sum())
    assert hits <= 6  # 5 % expected; binomial(50, 0.05) exceeds 6 with probability ~1 %


def test_two_seeds_are_descriptive_only_and_three_give_intervals():
    rng = np.random.default_rng(0)
    two = infer_gains(_gains_frame(rng, 2, effect=3.0), ("model", "setup"))
    assert two["p_value"].isna().all() and two["ci_low"].isna().all()
    assert two["inference"].str.startswith("descriptive only").all()
    assert (two["seed_min"] <= two["mean_gain"]).all() and (two["mean_gain"] <= two["seed_max"]).all()
    three = infer_gains(_gains_frame(rng, 3, effect=3.0), ("model", "setup"))
    assert three["p_value"].notna().all()
    assert ((three["ci_low"] <= three["mean_gain"]) & (three["mean_gain"] <= three["ci_high"])).all()
    assert (three["df"] == 2).all()


def test_seed_level_test_matches_scipy_and_item_variance_widens_it():
    from scipy.stats import ttest_1samp

    x = np.array([1.0, 2.5, 0.5, 1.8])
    r = seed_level_test(x)
    ref = ttest_1samp(x, 0.0)
    assert float(r["p"]) == pytest.approx(ref.pvalue) and float(r["t"]) == pytest.approx(ref.statistic)
    ci = ref.confidence_interval(0.95)
    assert float(r["ci_low"]) == pytest.approx(ci.low) and float(r["ci_high"]) == pytest.approx(ci.high)
    wide = seed_level_test(x, item_var=0.5)
    assert float(wide["se"]) > float(r["se"]) and float(wide["p"]) > float(r["p"]) and float(wide["df"]) > 3
    # a constant gain: zero spread, p = 0 (printed "< 0.001"), not NaN
    assert float(seed_level_test(np.array([2.0, 2.0, 2.0]))["p"]) == 0.0


def test_item_variance_helpers_and_frames():
    assert float(binomial_item_variance(50.0, 50.0, 25)) == pytest.approx((0.25 + 0.25) / 25 * 1e4)
    assert math.isnan(float(binomial_item_variance(50.0, 50.0, 0)))
    expected = np.var([0, 0, 100, 0], ddof=1) / 4
    assert paired_item_variance([100, 0, 100, 100], [100, 0, 0, 100]) == pytest.approx(expected)
    rng = np.random.default_rng(1)
    g = _gains_frame(rng, 3, langs="ab")
    iv = pd.DataFrame({"language": ["a", "b"], "item_var": [4.0, 4.0]})
    plain = infer_gains(g, ("model", "setup", "target"))
    widened = infer_gains(g, ("model", "setup", "target"), item_var=iv)
    assert (widened["se"] > plain["se"]).all()
    assert widened["inference"].str.contains("item sampling").all()


def test_corrections_and_p_formatting():
    p = [0.01, 0.04, np.nan, 0.03]
    holm = adjust_pvalues(p, "holm")
    assert holm[0] == pytest.approx(0.03) and math.isnan(holm[2])
    a, b = pd.DataFrame({"p_value": [0.01, 0.04]}), pd.DataFrame({"p_value": [np.nan, 0.03]})
    assert adjust_tables([a, b], method="holm") == 3
    assert a["p_adjusted"].tolist() == pytest.approx([0.03, 0.06]) and b["p_adjusted"].iloc[1] == pytest.approx(0.06)
    rows = np.random.default_rng(0).uniform(size=(5, 9)) ** 3  # the vectorised form agrees with statsmodels
    for method in ("holm", "fdr_bh"):
        assert adjust_pvalues(rows, method) == pytest.approx(np.stack([adjust_pvalues(r, method) for r in rows]))
    with pytest.raises(ValueError, match="holm"):
        adjust_pvalues(p, "bonferonni")
    assert [format_p(v) for v in (0.0, 0.0004, 0.0123, 0.456, np.nan)] == ["< 0.001", "< 0.001", "0.012", "0.46", "n/a"]
    assert [significance_mark(v) for v in (0.0001, 0.005, 0.03, 0.2, np.nan)] == ["***", "**", "*", "", ""]


def test_design_spread_and_mde_shrink_with_more_seeds():
    rng = np.random.default_rng(5)
    spread = design_spread(_gains_frame(rng, 5))
    assert spread.df_seed == 4 * 4 and spread.n_seeds == 5 and spread.n_languages == 6
    assert 0.8 < spread.sd_seed < 2.2 and spread.sd_language > 0
    m3, m10 = (minimal_detectable_effect(spread.sd_seed, s) for s in (3, 10))
    assert m3 > m10 > 0
    assert math.isnan(minimal_detectable_effect(spread.sd_seed, 1))


def test_difference_in_mean_gain_for_binary_measures():
    rng = np.random.default_rng(4)
    flag = np.r_[np.ones(12), np.zeros(12)]
    gain = rng.normal(size=24) + 2.0 * flag
    d = difference_in_mean_gain(gain, flag, n_boot=500, n_perm=2000)
    assert d["n_1"] == 12 and d["n_0"] == 12
    assert d["ci_low"] <= d["difference"] <= d["ci_high"]
    assert d["difference"] == pytest.approx(gain[:12].mean() - gain[12:].mean())
    assert d["p"] < 0.01
    one_side = difference_in_mean_gain(gain, np.ones(24))
    assert math.isnan(one_side["difference"]) and "one side" in one_side["note"]


def test_mixed_model_cross_check_recovers_the_mean_and_needs_three_seeds():
    from xstilts.analysis.inference import mixed_model_gain

    rng = np.random.default_rng(8)
    g = _gains_frame(rng, 4, effect=2.0, setups=("a",))
    fit = mixed_model_gain(g)
    assert fit["ci_low"] <= fit["estimate"] <= fit["ci_high"]
    assert fit["estimate"] == pytest.approx(g["gain"].mean(), abs=0.05)  # balanced design: the grand mean
    assert "fewer than 3 seeds" in mixed_model_gain(g[g.seed < 2])["note"]


def _evidence_inputs(seeds, *, fail_baseline_seed=None):
    from types import SimpleNamespace

    from xstilts.analysis.gains import compute_gains
    from xstilts.analysis.groupings import attach_language_metadata

    rng = np.random.default_rng(2)
    rows = []
    for t, metric in (("xnli", "accuracy"), ("panx", "f1")):
        for lang in ("de", "fr", "sw", "hi"):
            for seed in seeds:
                base = 60 + rng.normal(0, 3)
                if t == "panx" and seed == fail_baseline_seed:
                    base = 0.0
                for s, gain in (("baseline", 0.0), ("anli", 1.5), ("cosmosqa", 0.0)):
                    value = base + gain + rng.normal(0, 0.3)
                    rows.append(("m", s, t, lang, seed, "test", metric, value, f"{s}{t}{seed}"))
    m = pd.DataFrame(rows, columns=["model", "setup", "target", "language", "seed", "split", "metric", "value",
                                    "stage_id"])
    gt = compute_gains(m)
    meta, _ = attach_language_metadata(gt.gains)
    opts = SimpleNamespace(confidence=0.95, seed=0, corr_boot=200, n_perm=500, low_resource_classes=(0, 1, 2),
                           low_resource_languages=None)
    return SimpleNamespace(metrics=m, gt=gt, meta=meta, options=opts), SimpleNamespace()


def test_evidence_withholds_every_p_value_below_three_seeds():
    from xstilts.analysis.evidence import compute_evidence

    inp, data = _evidence_inputs((1, 2))
    ev = compute_evidence(inp, data)
    assert not ev.inferential and ev.n_tests == 0
    for t in ev.gains.values():
        assert t["p_value"].isna().all() and t["ci_low"].isna().all()
    inp, data = _evidence_inputs((1, 2, 3))
    ev = compute_evidence(inp, data)
    assert ev.inferential and ev.n_tests == len(ev.gains["per_target"]) + len(ev.gains["per_setup"]) + 1 + \
        len(ev.gains["family"]) + len(ev.gains["resource_class"])
    ps = ev.gains["per_setup"].set_index("setup")
    assert ps.loc["anli", "p_adjusted"] >= ps.loc["anli", "p_value"]
    assert ev.gains["genus"]["p_value"].isna().all()  # described, not tested
    assert ev.mde["per_target"]["mde"] > 0 and ev.mde["per_target"]["corrected"] > ev.mde["per_target"]["mde"]


def test_failed_baseline_runs_are_flagged_for_every_setup():
    from xstilts.analysis.evidence import compute_evidence

    inp, data = _evidence_inputs((1, 2, 3), fail_baseline_seed=2)
    ev = compute_evidence(inp, data)
    # panx seed 2: baseline F1 0 -> every setup's panx gain in that seed is flagged; the setups themselves scored
    # ~1.5 and ~0, so cosmosqa's own run is at chance too
    assert {("m", "anli", "panx"), ("m", "cosmosqa", "panx")} <= ev.failed_cells()
    assert set(ev.failed[ev.failed.role == "baseline"]["seed"]) == {2}
    assert not any(t == "xnli" for _, _, t in ev.failed_cells())


def test_similarity_correlations_use_one_point_per_language_within_a_setup():
    from types import SimpleNamespace

    from xstilts.analysis.evidence import compute_evidence

    inp, data = _evidence_inputs((1, 2, 3))
    langs = [f"l{i}" for i in range(10)]
    pts = pd.DataFrame([{"model": m, "setup": s, "language": lang, "mean_gain": i + (s == "b"),
                         "lexical_overlap": i / 10, "same_family": float(i % 2)}
                        for m in ("m1", "m2") for s in ("a", "b") for i, lang in enumerate(langs)])
    data.language_similarity = SimpleNamespace(points=pts, measures=["lexical_overlap", "same_family"])
    ev = compute_evidence(inp, data)
    corr = ev.correlations["language"].set_index("group")
    assert corr.loc["all setups (mean gain per language)", "n"] == 10  # not 40 pooled (model, setup) points
    assert corr.loc["setup a", "n"] == 10 and corr.loc["setup a", "spearman"] == pytest.approx(1.0)
    diff = ev.differences["language"]
    assert set(diff["measure"]) == {"same_family"} and (diff["n_1"] + diff["n_0"] == 10).all()
    assert ev.correlations["language"]["p_adjusted"].notna().all()


# --------------------------------------------------------------------------- the report

P_VALUE_HEADERS = ("p_adj", "| p |", "p_value", "wilcoxon_p", "sign_flip_p", "spearman_p", "kendall_p")


def _report(tmp_path, seeds, monkeypatch, **opts):
    from tests.test_report import FAST, fake_texts, frames

    from xstilts.analysis.report import ReportOptions, report_from_frames

    monkeypatch.setattr("xstilts.analysis.similarity_sections.load_task_texts", fake_texts)
    m, st = frames(seeds=seeds)
    options = ReportOptions(**{**FAST, "tatoeba_examples": 20, **opts})
    return report_from_frames(m, st, tmp_path / "rep" / "report.html", options=options, output_dir=tmp_path)


def test_a_two_seed_report_prints_no_p_values(tmp_path, monkeypatch, tiny_model_dir):
    res = _report(tmp_path, (1, 2), monkeypatch, encoder=str(tiny_model_dir))
    md, html = res.markdown.read_text(), res.html.read_text()
    assert "Descriptive only" in md and "descriptive only (2 seeds)" in md
    for header in P_VALUE_HEADERS:
        assert header not in md, header
    assert "<th>p</th>" not in html and "<th>p_adj</th>" not in html and "p = " not in md
    ev = res.data.evidence
    assert not ev.inferential
    mat_marks = [m for t in ev.gains.values() for m in t.get("p_adjusted", [])]
    assert all(not np.isfinite(v) for v in mat_marks)
    assert "Power." in md  # the design's MDE (what 3 seeds would detect) is stated even so


def test_a_three_seed_report_prints_adjusted_p_values(tmp_path, monkeypatch):
    res = _report(tmp_path, (1, 2, 3), monkeypatch, similarity=False)
    md = res.markdown.read_text()
    ev = res.data.evidence
    assert ev.inferential and ev.n_tests > 10
    assert "| p | p_adj | sig |" in md and "Holm" in md and f"{ev.n_tests} tests" in md
    assert "seed-level t-test (3 runs)" in md
    import re

    from xstilts.analysis.evidence_render import gain_table

    for col in ("p", "p_adj"):  # printed as "< 0.001", "0.012", "0.41", never "0.0"
        assert all(re.fullmatch(r"< 0\.001|0\.\d{2,3}|1\.00|n/a", v) for v in gain_table(ev, "per_target")[col])
    per_setup = ev.gains["per_setup"]
    assert (per_setup["p_adjusted"] >= per_setup["p_value"] - 1e-12).all()
    assert "Power." in md and "after correcting for" in md
    # long tables collapsed in the Markdown, with their CSV beside the report
    assert "<details><summary>" in md and (res.markdown.parent / "tables").is_dir()


def test_item_counts_from_the_eval_stages_widen_the_intervals(tmp_path):
    import json

    from xstilts.analysis.evidence import item_variance

    inp, _ = _evidence_inputs((1, 2, 3))
    gains, how = item_variance(inp.gt.gains, inp.metrics, None)
    assert "item_var" not in gains.columns and "not included" in how
    for sid in inp.metrics["stage_id"].unique():
        (tmp_path / "stages" / sid).mkdir(parents=True)
        (tmp_path / "stages" / sid / "metrics.json").write_text(json.dumps({"n_examples": {"de": 30, "fr": 30, "sw": 20,
                                                                                           "hi": 40}}))
    gains, how = item_variance(inp.gt.gains, inp.metrics, tmp_path)
    assert gains["item_var"].notna().all() and "median 30 items" in how and "binomial" in how
    plain = infer_gains(inp.gt.gains, ("model", "setup", "target"))
    wide = infer_gains(gains, ("model", "setup", "target"))
    assert (wide["ci_high"] - wide["ci_low"] > plain["ci_high"] - plain["ci_low"]).all()


def test_a_setup_with_two_seeds_among_three_seed_setups_is_described_not_tested():
    from xstilts.analysis.evidence import compute_evidence
    from xstilts.analysis.gains import compute_gains
    from xstilts.analysis.groupings import attach_language_metadata

    inp, data = _evidence_inputs((1, 2, 3))
    m = inp.metrics[~((inp.metrics.setup == "cosmosqa") & (inp.metrics.seed == 3))]
    inp.metrics, inp.gt = m, compute_gains(m)
    inp.meta, _ = attach_language_metadata(inp.gt.gains)
    ev = compute_evidence(inp, data)
    pt = ev.gains["per_target"].set_index("setup")
    assert ev.inferential and pt.loc["cosmosqa", "p_value"].isna().all() and pt.loc["anli", "p_value"].notna().all()
    assert any("cosmosqa on panx" in n for n in ev.notes)



def test_item_variance_from_the_runs_predictions_is_tighter_than_the_binomial_bound(tmp_path):
    import json

    from xstilts.analysis.evidence import discordance_item_variance, item_variance

    assert discordance_item_variance({"a": "1", "b": "2"}, {"a": "1", "b": "0"}) == pytest.approx(0.5 * 1e4 / 2)
    assert math.isnan(discordance_item_variance({"a": "1"}, {"b": "1"}))
    inp, _ = _evidence_inputs((1, 2, 3))
    for sid in inp.metrics["stage_id"].unique():
        d = tmp_path / "stages" / sid
        (d / "predictions").mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"n_examples": {lang: 30 for lang in ("de", "fr", "sw", "hi")}}))
        for lang in ("de", "fr", "sw", "hi"):  # the runs disagree on 3 of 30 items
            flip = 3 if not sid.startswith("baseline") else 0
            rows = [{"id": f"{lang}-{i}", "prediction": int(i < flip)} for i in range(30)]
            (d / "predictions" / f"{lang}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    gains, how = item_variance(inp.gt.gains, inp.metrics, tmp_path)
    assert "predictions" in how and gains["item_var"].to_numpy() == pytest.approx(3 / 30 * 1e4 / 30)
    assert (gains["item_var"] < binomial_item_variance(gains["score"], gains["baseline_score"], 30)).all()
