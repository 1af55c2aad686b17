"""The report's inferential statistics, computed once for the whole report (no rendering here).

:func:`compute_evidence` takes the report's inputs and its computed sections and returns an
:class:`Evidence`: seed-level inference on every grouping of the gains
(:mod:`xstilts.analysis.inference`), correlations of the similarity measures at their unit
of replication, differences in mean gain for binary measures, one multiple-testing correction
over every p-value of the report, the design's minimal detectable effect, and the runs that
failed or scored at chance. With fewer than three seeds every p-value is withheld
(``inferential`` is False): the report is descriptive only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xstilts.analysis.groupings import UNKNOWN, add_resource_level
from xstilts.analysis.inference import (
    CORRECTIONS,
    MIN_SEEDS_FOR_INFERENCE,
    adjust_pvalues,
    binomial_item_variance,
    difference_in_mean_gain,
    infer_gains,
    minimal_detectable_effect,
)
from xstilts.analysis.stats import rank_correlation

log = logging.getLogger(__name__)

DEFAULT_CORRECTION = "holm"
#: measures that are 0/1 (compared as a difference in mean gain, not correlated)
BINARY_MEASURES = ("same_format", "same_label_space", "same_family", "same_script", "same_domain")
#: a run whose mean score is at most chance + this many points is flagged as failed / at chance
CHANCE_MARGIN = 1.0
#: the groupings of the gains, and the columns that define them
GAIN_GROUPINGS: dict[str, tuple[str, ...]] = {
    "per_target": ("model", "setup", "target"),
    "per_setup": ("model", "setup"),
    "overall": ("model",),
    "family": ("model", "setup", "family"),
    "genus": ("model", "setup", "genus"),
    "script": ("model", "setup", "script"),
    "resource_class": ("model", "setup", "resource_class"),
    "resource_level": ("model", "setup", "resource_level"),
}
#: groupings that are described but not tested (they restate the family and resource-class tests
#: at a finer or coarser grain; testing them too would only dilute the correction)
DESCRIBED_ONLY = ("genus", "script", "resource_level")
CORRELATION_COLUMNS = ["unit", "group", "measure", "n", "spearman", "spearman_ci_low", "spearman_ci_high",
                       "spearman_p", "kendall", "kendall_ci_low", "kendall_ci_high", "kendall_p", "ci_method",
                       "p_method", "n_degenerate"]
DIFFERENCE_COLUMNS = ["unit", "group", "measure", "n_1", "n_0", "mean_1", "mean_0", "difference", "ci_low", "ci_high",
                      "p", "note"]


@dataclass
class Evidence:
    """Inference for the whole report (see the module docstring)."""

    n_seeds: int  # seeds of the design: the most any (model, setup, target) has
    inferential: bool
    correction: str  # statsmodels method name ("holm" / "fdr_bh")
    gains: dict[str, pd.DataFrame]  # GAIN_GROUPINGS name -> infer_gains table (+ p_adjusted)
    correlations: dict[str, pd.DataFrame]  # "task" / "language" / "domain" -> CORRELATION_COLUMNS (+ p_adjusted)
    differences: dict[str, pd.DataFrame]  # same keys -> DIFFERENCE_COLUMNS (+ p_adjusted)
    failed: pd.DataFrame  # model, setup, target, seed, role, mean_score, chance
    meta: pd.DataFrame  # the gains with language metadata (and item_var), for per-language figures
    mde: dict[str, dict]  # "per_target" / "per_setup" -> see design_mde
    sd_seed: dict[str, float]  # "per_target" / "per_setup" -> pooled run-to-run sd of the gain
    n_tests: int
    item_variance: str  # where the evaluation-item variance came from, or why there is none
    notes: list[str] = field(default_factory=list)

    @property
    def correction_name(self) -> str:
        return CORRECTIONS.get(self.correction, self.correction)

    def failed_cells(self) -> set[tuple[str, str, str]]:
        """(model, setup, target) whose setup run or baseline run failed / scored at chance in some seed."""
        return {(r.model, r.setup, r.target) for r in self.failed.itertuples()}


# --------------------------------------------------------------------------- gains


def _grouping_frame(meta: pd.DataFrame, name: str, low_classes, low_languages) -> pd.DataFrame:
    frame = meta
    if name == "resource_level":
        frame = add_resource_level(meta, low_classes=low_classes, low_languages=low_languages)
    col = GAIN_GROUPINGS[name][-1]
    if col in ("model", "setup", "target"):
        return frame
    frame = frame.copy()
    frame[col] = frame[col].astype(object).where(frame[col].notna(), UNKNOWN).astype(str)
    return frame


def gain_inference(meta: pd.DataFrame, opts: Any) -> dict[str, pd.DataFrame]:
    """:func:`infer_gains` on every grouping of :data:`GAIN_GROUPINGS` present in ``meta``."""
    out = {}
    for name, by in GAIN_GROUPINGS.items():
        if by[-1] not in meta.columns and name != "resource_level":
            continue
        frame = _grouping_frame(meta, name, getattr(opts, "low_resource_classes", (0, 1, 2)),
                                getattr(opts, "low_resource_languages", None))
        table = infer_gains(frame, by, confidence=opts.confidence)
        if name in DESCRIBED_ONLY:
            _withhold([table])
            table["inference"] = "described, not tested"
        out[name] = table
    return out


def _item_counts(stage_ids: Sequence[str], root: Path) -> dict[tuple[str, str], int]:
    """(stage id, language) -> evaluation items, from each eval stage's ``metrics.json`` (``n_examples``)."""
    from xstilts.paths import METRICS_FILE

    counts = {}
    for sid in stage_ids:
        try:
            n = json.loads((root / sid / METRICS_FILE).read_text()).get("n_examples") or {}
        except (OSError, ValueError):
            continue
        counts.update({(sid, str(lang)): int(v) for lang, v in n.items()})
    return counts


