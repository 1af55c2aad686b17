"""A study's summary block, generated from its ``results.csv`` and ``analysis.yaml``.

Every study folder (``studies/NAME/``) holds ``results.csv`` (``xstilts results ... --format
csv``), ``analysis.yaml`` (what to compute: the baseline, upper-bound pairs, contrasts,
groups, the resource x setup interaction, extras) and ``README.md``, whose generated block
sits between the lines :data:`BEGIN` and :data:`END`. :func:`summarize` computes that block;
:func:`write_readme` puts it into the README; :func:`check_readme` says whether the README's
block is stale (a test runs it for every study, so a README's numbers are always the ones its
results give).

The statistics are the report's (:mod:`xstilts.analysis.inference`): the seed (one training
run) is the unit of inference, a group's gain is the mean over seeds of the per-seed mean over
languages, with a t interval, a two-sided one-sample t-test, a correction over the p-values of
each table and the minimal detectable effect. Study-specific sections (similarity x family,
forgetting, lexical similarity, crossover, above chance) come from
``xstilts.analysis.study_extras`` (``EXTRAS`` / ``MEASURES``), looked up by name.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import yaml

from xstilts.analysis.gains import compute_gains
from xstilts.analysis.groupings import UNKNOWN, add_resource_level, attach_language_metadata
from xstilts.analysis.inference import (
    CORRECTIONS,
    MIN_SEEDS_FOR_INFERENCE,
    adjust_pvalues,
    infer_gains,
    minimal_detectable_effect,
    seed_level_test,
)
from xstilts.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BEGIN = "<!-- summary:begin -->"
END = "<!-- summary:end -->"
RESULTS_FILE = "results.csv"
ANALYSIS_FILE = "analysis.yaml"
README_FILE = "README.md"
#: the split of the rows `xstilts results --intermediate-dev` adds (intermediate tasks' English dev scores)
INTERMEDIATE_DEV = "intermediate_dev"
#: metric rows that count evaluation items, when an export records them
ITEM_METRICS = ("n_examples", "n_items")
EXTRAS_MODULE = "xstilts.analysis.study_extras"
CONFIG_KEYS = ("baseline", "alpha", "correction", "upper_bound", "contrasts", "groups", "min_group_languages",
               "interaction_reference", "extras")
GROUPS = ("resource", "family")
RESULT_COLUMNS = ("model", "setup", "target", "language", "seed", "split", "metric", "value")
MODEL_KEYS = ["model", "setup", "target"]


# --------------------------------------------------------------------------- loading


@dataclass
class StudyData:
    """One study's results, its primary-metric scores and gains, and its analysis.yaml."""

    dir: Path
    results: pd.DataFrame  # every row of results.csv
    scores: pd.DataFrame  # primary-metric target rows: model, setup, target, language, seed, split, metric, value
    gains: pd.DataFrame  # one row per (model, setup != baseline, target, language, seed), with language metadata
    config: dict[str, Any]
    n_seeds: int
    metric_by_target: dict[str, str] = field(default_factory=dict)
    split_by_target: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> str:
        return str(self.config["baseline"])

    @property
    def alpha(self) -> float:
        return float(self.config.get("alpha", 0.05))

    @property
    def correction(self) -> str:
        return str(self.config.get("correction", "holm"))

    @property
    def correction_name(self) -> str:
        return CORRECTIONS[self.correction]

    @property
    def analysis_file(self) -> Path:
        return self.dir / ANALYSIS_FILE

    def upper_bounds(self) -> dict[tuple[str, str], str]:
        """(setup, target) -> why, for the pairs analysis.yaml reports as upper bounds."""
        return {(str(u["setup"]), str(u["target"])): str(u.get("why", "upper bound"))
                for u in self.config.get("upper_bound") or []}


