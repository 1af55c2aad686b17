"""The study extras (xstilts.analysis.study_extras) against hand computations on synthetic data,
and the lexical-similarity measure on two real Tatoeba languages."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xstilts.analysis import study_extras as se
from xstilts.errors import ConfigError, DataError

SEEDS = [0, 1, 2]


@dataclass
class Study:
    """A stand-in for study_summary.StudyData with the fields the extras read."""

    dir: Path
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    gains: pd.DataFrame = field(default_factory=pd.DataFrame)
    config: dict = field(default_factory=lambda: {"baseline": "baseline"})
    n_seeds: int = 3


def gains_frame(cells: dict[tuple[str, str, str, int], float]) -> pd.DataFrame:
    """(setup, target, language, seed) -> gain, as the core's gains frame."""
    rows = [{"model": "e5-small", "setup": s, "target": t, "language": lang, "seed": seed, "score": 50.0 + g,
             "baseline_score": 50.0, "gain": g} for (s, t, lang, seed), g in cells.items()]
    return pd.DataFrame(rows)


def line(md: str, prefix: str) -> str:
    """The first Markdown line starting with ``prefix``."""
    return next(ln for ln in md.splitlines() if ln.startswith(prefix))


def t_summary(x) -> tuple[float, float, float, float]:
    """Hand computation: mean, 95 % t interval, two-sided p against 0."""
    x = np.asarray(x, dtype=float)
    n, m, sd = x.size, x.mean(), x.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    p = 2 * stats.t.sf(abs(m / (sd / math.sqrt(n))), n - 1)
    return m, m - half, m + half, p


def test_formatting_is_fixed_precision():
    assert se.fmt_points(1.25) == "1.2" and se.fmt_points(0.06, sign=True) == "+0.1"
    assert se.fmt_p(0.0004) == "< 0.001" and se.fmt_p(0.41) == "0.410" and se.fmt_p(float("nan")) == "n/a"
    assert se.fmt_r(-0.12345) == "-0.123"
    assert se.markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


# --------------------------------------------------------------------------- 2. forgetting


def dev_rows(values: dict[tuple[str, str, int], float]) -> pd.DataFrame:
    rows = []
    for (setup, task, seed), v in values.items():
        rows.append({"model": "e5-small", "setup": setup, "target": task, "language": "en", "seed": seed,
                     "split": "intermediate_dev", "metric": "accuracy", "value": v, "stage_id": "x"})
        rows.append({**rows[-1], "metric": "loss", "value": 99.0})
    return pd.DataFrame(rows)


def test_forgetting_matches_hand_computation(tmp_path):
    after = {0: 40.0, 1: 42.0, 2: 37.0}
    single = {0: 45.0, 1: 44.0, 2: 43.5}
    vals = {("anli_then_udpos", "anli", s): v for s, v in after.items()}
    vals.update({("anli", "anli", s): v for s, v in single.items()})
    vals[("udpos", "udpos_en", 0)] = 90.0
    study = Study(tmp_path, results=dev_rows(vals))
    pair = {"setup": "anli_then_udpos", "task": "anli", "reference": "anli"}
    row = se.forgetting_row(se.dev_scores(study), "e5-small", pair)
    m, lo, hi, p = t_summary([after[s] - single[s] for s in SEEDS])
    assert row["metric"] == "accuracy" and row["n"] == 3
    assert row["mean"] == pytest.approx(m)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi))
    assert row["p"] == pytest.approx(p)
    md = se.forgetting(study, {"pairs": [pair]})
    assert md.startswith("### ") and f"{m:+.1f}" in md and f"[{lo:+.1f}, {hi:+.1f}]" in md and f"{p:.3f}" in md
    assert f"{np.mean(list(after.values())):.1f}" in md


def test_forgetting_without_dev_rows_says_how_to_get_them(tmp_path):
    study = Study(tmp_path, results=pd.DataFrame(columns=["model", "setup", "target", "language", "seed", "split",
                                                          "metric", "value"]))
    with pytest.raises(DataError, match="--intermediate-dev"):
        se.forgetting(study, {"pairs": [{"setup": "a_b", "task": "anli", "reference": "anli"}]})
    with pytest.raises(ConfigError, match="extras.forgetting.pairs"):
        se.forgetting(study, {"pairs": [{"setup": "a_b"}]})


# --------------------------------------------------------------------------- 4. crossover