def _predictions(root: Path, sid: str, lang: str, cache: dict) -> dict[str, str] | None:
    """id -> prediction (as canonical JSON) of one eval stage and language; None when there is no file."""
    from xstilts.paths import PREDICTIONS_DIR

    key = (sid, lang)
    if key not in cache:
        path = root / sid / PREDICTIONS_DIR / f"{lang}.jsonl"
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            cache[key] = {str(r["id"]): json.dumps(r.get("prediction"), sort_keys=True) for r in rows}
        except (OSError, ValueError, KeyError, TypeError):
            cache[key] = None
    return cache[key]


def discordance_item_variance(setup_predictions: dict[str, str], baseline_predictions: dict[str, str]) -> float:
    """Item-sampling variance (points²) of a gain from the two runs' predictions on the same items.

    An item whose two predictions agree scores the same for both runs, so its per-item score
    difference is 0, and otherwise at most 100 points: var(mean difference) <= P(differ) *
    100² / n. Exact as a bound for accuracy; for F1-type metrics (not a mean of per-item scores)
    an approximation. NaN when the runs share no item id.
    """
    common = setup_predictions.keys() & baseline_predictions.keys()
    if not common:
        return math.nan
    differ = sum(setup_predictions[i] != baseline_predictions[i] for i in common)
    return differ / len(common) * 100.0**2 / len(common)