def load_study(study_dir: str | Path) -> StudyData:
    """Read ``results.csv`` and ``analysis.yaml`` of a study folder; scores and gains as the report computes them."""
    study = Path(study_dir)
    config = load_config(study / ANALYSIS_FILE)
    results = _read_results(study / RESULTS_FILE)
    targets = results[results["split"].astype(str) != INTERMEDIATE_DEV]
    table = compute_gains(targets, baseline=str(config["baseline"]))
    if not (table.scores["setup"] == config["baseline"]).any():
        raise DataError(study / RESULTS_FILE, f"no rows of the baseline setup '{config['baseline']}' "
                        f"(analysis.yaml: baseline); setups present: {sorted(set(targets['setup']))}")
    _check_setups(config, set(table.scores["setup"].astype(str)), study / ANALYSIS_FILE)
    gains, meta_notes = attach_language_metadata(table.gains)
    scores = table.scores.rename(columns={"score": "value"})
    n_seeds = int(scores["seed"].nunique())
    log.info("%s: %d result rows, %d gains, %d seeds", study, len(results), len(gains), n_seeds)
    return StudyData(study, results, scores, gains, config, n_seeds, table.metric_by_target, table.split_by_target,
                     [*table.notes, *meta_notes])


def _read_results(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "not found; export it with `xstilts results SPEC --format csv --out results.csv`")
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"language": str, "setup": str})
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(path, f"missing columns {missing}; expected {list(RESULT_COLUMNS)}")
    return frame


def load_config(path: Path) -> dict[str, Any]:
    """analysis.yaml as a dict, checked (ConfigError naming the file and key)."""
    if not path.is_file():
        raise ConfigError("not found; it says what the summary computes (at least `baseline: SETUP`)", file=path)
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise ConfigError("expected a mapping of keys", file=path)
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s); expected some of {list(CONFIG_KEYS)}", key=unknown[0], file=path)
    if not isinstance(config.get("baseline"), str):
        raise ConfigError("required: the setup every gain is measured against", key="baseline", file=path)
    if config.get("correction", "holm") not in CORRECTIONS:
        raise ConfigError(f"expected one of {sorted(CORRECTIONS)}", key="correction", file=path)
    bad_groups = sorted(set(config.get("groups") or []) - set(GROUPS))
    if bad_groups:
        raise ConfigError(f"unknown group(s) {bad_groups}; expected some of {list(GROUPS)}", key="groups", file=path)
    _check_shapes(config, path)
    config["extras"] = {str(k): (v or {}) for k, v in (config.get("extras") or {}).items()}
    return config


def _check_shapes(config: dict[str, Any], path: Path) -> None:
    """The list / mapping keys have the shapes the summary reads."""
    if any(not (isinstance(c, list) and len(c) == 2) for c in config.get("contrasts") or []):
        raise ConfigError("expected a list of [setup, setup] pairs", key="contrasts", file=path)
    if any(not (isinstance(u, dict) and {"setup", "target"} <= set(u)) for u in config.get("upper_bound") or []):
        raise ConfigError("expected a list of {setup, target, why} mappings", key="upper_bound", file=path)
    for key in ("interaction_reference", "extras"):
        if not isinstance(config.get(key) or {}, dict):
            raise ConfigError("expected a mapping", key=key, file=path)


def _check_setups(config: dict[str, Any], present: set[str], path: Path) -> None:
    """Every setup analysis.yaml names is in the results (ConfigError naming the key otherwise)."""
    named = [("contrasts", s) for pair in config.get("contrasts") or [] for s in pair]
    named += [("interaction_reference", s) for item in (config.get("interaction_reference") or {}).items() for s in item]
    named += [("upper_bound", u["setup"]) for u in config.get("upper_bound") or []]
    for key, setup in named:
        if str(setup) not in present:
            raise ConfigError(f"setup '{setup}' is not in results.csv; setups there: {sorted(present)}",
                              key=key, file=path)


# --------------------------------------------------------------------------- formatting


