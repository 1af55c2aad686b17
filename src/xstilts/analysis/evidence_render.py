"""Rendering the report's inference (:class:`~xstilts.analysis.evidence.Evidence`): text, tables, figure inputs.

:mod:`xstilts.analysis.render` calls these helpers where a section shows a gain, a test or a
correlation, so that every p-value of a report is the corrected one, printed the same way,
and none is printed when the design is descriptive only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from xstilts.analysis.evidence import BINARY_MEASURES, Evidence
from xstilts.analysis.figures import HEATMAP_FLOOR
from xstilts.analysis.groupings import UNKNOWN
from xstilts.analysis.inference import MIN_SEEDS_FOR_INFERENCE, format_p, significance_mark

#: tables longer than this are collapsed in the Markdown report too
LONG_TABLE_ROWS = 12


def _num(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating)) and np.isfinite(v)


def _ci(lo: float, hi: float, digits: int = 1) -> str:
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]" if _num(lo) and _num(hi) else ""


# --------------------------------------------------------------------------- text


def method_paragraphs(ev: Evidence, opts: Any) -> list[str]:
    """How the report's uncertainty was computed (replaces the old bootstrap/paired-test sentence)."""
    conf = int(round(opts.confidence * 100))
    out = [
        "**Statistics.** The unit of replication is the training run (seed): the baseline and a setup trained with the "
        "same seed form one pair, and all languages of a run share it, so (language, seed) cells are not independent. "
        "Each group's gain is computed per seed (languages averaged within a target, targets with equal weight), and "
        f"the per-seed gains ({ev.n_seeds} seeds) {'are' if ev.inferential else 'would be'} tested against 0 with "
        f"a two-sided t-test (seed-level paired test, S − 1 degrees of freedom) with its {conf}% t interval"
        + ("" if ev.inferential else f" (from {MIN_SEEDS_FOR_INFERENCE} seeds on)")
        + f". Evaluation-item sampling variance is {ev.item_variance}.",
    ]
    if ev.inferential:
        out.append(f"Every p-value of this report ({ev.n_tests} tests: gains per setup and target, per setup, overall, "
                   "per family and per resource class, and the similarity correlations and differences) is corrected "
                   f"together with the {ev.correction_name} method (statsmodels); tables show the raw p and the "
                   "adjusted p_adj, and the significance marks of tables and figures (one star: p_adj < 0.05, two: "
                   "< 0.01, three: < 0.001) use p_adj.")
    else:
        out.append(f"**Descriptive only:** at most {ev.n_seeds} seed(s) per setup and target. With fewer than "
                   f"{MIN_SEEDS_FOR_INFERENCE} training runs no p-values, confidence intervals or significance marks "
                   "are shown; the tables give the mean and the range of the per-seed gains.")
    out.extend(ev.notes)
    how = ("p-values from permutation tests (exact up to 8 points), CIs from a paired BCa bootstrap (scipy), with a "
           "Fisher-z interval where the bootstrap is degenerate" if ev.inferential else
           "coefficients only (descriptive)")
    out.append("Correlations are computed at their unit of replication: one point per (setup, target) pair for task "
               f"and domain similarity, one point per language within a setup for language similarity; {how}. Binary "
               "measures (same format, same family, ...) are reported as the difference in mean gain between the two "
               "kinds of points" + (", with a BCa CI." if ev.inferential else "."))
    return out


_LEVELS = {"per_target": "one setup on one target", "per_setup": "one setup averaged over targets"}


def power_paragraph(ev: Evidence) -> str | None:
    """The design's minimal detectable effect, so that "no significant gain" reads for what it is."""
    parts = []
    for key, row in ev.mde.items():
        if not _num(row.get("mde")):
            continue
        more = ", ".join(f"{row[k]:.2f} with {k}" for k in (5, 10) if _num(row.get(k)))
        corrected = (f"; {row['corrected']:.2f} after correcting for {ev.n_tests} tests"
                     if _num(row.get("corrected")) else "")
        parts.append(f"{_LEVELS.get(key, key)} (effective sd per run {ev.sd_seed[key]:.2f}): {row['mde']:.2f} "
                     f"points with {row['seeds']} seeds{corrected}" + (f" ({more} seeds)" if more else ""))
    if not parts:
        return None
    few = "" if ev.inferential else f" (at least {MIN_SEEDS_FOR_INFERENCE} seeds are needed for any test)"
    left_out = " with the failed or at-chance runs left out" if not ev.failed.empty else ""
    return ("**Power.** The smallest gain this design detects with 80% power at α = 0.05 (two-sided seed-level "
            "t-test, from the observed run-to-run spread of the gain and the item-sampling variance"
            f"{left_out}){few}: " + "; ".join(parts)
            + ". A gain below these that is not significant is not evidence of no effect.")