def item_variance(gains: pd.DataFrame, metrics: pd.DataFrame, output_dir: str | Path | None,
                  baseline: str = "baseline") -> tuple[pd.DataFrame, str]:
    """``gains`` with an ``item_var`` column (evaluation-item sampling variance), and a sentence saying how.

    Under ``OUTPUT_DIR/stages/``, where both runs' ``predictions/<lang>.jsonl`` exist the bound of
    :func:`discordance_item_variance` is used; else, where ``metrics.json`` gives the item count,
    :func:`binomial_item_variance` of the two scores (looser). Without either the gains are
    returned unchanged.
    """
    none = ("not included: no eval stage outputs (predictions or item counts) were found under the output dir; "
            "intervals reflect run-to-run variation only")
    if output_dir is None or "stage_id" not in metrics.columns:
        return gains, none
    from xstilts.paths import STAGES_DIR

    root = Path(output_dir) / STAGES_DIR
    keys = ["model", "setup", "target", "language", "seed"]
    cells = metrics[[*keys, "stage_id"]].dropna(subset=["stage_id"]).drop_duplicates(keys)
    cells["stage_id"] = cells["stage_id"].astype(str)
    base = cells[cells["setup"] == baseline].drop(columns=["setup"]).rename(columns={"stage_id": "base_id"})
    merged = gains.merge(cells, on=keys, how="left").merge(base, on=["model", "target", "language", "seed"], how="left")
    counts = _item_counts(sorted(set(cells["stage_id"])), root)
    cache: dict = {}
    values, kinds = [], []
    for r in merged.itertuples():
        v, kind = _cell_item_var(r, root, counts, cache)
        values.append(v)
        kinds.append(kind)
    merged["item_var"] = values
    merged = merged.drop(columns=["stage_id", "base_id"])
    used = {k for k in kinds if k}
    if not used:
        return gains, none
    n_med = int(np.nanmedian(list(counts.values()))) if counts else None
    how = {"predictions": "from the two runs' predictions on the same items (items where they disagree; a bound, "
                          "exact for accuracy)",
           "counts": "from the item counts (binomial variance of the two scores, an upper bound for paired scores)"}
    share = f"{sum(bool(k) for k in kinds)} of {len(kinds)} cells"
    return merged, (f"included ({share}; " + "; ".join(how[k] for k in sorted(used, reverse=True))
                    + (f"; median {n_med} items per language" if n_med else "") + ")")


def _cell_item_var(r: Any, root: Path, counts: dict, cache: dict) -> tuple[float, str]:
    if isinstance(r.stage_id, str) and isinstance(r.base_id, str):
        a = _predictions(root, r.stage_id, str(r.language), cache)
        b = _predictions(root, r.base_id, str(r.language), cache)
        if a and b:
            v = discordance_item_variance(a, b)
            if np.isfinite(v):
                return v, "predictions"
    n = counts.get((r.stage_id, str(r.language))) if isinstance(r.stage_id, str) else None
    if n:
        return float(binomial_item_variance(r.score, r.baseline_score, n)), "counts"
    return math.nan, ""


# --------------------------------------------------------------------------- failed runs


def chance_level(target: str, metric: str) -> float | None:
    """The score of a model that learned nothing: 0 for F1 / exact match, 1/labels for accuracy."""
    if metric in ("f1", "exact_match", "em", "span_f1"):
        return 0.0
    if metric == "accuracy":
        from xstilts.analysis.metadata import find_task

        spec = find_task(target)
        labels = getattr(spec, "label_list", None) if spec is not None else None
        return 100.0 / len(labels) if labels else None
    return None


def failed_runs(scores: pd.DataFrame, baseline: str, margin: float = CHANCE_MARGIN) -> pd.DataFrame:
    """Runs (model, setup, target, seed) whose score averaged over languages is at chance (+ ``margin``).

    A baseline run at chance is listed once for every setup compared with it (role "baseline"):
    all of those gains are uninterpretable.
    """
    cols = ["model", "setup", "target", "seed", "role", "mean_score", "chance"]
    if scores.empty:
        return pd.DataFrame(columns=cols)
    runs = scores.groupby(["model", "setup", "target", "seed", "metric"], sort=True)["score"].mean().reset_index()
    runs["chance"] = [chance_level(str(t), str(m)) for t, m in zip(runs["target"], runs["metric"])]
    bad = runs[runs["chance"].notna() & (runs["score"] <= runs["chance"].astype(float) + margin)]
    setups = sorted(set(scores["setup"]) - {baseline})
    rows = []
    for r in bad.itertuples():
        if r.setup == baseline:
            rows += [(r.model, s, r.target, r.seed, "baseline", r.score, r.chance) for s in setups]
        else:
            rows.append((r.model, r.setup, r.target, r.seed, "setup", r.score, r.chance))
    return pd.DataFrame(rows, columns=cols).drop_duplicates().reset_index(drop=True)


# --------------------------------------------------------------------------- similarity at its unit


def _unit_points(points: pd.DataFrame, keys: list[str], measures: list[str]) -> pd.DataFrame:
    """One point per ``keys``: gains and measures averaged over what else the points vary in (e.g. models)."""
    have = [m for m in measures if m in points.columns]
    return points.groupby(keys, sort=True)[["mean_gain", *have]].mean().reset_index()