def fmt_points(x: float, *, signed: bool = True) -> str:
    """A value in points with one decimal (``+1.2``, ``-0.4``, ``0.0``); ``n/a`` when missing."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if round(float(x), 1) == 0:
        return "0.0"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def fmt_ci(low: float, high: float) -> str:
    """``[-0.5, 2.3]``; ``n/a`` when the interval is not computed."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return f"[{fmt_points(low, signed=False)}, {fmt_points(high, signed=False)}]"


def fmt_p(p: float) -> str:
    """A p-value with three decimals (``< 0.001`` below that); ``n/a`` when missing."""
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (``|``-separated; cells as given)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _label(data: StudyData, setup: str, target: str) -> str:
    """The setup's name, with a dagger where (setup, target) is an upper-bound pair."""
    return f"{setup} †" if (setup, target) in data.upper_bounds() else setup


def _models(data: StudyData) -> bool:
    """Whether the tables need a model column (more than one model in the results)."""
    return data.scores["model"].nunique() > 1


# --------------------------------------------------------------------------- the tables (numbers)


def _adjust(table: pd.DataFrame, data: StudyData, column: str = "p_value") -> pd.DataFrame:
    table = table.copy()
    table["p_adjusted"] = adjust_pvalues(table[column].to_numpy(float), data.correction) if len(table) else []
    return table


def gain_table(data: StudyData) -> pd.DataFrame:
    """Per (model, setup, target): seed-level gain, t interval, p, corrected p, MDE, upper-bound flag."""
    table = infer_gains(data.gains, MODEL_KEYS)
    table = _adjust(table, data)
    table["mde"] = [minimal_detectable_effect(sd, int(n), alpha=data.alpha) if n >= MIN_SEEDS_FOR_INFERENCE
                    else math.nan for sd, n in zip(table["sd_seeds"], table["n_seeds"])]
    bounds = data.upper_bounds()
    table["upper_bound"] = [(s, t) in bounds for s, t in zip(table["setup"], table["target"])]
    return table


def resource_table(data: StudyData) -> pd.DataFrame:
    """Per (model, setup, target, resource level): low = Joshi classes 0-2, high = 3-5 (unknown classes left out)."""
    frame = add_resource_level(data.gains)
    frame = frame[frame["resource_level"] != UNKNOWN]
    return _adjust(infer_gains(frame, [*MODEL_KEYS, "resource_level"]), data)


def family_table(data: StudyData) -> pd.DataFrame:
    """Per (model, setup, target, family), families with at least ``min_group_languages`` languages in the target."""
    frame = data.gains[data.gains["family"].notna()]
    size = frame.groupby(["target", "family"])["language"].transform("nunique")
    frame = frame[size >= int(data.config.get("min_group_languages", 3))]
    return _adjust(infer_gains(frame, [*MODEL_KEYS, "family"]), data)


def _test_row(per_seed: pd.Series) -> dict[str, float]:
    """Seed-level t-test of per-seed values (three-seed rule: no p or interval below it)."""
    res = seed_level_test(per_seed.to_numpy(float))
    n = int(res["n"])
    row = {"mean": float(res["mean"]), "ci_low": float(res["ci_low"]), "ci_high": float(res["ci_high"]),
           "p_value": float(res["p"]), "n_seeds": n}
    if n < MIN_SEEDS_FOR_INFERENCE:
        row.update(ci_low=math.nan, ci_high=math.nan, p_value=math.nan)
    return row


def _level_gap(gains: pd.DataFrame) -> tuple[pd.Series, int, int]:
    """Per seed, mean gain of the low-resource minus the high-resource languages; (gap, n low, n high)."""
    per = gains.groupby(["resource_level", "seed"])["gain"].mean()
    low, high = per.get("low", pd.Series(dtype=float)), per.get("high", pd.Series(dtype=float))
    counts = gains.groupby("resource_level")["language"].nunique()
    return low - high, int(counts.get("low", 0)), int(counts.get("high", 0))