def test_crossover_matches_hand_computation(tmp_path):
    rng = np.random.default_rng(1)
    cells = {}
    for setup, target, lang, seed in itertools.product(["r1", "r2", "r3"], ["panx", "tatoeba"], ["de", "fi"], SEEDS):
        cells[(setup, target, lang, seed)] = float(rng.normal(1.0, 2.0))
    study = Study(tmp_path, gains=gains_frame(cells))
    md = se.crossover(study, {"a": ["r1", "r2"], "b": ["r3"], "a_targets": ["panx"], "b_targets": ["tatoeba"]})

    def cell(setups, target, seed):
        return np.mean([np.mean([cells[(s, target, lang, seed)] for lang in ("de", "fi")]) for s in setups])

    inter = [(cell(["r1", "r2"], "panx", s) - cell(["r3"], "panx", s))
             - (cell(["r1", "r2"], "tatoeba", s) - cell(["r3"], "tatoeba", s)) for s in SEEDS]
    m, lo, hi, p = t_summary(inter)
    assert f"| {m:+.1f} | [{lo:+.1f}, {hi:+.1f}] | {se.fmt_p(p)} |" in line(md, "| interaction")
    r1 = cell(["r1"], "panx", 0), cell(["r1"], "panx", 1), cell(["r1"], "panx", 2)
    m1, *_ = t_summary(r1)
    cells_line = line(md, "| r1 + r2 on panx")
    assert f"{np.mean([cell(['r1', 'r2'], 'panx', s) for s in SEEDS]):+.1f}" in cells_line
    control = [cell(["r1"], "tatoeba", s) - cell(["r2"], "tatoeba", s) for s in SEEDS]
    c_line = line(md, "| r1 − r2 on tatoeba")
    assert f"| {t_summary(control)[0]:+.1f} |" in c_line and m1 == pytest.approx(np.mean(r1))
    with pytest.raises(ConfigError, match="extras.crossover.b"):
        se.crossover(study, {"a": ["r1"], "b": ["nope"], "a_targets": ["panx"], "b_targets": ["tatoeba"]})


# --------------------------------------------------------------------------- 5. above chance


def test_above_chance_one_sided_t_and_binomial(tmp_path):
    acc = {("baseline", 0): 34.0, ("baseline", 1): 33.0, ("baseline", 2): 35.5,
           ("anli", 0): 40.0, ("anli", 1): 41.0, ("anli", 2): 38.0}
    scores = pd.DataFrame([{"model": "e5-small", "setup": s, "target": "xnli", "language": "de", "seed": seed,
                            "split": "test", "metric": "accuracy", "value": v} for (s, seed), v in acc.items()])
    study = Study(tmp_path, results=scores.assign(stage_id="x"), scores=scores)
    x = np.array([acc[("anli", s)] for s in SEEDS])
    p_t = stats.ttest_1samp(x, 33.333, alternative="greater").pvalue
    row = se.chance_row(scores[scores["setup"] == "anli"], 33.333, {"de": 1000.0})
    assert row["mean"] == pytest.approx(x.mean()) and row["p_t"] == pytest.approx(p_t)
    k = round(x.mean() / 100 * 1000)
    assert row["n_items"] == 1000 and row["p_binom"] == pytest.approx(stats.binomtest(k, 1000, 0.33333,
                                                                                       alternative="greater").pvalue)
    md = se.above_chance(study, {"target": "xnli", "chance": 33.333})
    assert "not known" in md and se.fmt_p(p_t) in md and f"{x.mean():.1f}" in md
    counted = pd.concat([study.results, scores.assign(metric="n_examples", value=1000.0, stage_id="x")])
    md2 = se.above_chance(Study(tmp_path, results=counted, scores=scores), {"target": "xnli", "chance": 33.333})
    assert "| 1000 |" in md2 and "not known" not in md2 and "Holm p" in md2
    with pytest.raises(ConfigError, match="extras.above_chance.target"):
        se.above_chance(study, {"target": "panx", "chance": 33.3})


# --------------------------------------------------------------------------- 3. lexical similarity