def failed_paragraph(ev: Evidence) -> str | None:
    """A warning naming the runs that failed or scored at chance."""
    if ev.failed.empty:
        return None
    runs = ev.failed.drop_duplicates(["model", "target", "seed", "role", "setup"] if "setup" in ev.failed else None)
    parts = []
    for (model, setup, target, role), g in runs.groupby(["model", "setup", "target", "role"], sort=True):
        who = "baseline" if role == "baseline" else setup
        parts.append(f"{who} on {target} (seed {', '.join(map(str, sorted(set(g['seed']))))}: mean score "
                     f"{g['mean_score'].mean():.1f}, chance {g['chance'].iloc[0]:.1f})"
                     + (f" — affects {setup}" if role == "baseline" else ""))
    return ("**Flagged — failed or at-chance runs** (their gains measure a failed training, not transfer; hatched "
            "in the heatmap): " + "; ".join(sorted(set(parts))) + ".")


def significance_sentence(ev: Evidence) -> str:
    """Which setups differ from the baseline after correction (or why nothing is claimed)."""
    if not ev.inferential:
        return ("Descriptive only: no setup is called better or worse than the baseline "
                f"(fewer than {MIN_SEEDS_FOR_INFERENCE} seeds).")
    ps = ev.gains.get("per_setup", pd.DataFrame())
    pt = ev.gains.get("per_target", pd.DataFrame())
    sig = ps[ps["p_adjusted"] < 0.05] if "p_adjusted" in ps.columns else ps.iloc[0:0]
    cells = pt[pt["p_adjusted"] < 0.05] if "p_adjusted" in pt.columns else pt.iloc[0:0]
    if sig.empty:
        text = (f"No setup's average gain differs from 0 after {ev.correction_name} correction "
                f"(p_adj ≥ 0.05 for all {len(ps)}).")
    else:
        text = (f"Setups whose average gain differs from 0 after {ev.correction_name} correction: " + ", ".join(
            f"{r.setup} ({r.mean_gain:+.2f} {_ci(r.ci_low, r.ci_high, 2)}, p_adj {format_p(r.p_adjusted)})"
            for r in sig.itertuples()) + ".")
    if len(cells):
        text += " Single (setup, target) gains that do: " + ", ".join(
            f"{r.setup} on {r.target} ({r.mean_gain:+.2f}, p_adj {format_p(r.p_adjusted)})"
            for r in cells.itertuples()) + "."
    return text


# --------------------------------------------------------------------------- tables


def gain_table(ev: Evidence, name: str, digits: int = 2) -> pd.DataFrame:
    """A display table of one grouping: keys, n, mean, range or CI, p and p_adj as text."""
    t = ev.gains.get(name)
    if t is None or t.empty:
        return pd.DataFrame()
    keys = [c for c in t.columns if c not in ("n_targets", "n_languages", "n_seeds", "mean_gain", "seed_min",
                                               "seed_max", "sd_seeds", "se", "df", "ci_low", "ci_high", "p_value",
                                               "p_adjusted", "inference")]
    out = t[keys + ["n_targets", "n_languages", "n_seeds"]].copy()
    out["mean_gain"] = t["mean_gain"].round(digits)
    out["sd_seeds"] = t["sd_seeds"].round(digits)
    out["seed_range"] = [_ci(lo, hi, digits).replace("+", "") or "n/a" for lo, hi in zip(t["seed_min"], t["seed_max"])]
    if ev.inferential:
        out["ci"] = [_ci(lo, hi, digits) or "n/a" for lo, hi in zip(t["ci_low"], t["ci_high"])]
        out["p"] = t["p_value"].map(format_p)
        out["p_adj"] = t["p_adjusted"].map(format_p) if "p_adjusted" in t else "n/a"
        out["sig"] = t["p_adjusted"].map(significance_mark) if "p_adjusted" in t else ""
    out["inference"] = t["inference"]
    return out