def interaction_table(data: StudyData) -> pd.DataFrame:
    """Resource x setup interaction per (model, setup, reference, target): per seed, the setup's
    (low - high) gain minus the reference's (0 for the baseline), tested at the seed level."""
    frame = add_resource_level(data.gains)
    rows = []
    for setup, ref in (data.config.get("interaction_reference") or {}).items():
        for (model, target), g in frame.groupby(["model", "target"], sort=True):
            gap, n_low, n_high = _level_gap(g[g["setup"] == setup])
            if gap.dropna().empty:
                continue
            ref_gap = (_level_gap(g[g["setup"] == ref])[0] if ref != data.baseline else gap * 0.0)
            diff = (gap - ref_gap).dropna()
            rows.append({"model": model, "setup": setup, "reference": ref, "target": target,
                         "gap_setup": float(gap[diff.index].mean()), "gap_reference": float(ref_gap[diff.index].mean()),
                         **_test_row(diff), "n_low": n_low, "n_high": n_high})
    return _adjust(pd.DataFrame(rows, columns=_INTERACTION_COLUMNS), data)


_INTERACTION_COLUMNS = ["model", "setup", "reference", "target", "gap_setup", "gap_reference", "mean", "ci_low",
                        "ci_high", "p_value", "n_seeds", "n_low", "n_high"]
_CONTRAST_COLUMNS = ["model", "a", "b", "target", "mean", "ci_low", "ci_high", "p_value", "n_seeds", "n_languages"]


def contrast_table(data: StudyData) -> pd.DataFrame:
    """Setup a vs setup b per (model, target): per seed, the mean over languages of (score a - score b)."""
    keys = ["model", "target", "language", "seed"]
    rows = []
    for a, b in data.config.get("contrasts") or []:
        sa = data.scores[data.scores["setup"] == a].set_index(keys)["value"]
        sb = data.scores[data.scores["setup"] == b].set_index(keys)["value"]
        diff = (sa - sb).dropna().rename("diff").reset_index()
        for (model, target), g in diff.groupby(["model", "target"], sort=True):
            per_seed = g.groupby("seed")["diff"].mean()
            rows.append({"model": model, "a": a, "b": b, "target": target, **_test_row(per_seed),
                         "n_languages": int(g["language"].nunique())})
    return _adjust(pd.DataFrame(rows, columns=_CONTRAST_COLUMNS), data)


# --------------------------------------------------------------------------- the sections (Markdown)


def _p_head(data: StudyData) -> str:
    return f"{data.correction_name} p"


def _inference_cells(row: Any, mean_col: str = "mean_gain") -> list[str]:
    return [fmt_points(getattr(row, mean_col)), fmt_ci(row.ci_low, row.ci_high), fmt_p(row.p_value),
            fmt_p(row.p_adjusted)]


def _prefix(data: StudyData, row: Any) -> list[str]:
    return [str(row.model)] if _models(data) else []


def _model_head(data: StudyData) -> list[str]:
    return ["model"] if _models(data) else []


def _stat_note(data: StudyData, what: str) -> str:
    """The one-line method note of a seed-level table (the shared statistics are in the design section)."""
    return f"*Method:* {what}; seed-level statistics as above, {data.correction_name} over this table."


def _statistics_note(data: StudyData) -> str:
    """The statistics every table uses, said once."""
    return (f"*Statistics:* the seed (one training run) is the unit of inference: per seed the mean over languages, "
            f"then the mean over seeds with a 95 % t interval (df = seeds - 1) and a two-sided one-sample t-test "
            f"against 0; item-level sampling variance is not in results.csv, so intervals reflect run-to-run "
            f"variation only; {data.correction_name} over the p-values of each table; p-values and intervals need "
            f"at least {MIN_SEEDS_FOR_INFERENCE} seeds.")