def test_lexical_similarity_matches_hand_computation(tmp_path):
    langs = ["en", "ar", "fi", "de", "ja", "sw", "hi"]
    sims = {"en": 0.3, "ar": 0.5, "fi": 0.2}
    lex = pd.DataFrame([{"target_language": t, "intermediate_language": i,
                         "subword_weighted_jaccard": 1.0 if t == i else round(0.1 * (j + 1) * sims[i], 4)}
                        for j, t in enumerate(langs) for i in sims])
    lex.to_csv(tmp_path / "lexsim.csv", index=False)
    rng = np.random.default_rng(3)
    cells = {(arm, "panx", lang, s): float(rng.normal(0, 3)) for arm in ("en_only", "mixed") for lang in langs
             for s in SEEDS}
    study = Study(tmp_path, gains=gains_frame(cells))
    shares = {"en": 0.5, "ar": 0.25, "fi": 0.25}
    md = se.lexical_similarity(study, {"languages": {"en_only": ["en"], "mixed": shares}})
    table = lex.pivot(index="target_language", columns="intermediate_language", values="subword_weighted_jaccard")
    weighted = sum(table[i] * w for i, w in shares.items())
    mean_gain = pd.Series({lang: np.mean([cells[("mixed", "panx", lang, s)] for s in SEEDS]) for lang in langs})
    rho = stats.spearmanr(weighted.loc[langs], mean_gain.loc[langs])[0]
    assert f"| {len(langs)} | {rho:.3f} |" in line(md, "| mixed | panx | share-weighted")
    rho_max = stats.spearmanr(table.max(axis=1).loc[langs], mean_gain.loc[langs])[0]
    assert f"| {rho_max:.3f} |" in line(md, "| mixed | panx | max")
    seen = [np.mean([cells[("mixed", "panx", lang, s)] for lang in ("ar", "fi")])
            - np.mean([cells[("mixed", "panx", lang, s)] for lang in ("de", "ja", "sw", "hi")]) for s in SEEDS]
    m, lo, hi, p = t_summary(seen)
    seen_line = line(md, "| mixed | panx | 2 | 4 |")
    assert f"| {m:+.1f} | [{lo:+.1f}, {hi:+.1f}] | {se.fmt_p(p)} |" in seen_line
    assert not any(ln.startswith("| en_only | panx | 0") for ln in md.splitlines())  # no seen row for English only


def _hand_weighted_jaccard(a: Counter, b: Counter) -> float:
    pa = {k: v / sum(a.values()) for k, v in a.items()}
    pb = {k: v / sum(b.values()) for k, v in b.items()}
    keys = set(pa) | set(pb)
    return sum(min(pa.get(k, 0), pb.get(k, 0)) for k in keys) / sum(max(pa.get(k, 0), pb.get(k, 0)) for k in keys)


def test_lexsim_measure_on_real_tatoeba(tmp_path, shared_data, tokenizer, monkeypatch):
    (tmp_path / "spec.yaml").write_text(
        "models: [e5-small]\nintermediate: {baseline: none, anli: {task: anli, split: dev}}\n"
        f"targets: [{{task: tatoeba, languages: [de, nl]}}]\ndata_dir: {shared_data}\noutput_dir: out\n")
    monkeypatch.setattr(se, "load_analysis_tokenizer", lambda name: tokenizer)
    path = se.MEASURES["lexical_similarity"](Study(tmp_path), {"languages": {"en_only": ["en"], "de_arm": ["de"]}})
    table = pd.read_csv(path).set_index(["target_language", "intermediate_language"])
    assert sorted(table.index) == [("de", "de"), ("de", "en"), ("nl", "de"), ("nl", "en")]
    assert table.loc[("de", "de"), "subword_weighted_jaccard"] == pytest.approx(1.0)
    side = {c: Counter(p for line in (shared_data / f"tatoeba/tatoeba.{c}-eng.{c}").read_text().splitlines()
                       for p in tokenizer.tokenize(line)) for c in ("deu", "nld")}
    assert table.loc[("nl", "de"), "subword_weighted_jaccard"] == pytest.approx(
        _hand_weighted_jaccard(side["nld"], side["deu"]), abs=1e-6)
    assert table.loc[("nl", "de"), "n_target"] == 1000
    assert 0 < table.loc[("nl", "en"), "subword_weighted_jaccard"] < 1


# --------------------------------------------------------------------------- 1. similarity x family

SPEC1 = """models: [e5-small]
intermediate: {baseline: none, anli: {task: anli, split: dev}, commonsenseqa: {task: commonsenseqa, split: dev},
               udpos_en: udpos_en, tydiqa_en: tydiqa_en}
targets: [{task: panx, languages: [de, fr, es, fi, et, hu, tr, kk, az, ar, ja]},
          {task: tydiqa, languages: [fi, ar, ru]}]
output_dir: out
"""
FAMILY_LANGS = ["de", "fr", "es", "fi", "et", "hu", "tr", "kk", "az", "ar", "ja"]


