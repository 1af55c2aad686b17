"""The study summary block (xstilts.analysis.study_summary, `xstilts summarize`): its numbers
against a hand computation with scipy on a synthetic study, the README block replaced and
nothing else, `--check` failing on a stale block, and analysis.yaml errors that name the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from xstilts.analysis import study_summary as ss
from xstilts.cli import app
from xstilts.errors import ConfigError, DataError

SEEDS = [0, 1, 2]
# Joshi class: de fr hi ar 4-5 (high), sw yo jv qu 1-2 (low); Indo-European: de fr hi (3 languages)
PANX = ["de", "fr", "hi", "ar", "sw", "yo", "jv", "qu"]
LOW = {"sw", "yo", "jv", "qu"}
TATOEBA = ["de", "fr", "sw", "jv"]
TARGETS = {"panx": (PANX, "dev", "f1"), "tatoeba": (TATOEBA, "test", "accuracy")}
PROSE_BEFORE = "# A study\n\nThe question, in words.\n\n## Answer\n\n"
PROSE_AFTER = "\nWhat it means, in words.\n"


def _gains() -> dict[tuple[str, str, str, int], float]:
    """(setup, target, language, seed) -> gain: setup a gains ~3 points (2 less on low-resource
    languages), b ~1 point; seed and language noise from a fixed generator."""
    rng = np.random.default_rng(7)
    out = {}
    for target, (langs, _, _) in TARGETS.items():
        for setup, base in (("a", 3.0), ("b", 1.0)):
            offset = rng.normal(0.0, 1.0, size=len(SEEDS))
            for lang in langs:
                for seed in SEEDS:
                    low = -2.0 if (setup == "a" and lang in LOW) else 0.0
                    out[setup, target, lang, seed] = base + low + offset[seed] + rng.normal(0.0, 0.5)
    return out


GAINS = _gains()


def _rows() -> list[dict]:
    rng = np.random.default_rng(3)
    rows = []
    for target, (langs, split, metric) in TARGETS.items():
        for lang in langs:
            for seed in SEEDS:
                base = 40.0 + rng.normal(0.0, 5.0)
                for setup in ("baseline", "a", "b"):
                    value = base + (GAINS[setup, target, lang, seed] if setup != "baseline" else 0.0)
                    cell = dict(model="e5-small", setup=setup, target=target, language=lang, seed=seed, split=split,
                                stage_id=f"{setup}-{target}-{seed}")
                    rows.append({**cell, "metric": metric, "value": value})
                    rows.append({**cell, "metric": "precision", "value": value + 7.0})  # not the primary metric
    for setup in ("a", "b"):  # `--intermediate-dev` rows: not targets
        for seed in SEEDS:
            rows.append(dict(model="e5-small", setup=setup, target="anli", language="en", seed=seed,
                             split=ss.INTERMEDIATE_DEV, metric="accuracy", value=50.0, stage_id=f"{setup}-{seed}"))
    return rows


def _write_study(root: Path, **config) -> Path:
    study = root / "toy"
    study.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(_rows()).to_csv(study / "results.csv", index=False)
    analysis = {"baseline": "baseline", "upper_bound": [{"setup": "b", "target": "tatoeba", "why": "its own data"}],
                "contrasts": [["a", "b"]], "groups": ["resource", "family"], "min_group_languages": 3,
                "interaction_reference": {"a": "b"}, **config}
    (study / "analysis.yaml").write_text(yaml.safe_dump(analysis, sort_keys=False))
    (study / "README.md").write_text(f"{PROSE_BEFORE}{ss.BEGIN}\nold numbers\n{ss.END}\n{PROSE_AFTER}")
    return study


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return _write_study(tmp_path)


def _hand_test(per_seed: np.ndarray) -> dict[str, float]:
    """Mean, 95 % t interval and two-sided one-sample t-test p, straight from scipy."""
    mean = float(np.mean(per_seed))
    lo, hi = stats.t.interval(0.95, len(per_seed) - 1, loc=mean, scale=stats.sem(per_seed))
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "p": float(stats.ttest_1samp(per_seed, 0.0).pvalue)}


def _hand_holm(p: list[float]) -> np.ndarray:
    order = np.argsort(p)
    m = len(p)
    stepped = np.minimum(np.maximum.accumulate([p[i] * (m - k) for k, i in enumerate(order)]), 1.0)
    out = np.empty(m)
    out[order] = stepped
    return out


def _per_seed(setup: str, target: str, langs: list[str]) -> np.ndarray:
    return np.array([np.mean([GAINS[setup, target, lang, s] for lang in langs]) for s in SEEDS])


def _row(frame: pd.DataFrame, **key) -> pd.Series:
    mask = np.logical_and.reduce([frame[k] == v for k, v in key.items()])
    assert mask.sum() == 1, (key, frame)
    return frame[mask].iloc[0]


def test_gain_table_matches_a_hand_computation(study: Path) -> None:
    data = ss.load_study(study)
    assert data.n_seeds == 3 and set(data.scores["metric"]) == {"f1", "accuracy"}
    assert set(data.gains["target"]) == {"panx", "tatoeba"}  # intermediate_dev rows are not targets
    assert (data.results["split"] == ss.INTERMEDIATE_DEV).sum() == 6
    table = ss.gain_table(data)
    keys = [(s, t) for s in ("a", "b") for t in ("panx", "tatoeba")]
    hand = {k: _hand_test(_per_seed(*k, TARGETS[k[1]][0])) for k in keys}
    holm = dict(zip(keys, _hand_holm([hand[k]["p"] for k in keys])))
    for setup, target in keys:
        row, h = _row(table, setup=setup, target=target), hand[setup, target]
        assert row["mean_gain"] == pytest.approx(h["mean"], abs=1e-9)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((h["ci_low"], h["ci_high"]), abs=1e-9)
        assert row["p_value"] == pytest.approx(h["p"], rel=1e-9)
        assert row["p_adjusted"] == pytest.approx(holm[setup, target], rel=1e-9)
        assert (row["n_seeds"], row["n_languages"]) == (3, len(TARGETS[target][0]))
        # the MDE has 80 % power for the two-sided t-test (noncentral t, df = 2)
        se = np.std(_per_seed(setup, target, TARGETS[target][0]), ddof=1) / np.sqrt(3)
        crit = stats.t.ppf(0.975, 2)
        assert stats.nct.sf(crit, 2, row["mde"] / se) + stats.nct.cdf(-crit, 2, row["mde"] / se) == pytest.approx(0.8)
        assert bool(row["upper_bound"]) == ((setup, target) == ("b", "tatoeba"))
    h = hand["a", "panx"]
    line = (f"| a | panx | {h['mean']:+.1f} | [{h['ci_low']:.1f}, {h['ci_high']:.1f}] | {ss.fmt_p(h['p'])} | "
            f"{ss.fmt_p(holm['a', 'panx'])} | {_row(table, setup='a', target='panx')['mde']:.1f} | 3 | 8 |")
    text = ss.summarize(study)
    assert line in text.splitlines()
    assert "| b † | tatoeba |" in text and "† upper bound, not an intermediate task for tatoeba: its own data." in text


def test_groups_interaction_and_contrasts_match_a_hand_computation(study: Path) -> None:
    data = ss.load_study(study)
    low = [x for x in PANX if x in LOW]
    high = [x for x in PANX if x not in LOW]
    res = _row(ss.resource_table(data), setup="a", target="panx", resource_level="low")
    assert res["mean_gain"] == pytest.approx(_hand_test(_per_seed("a", "panx", low))["mean"], abs=1e-9)
    assert res["p_value"] == pytest.approx(_hand_test(_per_seed("a", "panx", low))["p"], rel=1e-9)
    # families with >= 3 languages in the target: only Indo-European (de fr hi) on PAN-X
    fam = ss.family_table(data)
    assert set(zip(fam["target"], fam["family"])) == {("panx", "Indo-European")}
    ie = _row(fam, setup="a", target="panx", family="Indo-European")
    assert ie["mean_gain"] == pytest.approx(_per_seed("a", "panx", ["de", "fr", "hi"]).mean(), abs=1e-9)

    gap = {s: _per_seed(s, "panx", low) - _per_seed(s, "panx", high) for s in ("a", "b")}
    inter = _row(ss.interaction_table(data), setup="a", reference="b", target="panx")
    h = _hand_test(gap["a"] - gap["b"])
    assert inter["mean"] == pytest.approx(h["mean"], abs=1e-9) and inter["p_value"] == pytest.approx(h["p"], rel=1e-9)
    assert inter["mean"] < -1.0  # a costs low-resource languages 2 points more; b does not
    assert (inter["n_low"], inter["n_high"]) == (4, 4)

    contrasts = ss.contrast_table(data)
    keys = ["panx", "tatoeba"]
    hand = {t: _hand_test(_per_seed("a", t, TARGETS[t][0]) - _per_seed("b", t, TARGETS[t][0])) for t in keys}
    holm = dict(zip(keys, _hand_holm([hand[t]["p"] for t in keys])))
    for t in keys:
        row = _row(contrasts, a="a", b="b", target=t)
        assert row["mean"] == pytest.approx(hand[t]["mean"], abs=1e-9)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((hand[t]["ci_low"], hand[t]["ci_high"]), abs=1e-9)
        assert row["p_adjusted"] == pytest.approx(holm[t], rel=1e-9)


def test_write_readme_replaces_only_the_block(study: Path) -> None:
    assert ss.write_readme(study) is True
    text = (study / "README.md").read_text()
    block = ss.summarize(study)
    assert text == f"{PROSE_BEFORE}{ss.BEGIN}\n{block}{ss.END}\n{PROSE_AFTER}"
    assert ss.read_block(study) == block
    assert ss.write_readme(study) is False  # already up to date: the file is left alone
    assert ss.check_readme(study) == ""


def test_cli_check_fails_on_a_stale_block_and_passes_after_write(study: Path) -> None:
    runner = CliRunner()
    stale = runner.invoke(app, ["summarize", str(study), "--check"])
    assert stale.exit_code == 1, stale.output
    assert "-old numbers" in stale.output and "stale" in stale.output
    wrote = runner.invoke(app, ["summarize", str(study), "--write-readme"])
    assert wrote.exit_code == 0, wrote.output
    fresh = runner.invoke(app, ["summarize", str(study), "--check"])
    assert fresh.exit_code == 0, fresh.output
    printed = runner.invoke(app, ["summarize", str(study)])
    assert printed.exit_code == 0 and ss.read_block(study) in printed.output


def test_readme_without_markers_is_an_error_naming_the_file(study: Path) -> None:
    (study / "README.md").write_text("# no markers\n")
    with pytest.raises(DataError, match="README.md.*summary:begin"):
        ss.write_readme(study)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"extras": {"no_such_extra": {}}}, "no_such_extra"),
        ({"contrasts": [["a", "nope"]]}, "contrasts.*'nope'"),
        ({"groups": ["script"]}, "groups"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_analysis_yaml_errors_name_the_key(tmp_path: Path, config: dict, match: str) -> None:
    study = _write_study(tmp_path, **config)
    with pytest.raises(ConfigError, match=match):
        ss.summarize(study)


def test_fewer_than_three_seeds_are_described_not_tested(tmp_path: Path) -> None:
    study = _write_study(tmp_path)
    frame = pd.read_csv(study / "results.csv")
    frame[frame["seed"] != 2].to_csv(study / "results.csv", index=False)
    table = ss.gain_table(ss.load_study(study))
    assert table["p_value"].isna().all() and table["ci_low"].isna().all() and table["mde"].isna().all()
    assert "| a | panx |" in ss.summarize(study) and "n/a" in ss.summarize(study)


def test_intermediate_dev_scores_are_summarised(tmp_path) -> None:
    """Rows with split intermediate_dev become a descriptive table (mean and range over seeds,
    the chance level of a classification task); the gain tables ignore them."""
    import pandas as pd

    from xstilts.analysis.study_summary import intermediate_dev_section

    rows = [{"model": "m", "setup": "a", "target": "anli", "language": "en", "seed": s, "split": "intermediate_dev",
             "metric": "accuracy", "value": v, "stage_id": f"s{s}"} for s, v in enumerate([30.0, 36.0, 33.0])]

    class Data:
        results = pd.DataFrame(rows)

    text = intermediate_dev_section(Data())
    assert "| a | anli | accuracy | 33.0 | 30.0-36.0 | 33.3 | 3 |" in text
    Data.results = Data.results.iloc[0:0]
    assert intermediate_dev_section(Data()) == ""