def design_section(data: StudyData) -> str:
    """Design facts read from the results: models, seeds, setups, per target its metric, languages and baseline."""
    seeds = sorted(data.scores["seed"].unique().tolist())
    setups = sorted(set(data.scores["setup"]) - {data.baseline})
    head = (f"Model(s): {', '.join(sorted(set(data.scores['model'])))}; seeds {', '.join(map(str, seeds))} "
            f"({len(seeds)}); setups: {', '.join(setups)}; baseline: {data.baseline}.")
    items = _items_per_language(data)
    rows = []
    for target, g in data.scores.groupby("target", sort=True):
        base = g[g["setup"] == data.baseline].groupby("seed")["value"].mean()
        row = [target, data.metric_by_target.get(target, ""), data.split_by_target.get(target, ""),
               g["language"].nunique(), f"{fmt_points(base.mean(), signed=False)} "
               f"({fmt_points(base.min(), signed=False)}-{fmt_points(base.max(), signed=False)})"]
        rows.append(row + ([items.get(target, "n/a")] if items else []))
    headers = ["target", "metric", "split", "languages", "baseline score (seed range)"]
    table = markdown_table(headers + (["items / language"] if items else []), rows)
    note = ("*Method:* score = the target's primary metric on its evaluation split, in points; baseline score = mean "
            "over seeds of the mean over languages.")
    return "\n\n".join(["### Design (read from results.csv)", head, table, note, _statistics_note(data)])


def _items_per_language(data: StudyData) -> dict[str, str]:
    """target -> "min-max" evaluation items per language, when results.csv records them."""
    res = data.results
    rows = res[res["metric"].isin(ITEM_METRICS) & (res["split"].astype(str) != INTERMEDIATE_DEV)]
    out = {}
    for target, g in rows.groupby("target", sort=True):
        lo, hi = int(g["value"].min()), int(g["value"].max())
        out[str(target)] = str(lo) if lo == hi else f"{lo}-{hi}"
    return out


def gains_section(data: StudyData) -> str:
    """Table (a): the gain of every setup on every target."""
    table = gain_table(data)
    headers = [*_model_head(data), "setup", "target", "gain", "95 % CI", "p", _p_head(data), "MDE", "seeds",
               "languages"]
    rows = [[*_prefix(data, r), _label(data, r.setup, r.target), r.target, *_inference_cells(r),
             fmt_points(r.mde, signed=False), r.n_seeds, r.n_languages] for r in table.itertuples()]
    parts = ["### Gain over the baseline", markdown_table(headers, rows)]
    parts += [f"† upper bound, not an intermediate task for {t}: {why}." for (s, t), why in data.upper_bounds().items()]
    parts.append(_stat_note(data, "gain = setup score - baseline score (same model, target, language and seed), in "
                                  "points; MDE = the gain this test detects with 80 % power at alpha "
                                  f"{data.alpha:g} (uncorrected), from the row's seed-level sd"))
    return "\n\n".join(parts)


def _dev_chance(task: str, metric: str) -> str:
    """Chance accuracy of a task with a label list (the report's chance level), else ''."""
    from xstilts.analysis.evidence import chance_level

    chance = chance_level(task, metric) if metric == "accuracy" else None
    return "" if chance is None else fmt_points(chance, signed=False)


def intermediate_dev_section(data: StudyData) -> str:
    """The intermediate tasks' English dev scores at the end of each setup's last intermediate
    stage (rows with split intermediate_dev; carried heads included): was each task learned?"""
    from xstilts.analysis.metadata import find_task

    res = data.results[data.results["split"].astype(str) == INTERMEDIATE_DEV]
    if res.empty:
        return ""
    # a task's primary metric only (any metric of a task the catalog does not know)
    primary = {t: spec.primary_metric if (spec := find_task(t)) is not None else None for t in res["target"].unique()}
    wanted = res["target"].map(primary)
    frame = res[wanted.isna() | (res["metric"] == wanted)]
    rows = []
    for (setup, task, metric), g in frame.groupby(["setup", "target", "metric"], sort=True):
        per_seed = g.groupby("seed")["value"].mean()
        rows.append([setup, task, metric, fmt_points(per_seed.mean(), signed=False),
                     f"{fmt_points(per_seed.min(), signed=False)}-{fmt_points(per_seed.max(), signed=False)}",
                     _dev_chance(task, metric) or "-", len(per_seed)])
    headers = ["setup", "task", "metric", "mean over seeds", "seed range", "chance", "seeds"]
    note = ("*Method:* each setup's last intermediate stage scores every head it has (its own tasks and "
            "the heads carried from earlier chain steps) on the task's held-out English dev examples "
            "(at most 200), at the end of training; descriptive, per seed.")
    return "\n\n".join(["### Intermediate tasks: English dev scores", markdown_table(headers, rows), note])