def similarity_study(tmp_path: Path) -> tuple[Study, dict]:
    (tmp_path / "spec.yaml").write_text(SPEC1)
    inters, targets = ["anli", "commonsenseqa", "udpos_en", "tydiqa_en"], ["panx", "tydiqa"]
    sim = {(i, t): 0.1 * (k + 1) + 0.05 * j for k, i in enumerate(inters) for j, t in enumerate(targets)}
    pd.DataFrame([{"intermediate": i, "target": t, "same_format": float(i == "udpos_en" and t == "panx"),
                   "subword_weighted_jaccard": v, "word_js": 1 - v, "text_emb": v ** 2}
                  for (i, t), v in sim.items()]).to_csv(tmp_path / "similarity.csv", index=False)
    rng = np.random.default_rng(7)
    fam_shift = {"Indo-European": 1.0, "Uralic": -1.0, "Turkic": 0.5, "Japonic": 5.0}
    from xstilts.languages import find_language

    cells = {}
    for (i, t), v in sim.items():
        for lang in (FAMILY_LANGS if t == "panx" else ["fi", "ar", "ru"]):
            for s in SEEDS:
                cells[(i, t, lang, s)] = 20 * v + fam_shift.get(find_language(lang).family, 0) + float(rng.normal(0, 1))
    config = {"baseline": "baseline", "upper_bound": [{"setup": "tydiqa_en", "target": "tydiqa"}]}
    return Study(tmp_path, gains=gains_frame(cells), config=config), sim


def test_similarity_correlation_matches_hand_computation(tmp_path):
    study, sim = similarity_study(tmp_path)
    md = se.similarity_family(study, {"measures": ["subword_weighted_jaccard", "word_js"]})
    g = study.gains
    pairs = [(s, t) for s, t in sim if (s, t) != ("tydiqa_en", "tydiqa")]
    mean_gain = [g[(g.setup == s) & (g.target == t)].groupby("seed")["gain"].mean().mean() for s, t in pairs]
    rho = stats.spearmanr([sim[p] for p in pairs], mean_gain)[0]
    assert f"| {rho:.3f} |" in line(md, "| subword_weighted_jaccard | 7 |")
    assert "| word_js (divergence) | 7 |" in md
    assert "ja" in md.split("dropped")[1]  # Japonic has one language: dropped, and said so
    assert "thin" in md


def test_family_model_slope_is_the_ols_estimate(tmp_path):
    study, sim = similarity_study(tmp_path)
    by_pair = se.pair_measures(pd.read_csv(tmp_path / "similarity.csv"), se.setup_tasks(se._spec(study)),
                               ["subword_weighted_jaccard"])
    lang, dropped = se.keep_families(se._language_gains(study, "e5-small", by_pair), 3)
    assert dropped == ["ar", "ja"]
    fit = se.family_model(lang, "subword_weighted_jaccard", target_effects=False)
    # hand: OLS with a sum-coded family design; the sim slope = mean of the per-family slopes
    d = lang.dropna(subset=["subword_weighted_jaccard"])
    per_pair = d.drop_duplicates("pair")["subword_weighted_jaccard"]
    z = ((d["subword_weighted_jaccard"] - per_pair.mean()) / per_pair.std(ddof=1)).to_numpy()
    fams = sorted(d["family"].unique())
    slopes = []
    for f in fams:
        m = (d["family"] == f).to_numpy()
        slopes.append(np.polyfit(z[m], d["gain"].to_numpy()[m], 1)[0])
    assert fit["slope"] == pytest.approx(np.mean(slopes), rel=1e-8)
    assert fit["n_pairs"] == 7 and fit["n_families"] == len(fams) == 3
    assert 0 <= fit["p_interaction"] <= 1 and fit["ci_low"] < fit["slope"] < fit["ci_high"]


def test_similarity_measure_on_real_data(tmp_path, shared_data, tiny_model_dir, monkeypatch):
    from xstilts.analysis.similarity import load_encoder_for_analysis

    (tmp_path / "spec.yaml").write_text(
        "models: [e5-small]\nintermediate: {baseline: none, anli: {task: anli, split: dev}}\n"
        f"targets: [{{task: panx, languages: [de]}}, {{task: tatoeba, languages: [de, nl]}}]\n"
        f"data_dir: {shared_data}\noutput_dir: out\n")
    monkeypatch.setattr(se, "load_analysis_encoder", lambda name: load_encoder_for_analysis(str(tiny_model_dir)))
    path = se.MEASURES["similarity_family"](Study(tmp_path), {"max_examples": 20})
    table = pd.read_csv(path).set_index(["intermediate", "target"])
    assert list(table.index) == [("anli", "panx"), ("anli", "tatoeba")]
    assert list(table.columns) == list(se.SIMILARITY_MEASURES)
    assert (table["same_format"] == 0).all() and table.notna().all().all()
    assert ((table["word_js"] > 0) & (table["word_js"] < 1)).all()
    spec = se._spec(Study(tmp_path))
    english = se.english_task_texts(spec, ["tatoeba"], max_examples=20)["tatoeba"]
    eng_lines = {ln for c in ("deu", "nld")
                 for ln in (shared_data / f"tatoeba/tatoeba.{c}-eng.eng").read_text().splitlines()}
    assert len(english) == 20 and set(english) <= eng_lines  # the English side of the target's own languages