def similarity_tests(points: pd.DataFrame, measures: list[str], *, unit: str, groups: list[tuple[str, pd.DataFrame]],
                     opts: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank correlations (continuous measures) and differences in mean gain (binary ones) per group of points."""
    corr_rows, diff_rows = [], []
    n_boot, n_perm, seed = opts.corr_boot, getattr(opts, "n_perm", 5_000), opts.seed
    for name, g in groups:
        for m in measures:
            if m not in g.columns:
                continue
            if m in BINARY_MEASURES:
                d = difference_in_mean_gain(g["mean_gain"], g[m], n_boot=n_boot, n_perm=n_perm, seed=seed)
                diff_rows.append({"unit": unit, "group": name, "measure": m, **d})
            else:
                c = rank_correlation(g[m], g["mean_gain"], n_boot=n_boot, n_perm=n_perm, seed=seed)
                corr_rows.append({"unit": unit, "group": name, "measure": m, **c.as_dict()})
    return (pd.DataFrame(corr_rows, columns=CORRELATION_COLUMNS), pd.DataFrame(diff_rows, columns=DIFFERENCE_COLUMNS))


def _task_like(result: Any, unit: str, opts: Any) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    if result is None or result.points is None or result.points.empty:
        return None
    pts = _unit_points(result.points, ["setup", "target"], result.measures)
    return similarity_tests(pts, result.measures, unit=unit, groups=[("all", pts)], opts=opts)


def _language(result: Any, opts: Any) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Within each setup one point per language; "all setups": one per language, gains averaged over setups."""
    if result is None or result.points is None or result.points.empty:
        return None
    per_setup = _unit_points(result.points, ["setup", "language"], result.measures)
    per_lang = _unit_points(result.points, ["language"], result.measures)
    groups = [("all setups (mean gain per language)", per_lang)]
    groups += [(f"setup {s}", g) for s, g in per_setup.groupby("setup", sort=True)]
    return similarity_tests(per_setup, result.measures, unit="language", groups=groups, opts=opts)


# --------------------------------------------------------------------------- the whole report


def _pooled_sd(table: pd.DataFrame, failed: set[tuple] = frozenset()) -> float:
    """Pooled across-seed sd of a grouping's gains, leaving out groups with a failed / at-chance run.

    Where a group's standard error includes the evaluation-item variance, its effective sd
    ``se * sqrt(S)`` is pooled instead, so the MDE counts item noise too.
    """
    t = table[table["n_seeds"] >= 2] if len(table) else table
    if failed and len(t):
        keys = list(zip(t["model"], t["setup"], t["target"])) if "target" in t.columns else None
        bad = [k in failed for k in keys] if keys else [any(f[:2] == (m, s) for f in failed)
                                                        for m, s in zip(t["model"], t["setup"])]
        t = t[~np.asarray(bad, dtype=bool)]
    if t.empty:
        return math.nan
    df = t["n_seeds"].to_numpy(float) - 1
    sd = t["sd_seeds"].to_numpy(float)
    effective = t["se"].to_numpy(float) * np.sqrt(t["n_seeds"].to_numpy(float))
    sd = np.where(np.isfinite(effective), effective, sd)
    ok = np.isfinite(sd)
    return float(math.sqrt(np.sum(df[ok] * sd[ok] ** 2) / np.sum(df[ok]))) if ok.any() else math.nan


def design_mde(gains: dict[str, pd.DataFrame], n_seeds: int, n_tests: int,
               failed: set[tuple] = frozenset()) -> tuple[dict[str, dict], dict[str, float]]:
    """Minimal detectable effects of the per-(setup, target) and per-setup tests.

    Returns ({level: {"seeds": S, "mde": ..., "corrected": ... (for ``n_tests`` tests, if any),
    5: ..., 10: ...}}, {level: pooled run-to-run sd}); S is the design's seeds, at least three.
    """
    sd = {k: _pooled_sd(gains[k], failed) for k in ("per_target", "per_setup") if k in gains}
    s = max(n_seeds, MIN_SEEDS_FOR_INFERENCE)
    mde: dict[str, dict] = {}
    for key, value in sd.items():
        if not np.isfinite(value):
            continue
        row: dict = {"seeds": s, "mde": minimal_detectable_effect(value, s)}
        if n_tests > 1:
            row["corrected"] = minimal_detectable_effect(value, s, n_tests=n_tests)
        row.update({more: minimal_detectable_effect(value, more) for more in (5, 10) if more > s})
        mde[key] = row
    return mde, sd


def _withhold(tables: list[pd.DataFrame]) -> None:
    for t in tables:
        for c in ("p_value", "p", "spearman_p", "kendall_p"):
            if c in t.columns:
                t[c] = math.nan
        for c in ("ci_low", "ci_high", "spearman_ci_low", "spearman_ci_high", "kendall_ci_low", "kendall_ci_high"):
            if c in t.columns:
                t[c] = math.nan
        if "ci_method" in t.columns:
            t["ci_method"] = "none (descriptive only)"


def compute_evidence(inp: Any, data: Any, *, output_dir: str | Path | None = None) -> Evidence:
    """Inference for every section of a report (``inp``: ReportInputs, ``data``: ReportData)."""
    opts = inp.options
    correction = getattr(opts, "correction", DEFAULT_CORRECTION)
    gains, item_note = item_variance(inp.gt.gains, inp.metrics, output_dir, inp.gt.baseline)
    meta = inp.meta.copy()
    if "item_var" in gains.columns and len(meta) == len(gains):
        meta = meta.merge(gains[["model", "setup", "target", "language", "seed", "item_var"]],
                          on=["model", "setup", "target", "language", "seed"], how="left")
    seeds = gains.groupby(["model", "setup", "target"])["seed"].nunique()
    n_seeds = int(seeds.max()) if len(seeds) else 0
    inferential = n_seeds >= MIN_SEEDS_FOR_INFERENCE
    notes = []
    if inferential and int(seeds.min()) < MIN_SEEDS_FOR_INFERENCE:
        few = sorted(f"{s} on {t}" for (_, s, t), n in seeds.items() if n < MIN_SEEDS_FOR_INFERENCE)
        notes.append(f"Fewer than {MIN_SEEDS_FOR_INFERENCE} seeds for {', '.join(few)}: these gains (and the groups "
                     "they enter with fewer runs) are described, not tested.")
    g = gain_inference(meta, opts)
    corr, diff = {}, {}
    for key, res in (("task", _task_like(getattr(data, "task_similarity", None), "(setup, target) pair", opts)),
                     ("language", _language(getattr(data, "language_similarity", None), opts)),
                     ("domain", _task_like(getattr(data, "domain", None), "(setup, target) pair", opts))):
        if res is not None:
            corr[key], diff[key] = res
    tables = [*g.values(), *corr.values(), *diff.values()]
    if inferential:
        n_tests = _adjust_all(g, corr, diff, correction)
    else:
        _withhold(tables)
        n_tests = 0
    failed = failed_runs(inp.gt.scores, inp.gt.baseline)
    mde, sd = design_mde(g, n_seeds, n_tests, {(r.model, r.setup, r.target) for r in failed.itertuples()})
    return Evidence(n_seeds, inferential, correction, g, corr, diff, failed, meta, mde, sd, n_tests, item_note, notes)


def _adjust_all(g: dict, corr: dict, diff: dict, method: str) -> int:
    """One correction over every test of the report (gain tests, Spearman correlations, differences)."""
    slots = [(t, "p_value") for name, t in g.items() if name not in DESCRIBED_ONLY]
    slots += [(t, "spearman_p") for t in corr.values()]
    slots += [(t, "p") for t in diff.values()]
    flat = np.concatenate([t[c].to_numpy(float) for t, c in slots if c in t.columns and len(t)] or [np.zeros(0)])
    adjusted = adjust_pvalues(flat, method)
    for name in DESCRIBED_ONLY:
        if name in g:
            g[name]["p_adjusted"] = math.nan
    start = 0
    for t, c in slots:
        if c in t.columns and len(t):
            t["p_adjusted"] = adjusted[start:start + len(t)]
            start += len(t)
        else:
            t["p_adjusted"] = pd.Series(dtype=float)
    return int(np.isfinite(flat).sum())