def _group_section(data: StudyData, table: pd.DataFrame, column: str, title: str, what: str) -> str:
    headers = [*_model_head(data), "setup", "target", column.replace("_", " "), "gain", "95 % CI", "p",
               _p_head(data), "seeds", "languages"]
    rows = [[*_prefix(data, r), _label(data, r.setup, r.target), r.target, getattr(r, column), *_inference_cells(r),
             r.n_seeds, r.n_languages] for r in table.itertuples()]
    body = markdown_table(headers, rows) if rows else "No group qualifies."
    return "\n\n".join([title, body, _stat_note(data, what)])


def groups_sections(data: StudyData) -> list[str]:
    """Table (b): gains per resource level and per language family, as analysis.yaml's ``groups`` asks."""
    out = []
    groups = data.config.get("groups") or []
    if "resource" in groups:
        out.append(_group_section(data, resource_table(data), "resource_level", "### Gain by resource level",
                                  "languages grouped by Joshi et al. (2020) class, low = 0-2, high = 3-5 (languages "
                                  "without a class left out)"))
    if "family" in groups:
        k = int(data.config.get("min_group_languages", 3))
        out.append(_group_section(data, family_table(data), "family", "### Gain by language family",
                                  f"families with at least {k} evaluated languages in the target (unknown family "
                                  "left out)"))
    return out


def interaction_section(data: StudyData) -> str:
    """Table (c): the resource x setup interaction against each setup's reference."""
    table = interaction_table(data)
    headers = [*_model_head(data), "setup", "reference", "target", "low - high (setup)", "low - high (reference)",
               "interaction", "95 % CI", "p", _p_head(data), "seeds", "languages (low / high)"]
    rows = [[*_prefix(data, r), r.setup, r.reference, r.target, fmt_points(r.gap_setup), fmt_points(r.gap_reference),
             *_inference_cells(r, "mean"), r.n_seeds, f"{r.n_low} / {r.n_high}"] for r in table.itertuples()]
    body = markdown_table(headers, rows) if rows else "No setup has both resource levels."
    what = ("interaction = per seed, (low - high) mean gain of the setup minus the same for its reference (Joshi "
            "classes 0-2 vs 3-5; 0 for the baseline)")
    return "\n\n".join(["### Resource level x setup interaction", body, _stat_note(data, what)])


def contrasts_section(data: StudyData) -> str:
    """Table (d): setup vs setup, paired by seed and language."""
    table = contrast_table(data)
    headers = [*_model_head(data), "contrast", "target", "difference", "95 % CI", "p", _p_head(data), "seeds",
               "languages"]
    rows = [[*_prefix(data, r), f"{r.a} - {r.b}", r.target, *_inference_cells(r, "mean"), r.n_seeds, r.n_languages]
            for r in table.itertuples()]
    body = markdown_table(headers, rows) if rows else "No contrast has results on a common target."
    what = "difference = score of the first setup - score of the second (same model, target, language and seed)"
    return "\n\n".join(["### Contrasts between setups", body, _stat_note(data, what)])


# --------------------------------------------------------------------------- extras