def correlation_table(ev: Evidence, key: str) -> pd.DataFrame:
    """Correlations of one similarity section for display (p as text, withheld when descriptive)."""
    t = ev.correlations.get(key)
    if t is None or t.empty:
        return pd.DataFrame()
    out = t[["unit", "group", "measure", "n"]].copy()
    for c in ("spearman", "kendall"):
        out[c] = t[c].round(2)
        out[f"{c}_ci"] = [_ci(lo, hi, 2) or "n/a" for lo, hi in zip(t[f"{c}_ci_low"], t[f"{c}_ci_high"])]
    if ev.inferential:
        out["spearman_p"] = t["spearman_p"].map(format_p)
        out["p_adj"] = t["p_adjusted"].map(format_p) if "p_adjusted" in t else "n/a"
    out["ci_method"] = t["ci_method"]
    out["bootstrap resamples with a constant variable (counted as 0)"] = t["n_degenerate"]
    return out


def difference_table(ev: Evidence, key: str) -> pd.DataFrame:
    """Differences in mean gain for the binary measures of one similarity section."""
    t = ev.differences.get(key)
    if t is None or t.empty:
        return pd.DataFrame()
    out = t[["unit", "group", "measure", "n_1", "n_0"]].copy()
    for c in ("mean_1", "mean_0", "difference"):
        out[c] = t[c].round(2)
    out["ci"] = [_ci(lo, hi, 2) or "n/a" for lo, hi in zip(t["ci_low"], t["ci_high"])]
    if ev.inferential:
        out["p"] = t["p"].map(format_p)
        out["p_adj"] = t["p_adjusted"].map(format_p) if "p_adjusted" in t else "n/a"
    out["note"] = t["note"]
    return out


# --------------------------------------------------------------------------- figure inputs


def heatmap_floor(ev: Evidence) -> float:
    """Colour-scale floor: the fixed floor, or the per-(setup, target) MDE when it is larger."""
    mde = ev.mde.get("per_target", {}).get("mde")
    return max(HEATMAP_FLOOR, mde) if _num(mde) else HEATMAP_FLOOR


def gain_heatmap_args(ev: Evidence, model: str, metric_by_target: dict[str, str]) -> tuple[pd.DataFrame, dict]:
    """(matrix, keyword arguments of figures.gain_heatmap) of one model's setup × target gains."""
    pt = ev.gains["per_target"]
    pt = pt[pt["model"] == model]
    ps = ev.gains["per_setup"]
    ps = ps[ps["model"] == model].set_index("setup")
    cols = sorted(pt["target"].unique().tolist())
    mat = pt.pivot(index="setup", columns="target", values="mean_gain")[cols]
    mat["average"] = ps["mean_gain"].reindex(mat.index)
    labels = [f"{t}\n({metric_by_target.get(t, '?')})" for t in cols] + ["average\n(targets equal)"]
    ann = pd.DataFrame("", index=mat.index, columns=mat.columns)
    marks = pd.DataFrame("", index=mat.index, columns=mat.columns)
    flagged = pd.DataFrame(False, index=mat.index, columns=mat.columns)
    failed = ev.failed_cells()
    rows = {(r.setup, r.target): r for r in pt.itertuples()}
    rows.update({(s, "average"): r for s, r in zip(ps.index, ps.itertuples())})
    for setup in mat.index:
        for col in mat.columns:
            r = rows.get((setup, col))
            ann.loc[setup, col] = _cell_text(r, ev.inferential)
            if r is not None and ev.inferential:
                marks.loc[setup, col] = significance_mark(getattr(r, "p_adjusted", math.nan))
            flagged.loc[setup, col] = (model, setup, col) in failed
        flagged.loc[setup, "average"] = bool(flagged.loc[setup].any())
    mat.columns = ann.columns = marks.columns = flagged.columns = labels
    return mat, {"annotations": ann, "marks": marks, "flagged": flagged, "floor": heatmap_floor(ev)}