def _extras_module() -> ModuleType | None:
    """``xstilts.analysis.study_extras``, or None when it does not exist (yet)."""
    try:
        return importlib.import_module(EXTRAS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != EXTRAS_MODULE:
            raise
        return None


def _registry(kind: str) -> dict[str, Callable[..., Any]]:
    module = _extras_module()
    return dict(getattr(module, kind, {}) or {}) if module is not None else {}


def extra_function(data: StudyData, name: str) -> Callable[[StudyData, dict], str]:
    """The section function of extra ``name`` (ConfigError naming the extra when there is none)."""
    extras = _registry("EXTRAS")
    if name not in extras:
        have = f"implemented: {sorted(extras)}" if extras else f"{EXTRAS_MODULE} is not available"
        raise ConfigError(f"no extra '{name}' ({have})", key=f"extras.{name}", file=data.analysis_file)
    return extras[name]


def extras_sections(data: StudyData) -> list[str]:
    """Each extra's section, in analysis.yaml's order."""
    return [extra_function(data, name)(data, dict(opts)).strip() for name, opts in data.config["extras"].items()]


def run_measures(study_dir: str | Path) -> list[Path]:
    """Write the derived measures (``similarity.csv``, ...) of the extras that have one; their paths."""
    data = load_study(study_dir)
    names = list(data.config["extras"])
    if names and _extras_module() is None:
        raise ConfigError(f"{EXTRAS_MODULE} is not available for the extras {names}", key=f"extras.{names[0]}",
                          file=data.analysis_file)
    measures = _registry("MEASURES")
    written = []
    for name in names:
        if name in measures:
            path = Path(measures[name](data, dict(data.config["extras"][name])))
            log.info("extra %s: wrote %s", name, path)
            written.append(path)
    return written


# --------------------------------------------------------------------------- the block and the README


def summarize(study_dir: str | Path) -> str:
    """The generated Markdown block of a study (without the marker lines), ending with one newline."""
    data = load_study(study_dir)
    parts = [f"_Generated by `xstilts summarize studies/{data.dir.resolve().name}` from results.csv and "
             "analysis.yaml; edit those, not this block._", design_section(data), gains_section(data),
             *groups_sections(data)]
    if data.config.get("interaction_reference"):
        parts.append(interaction_section(data))
    if data.config.get("contrasts"):
        parts.append(contrasts_section(data))
    parts.append(intermediate_dev_section(data))
    parts += extras_sections(data)
    parts = [p for p in parts if p]
    if data.notes:
        parts.append("Notes: " + " ".join(data.notes))
    return "\n\n".join(p.strip() for p in parts) + "\n"


def _split_readme(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(lines up to and including BEGIN, the block's lines, lines from END on)."""
    if not path.is_file():
        raise DataError(path, "not found")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    marks = [i for i, line in enumerate(lines) if line.strip() in (BEGIN, END)]
    kinds = [lines[i].strip() for i in marks]
    if kinds != [BEGIN, END]:
        raise DataError(path, f"expected one line '{BEGIN}' followed by one line '{END}' around the generated "
                              f"summary (found {kinds or 'neither'})")
    begin, end = marks
    return lines[: begin + 1], lines[begin + 1: end], lines[end:]


def read_block(study_dir: str | Path) -> str:
    """The README's generated block, as :func:`summarize` returns it."""
    _, block, _ = _split_readme(Path(study_dir) / README_FILE)
    return "".join(block)


def write_readme(study_dir: str | Path) -> bool:
    """Replace the README's block with a fresh summary; whether the file changed."""
    path = Path(study_dir) / README_FILE
    head, old, tail = _split_readme(path)
    block = summarize(study_dir)
    if "".join(old) == block:
        return False
    path.write_text("".join([*head, block, *tail]), encoding="utf-8")
    log.info("%s: summary block rewritten", path)
    return True


def check_readme(study_dir: str | Path) -> str:
    """A unified diff from the README's block to a fresh summary; empty when the block is up to date."""
    path = Path(study_dir) / README_FILE
    old = read_block(study_dir)
    new = summarize(study_dir)
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"{path} (block)", tofile="fresh summary"))