def _cell_text(r: Any, inferential: bool) -> str:
    if r is None or not _num(r.mean_gain):
        return "n/a"
    if inferential and _num(r.ci_low):
        return f"{r.mean_gain:+.1f}\n{_ci(r.ci_low, r.ci_high)}"
    if _num(r.seed_min) and r.n_seeds >= 2:
        return f"{r.mean_gain:+.1f}\nrange {_ci(r.seed_min, r.seed_max)}"
    return f"{r.mean_gain:+.1f}"


def family_heatmap_args(ev: Evidence, model: str, languages_per_family: dict[str, int]) -> tuple[pd.DataFrame, dict]:
    """(matrix, gain_heatmap keyword arguments) of one model's family × setup gains, marks after correction."""
    fam = ev.gains["family"]
    fam = fam[fam["model"] == model]
    mat = fam.pivot(index="family", columns="setup", values="mean_gain")
    marks = pd.DataFrame("", index=mat.index, columns=mat.columns)
    if ev.inferential and "p_adjusted" in fam.columns:
        for r in fam.itertuples():
            marks.loc[r.family, r.setup] = significance_mark(r.p_adjusted)
    failed_setups = {setup for m, setup, _ in ev.failed_cells() if m == model}
    flagged = pd.DataFrame([[c in failed_setups for c in mat.columns]] * len(mat.index), index=mat.index,
                           columns=mat.columns)
    index = [f"{f} ({languages_per_family.get(f, 0)} lang.)" for f in mat.index]
    mat.index = marks.index = flagged.index = index
    return mat, {"marks": marks, "flagged": flagged, "floor": heatmap_floor(ev)}


def resource_points_frame(ev: Evidence, model: str) -> pd.DataFrame:
    """Input of figures.resource_points: per (setup, class) mean gain, CI (if inferential) and n languages."""
    rc = ev.gains.get("resource_class", pd.DataFrame())
    rc = rc[(rc["model"] == model) & (rc["resource_class"].astype(str) != UNKNOWN)].copy() if len(rc) else rc
    if rc.empty:
        return rc
    rc["resource_class"] = rc["resource_class"].astype(float).astype(int)
    return rc.rename(columns={"setup": "series"})[["series", "resource_class", "mean_gain", "ci_low", "ci_high",
                                                   "n_languages"]]


def language_panel_frame(meta: pd.DataFrame, model: str, target: str, group: str) -> pd.DataFrame:
    """Input of figures.language_gain_panels: per (setup, language) mean over seeds and its range as error bars."""
    from xstilts.analysis.metadata import language_label

    m = meta[(meta["model"] == model) & (meta["target"] == target)].copy()
    m[group] = m[group].astype(object).where(m[group].notna(), UNKNOWN).astype(str)
    g = m.groupby(["setup", "language", group], sort=True)["gain"].agg(["mean", "min", "max"]).reset_index()
    g["language_label"] = g["language"].map(language_label)
    return g.rename(columns={"mean": "mean_gain"}).assign(err_low=lambda d: d["mean_gain"] - d["min"],
                                                          err_high=lambda d: d["max"] - d["mean_gain"])


def scatter_inputs(ev: Evidence, key: str, measures: list[str]) -> tuple[pd.DataFrame, dict]:
    """(correlations, keyword arguments) of figures.similarity_scatter for one similarity section:
    the corrected correlations of the section's main group, its binary measures and their differences."""
    corr = ev.correlations.get(key, pd.DataFrame())
    if len(corr):
        main = corr["group"].iloc[0]
        corr = corr[corr["group"] == main].assign(group="all")
    diff = ev.differences.get(key, pd.DataFrame())
    if len(diff):
        diff = diff[diff["group"] == diff["group"].iloc[0]]
    return corr, {"binary": [m for m in measures if m in BINARY_MEASURES], "differences": diff,
                  "hue": "setup" if key == "language" else "target"}


def without_p(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without its p-value columns (a table described, not tested)."""
    if frame is None or frame.empty:
        return frame
    return frame.drop(columns=[c for c in frame.columns if c.endswith("_p") or c in ("p", "p_value", "p_method")])
