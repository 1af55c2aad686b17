"""Inference on gains that respects the design: the training run is the unit of replication.

One seed is one training run of the grid: its baseline and its setups are evaluated on the
same languages, so the (language, seed) cells of one run are not independent observations.
Every test here works on **per-seed gains** (languages averaged within a target, targets with
equal weight: :func:`xstilts.analysis.stats.per_seed_means`), which are paired by seed
(setup run minus baseline run with the same seed):

- the gain of a group is the mean of its per-seed gains; its standard error is
  ``sd(per-seed gains) / sqrt(S)``, widened by the evaluation-item sampling variance of the
  group's languages when it is known (the items are the same for every seed, so that error
  does not average out over seeds); a two-sided t-test with Welch–Satterthwaite degrees of
  freedom and the matching t interval;
- with fewer than :data:`MIN_SEEDS_FOR_INFERENCE` seeds nothing is inferred: groups are
  described (mean, range over seeds) and carry no p-value or interval;
- p-values of one report are corrected together (:func:`adjust_pvalues`, statsmodels'
  Holm or Benjamini–Hochberg), and printed by :func:`format_p` (``< 0.001``, never ``0.0``);
- :func:`minimal_detectable_effect` turns the observed run-to-run spread into the smallest
  gain the design detects with 80 % power (exact, from the noncentral t).

:func:`mixed_model_gain` fits the alternative the literature uses, a linear mixed model with
crossed random effects of seed and language (statsmodels), as a cross-check.
:func:`difference_in_mean_gain` is the comparison for binary measures (same format, same
family): the difference in mean gain between the two kinds of points, with a BCa bootstrap
CI and a permutation p-value.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xstilts.analysis.stats import per_seed_means

log = logging.getLogger(__name__)

#: fewest seeds (training runs) for p-values and confidence intervals
MIN_SEEDS_FOR_INFERENCE = 3
#: statsmodels method names of the corrections a report may use
CORRECTIONS = {"holm": "Holm", "fdr_bh": "Benjamini–Hochberg"}
INFERENCE_COLUMNS = [
    "n_targets", "n_languages", "n_seeds", "mean_gain", "seed_min", "seed_max", "sd_seeds", "se", "df",
    "ci_low", "ci_high", "p_value", "inference",
]
_CELL = ["model", "setup", "target", "language"]


def descriptive_only_note(n_seeds: int) -> str:
    """The sentence a report shows instead of p-values when there are too few runs."""
    return (f"descriptive only: {n_seeds} seed(s); p-values and confidence intervals need at least "
            f"{MIN_SEEDS_FOR_INFERENCE} training runs (seeds), since the run, not the (language, seed) cell, "
            "is the unit of replication")


# --------------------------------------------------------------------------- the seed-level test


def seed_level_test(per_seed: np.ndarray, item_var: np.ndarray | float = 0.0, *,
                    confidence: float = 0.95) -> dict[str, np.ndarray]:
    """Two-sided one-sample t-test of the per-seed gains against 0, vectorised over leading axes.

    ``per_seed`` is [..., S] (NaN = missing seed); ``item_var`` ([...] or a scalar) is the
    evaluation-item sampling variance of the mean gain, added to ``sd**2 / S`` with
    Welch–Satterthwaite degrees of freedom (the item part counts as known). Returns arrays
    ``mean, sd, se, df, t, p, ci_low, ci_high, n`` of the leading shape; p and the interval
    are NaN where fewer than two seeds are finite (callers apply the three-seed rule).
    """
    from scipy.stats import t as student_t

    x = np.asarray(per_seed, dtype=float)
    n = np.isfinite(x).sum(axis=-1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, axis=-1)
        sd = np.nanstd(x, axis=-1, ddof=1)
        v_seed = sd**2 / n
        v_item = np.broadcast_to(np.asarray(item_var, dtype=float), mean.shape)
        v = v_seed + np.where(np.isfinite(v_item), v_item, 0.0)
        se = np.sqrt(v)
        df = np.where(v_seed > 0, v**2 / (v_seed**2 / (n - 1)), np.inf)
        t = np.where(se > 0, mean / np.where(se > 0, se, 1.0), np.where(mean == 0, 0.0, np.sign(mean) * np.inf))
        p = 2.0 * student_t.sf(np.abs(t), df)
        q = student_t.ppf(0.5 + confidence / 2.0, df)
        half = np.where(se > 0, q * se, 0.0)
    few = n < 2
    p = np.where(few, np.nan, p)
    lo = np.where(few, np.nan, mean - half)
    hi = np.where(few, np.nan, mean + half)
    return {"mean": mean, "sd": np.where(few, np.nan, sd), "se": np.where(few, np.nan, se),
            "df": np.where(few, np.nan, df), "t": np.where(few, np.nan, t), "p": p, "ci_low": lo, "ci_high": hi,
            "n": n}


def _blocks(group: pd.DataFrame, block_cols: list[str], seeds: list) -> tuple[list[np.ndarray], float]:
    """[seeds, languages] gain arrays per block (seeds aligned), and the item-sampling variance
    of the group's hierarchical mean: sum over blocks and languages of (1 / (B L_b))**2 times each
    language's item variance (averaged over seeds; the items are the same in every run)."""
    parts = [g for _, g in group.groupby(block_cols, sort=True)] if block_cols else [group]
    blocks = []
    item_var = 0.0
    for g in parts:
        pivot = g.groupby(["seed", "language"], sort=True)["gain"].mean().unstack("language")
        blocks.append(pivot.reindex(seeds).to_numpy(dtype=float))
        if "item_var" in g.columns:
            per_lang = g.groupby("language")["item_var"].mean().to_numpy(dtype=float)
            per_lang = per_lang[np.isfinite(per_lang)]
            item_var += float(per_lang.sum()) / (len(parts) * pivot.shape[1]) ** 2
    return blocks, item_var


def infer_gains(
    gains: pd.DataFrame,
    by: Sequence[str] = ("model", "setup", "target"),
    *,
    item_var: pd.DataFrame | None = None,
    confidence: float = 0.95,
    min_seeds: int = MIN_SEEDS_FOR_INFERENCE,
) -> pd.DataFrame:
    """Seed-level inference on the gain of every group of ``gains`` (the module docstring says how).

    ``gains`` has one row per (model, setup, target, language, seed) cell with ``gain``;
    ``by`` may hold metadata columns (``family``, ``resource_class``, …). Among model,
    setup and target, those not in ``by`` become equal-weight blocks. The evaluation-item
    sampling variance of each cell's gain (points²; :func:`binomial_item_variance`,
    :func:`paired_item_variance`) is optional: an ``item_var`` column of ``gains``, or an
    ``item_var`` frame keyed by any of model, setup, target, language, seed. Groups with fewer
    than ``min_seeds`` seeds get no p-value or interval and an ``inference`` text saying so.
    """
    by = list(by)
    columns = [*by, *INFERENCE_COLUMNS]
    if gains.empty:
        return pd.DataFrame(columns=columns)
    gains = with_item_variance(gains, item_var)
    block_cols = [c for c in ("model", "setup", "target") if c not in by]
    rows = []
    for key, group in gains.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        seeds = sorted(group["seed"].unique().tolist())
        blocks, iv = _blocks(group, block_cols, seeds)
        per_seed = per_seed_means(blocks)
        res = seed_level_test(per_seed, iv, confidence=confidence)
        row = {**dict(zip(by, key)), "n_targets": group["target"].nunique(),
               "n_languages": group["language"].nunique(), "n_seeds": int(res["n"])}
        row.update(_result_row(res, per_seed, min_seeds, iv))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def with_item_variance(gains: pd.DataFrame, item_var: pd.DataFrame | None) -> pd.DataFrame:
    """``gains`` with an ``item_var`` column merged from ``item_var`` (keyed by its cell columns)."""
    if item_var is None or item_var.empty:
        return gains
    keys = [c for c in (*_CELL, "seed") if c in item_var.columns and c in gains.columns]
    table = item_var.groupby(keys, dropna=False)["item_var"].mean().reset_index()
    return gains.drop(columns=["item_var"], errors="ignore").merge(table, on=keys, how="left")


def _result_row(res: dict[str, np.ndarray], per_seed: np.ndarray, min_seeds: int, iv: float) -> dict:
    n = int(res["n"])
    finite = per_seed[np.isfinite(per_seed)]
    row = {"mean_gain": float(res["mean"]), "seed_min": float(finite.min()) if finite.size else math.nan,
           "seed_max": float(finite.max()) if finite.size else math.nan, "sd_seeds": float(res["sd"])}
    if n < min_seeds:
        row.update(se=math.nan, df=math.nan, ci_low=math.nan, ci_high=math.nan, p_value=math.nan,
                   inference="descriptive only (single seed)" if n == 1 else f"descriptive only ({n} seeds)")
        return row
    how = f"seed-level t-test ({n} runs" + (", + item sampling variance)" if iv > 0 else ")")
    row.update(se=float(res["se"]), df=float(res["df"]), ci_low=float(res["ci_low"]), ci_high=float(res["ci_high"]),
               p_value=float(res["p"]), inference=how)
    return row


def binomial_item_variance(score: np.ndarray | float, baseline: np.ndarray | float,
                           n_items: np.ndarray | float) -> np.ndarray:
    """Item-sampling variance (points²) of a gain between two scores on the same ``n_items`` items.

    ``(p1 (1 - p1) + p2 (1 - p2)) / n`` with p = score / 100: the variance of a difference of
    two proportions, an upper bound for paired scores on the same items (they are positively
    correlated). For F1-type scores it treats the score as a proportion of items, an
    approximation. NaN where ``n_items`` is unknown or < 1.
    """
    p1 = np.clip(np.asarray(score, dtype=float) / 100.0, 0.0, 1.0)
    p2 = np.clip(np.asarray(baseline, dtype=float) / 100.0, 0.0, 1.0)
    n = np.asarray(n_items, dtype=float)
    with np.errstate(all="ignore"):
        v = (p1 * (1 - p1) + p2 * (1 - p2)) / n * 100.0**2
    return np.where(n >= 1, v, np.nan)


def paired_item_variance(setup_item_scores: Sequence[float], baseline_item_scores: Sequence[float]) -> float:
    """Item-sampling variance (points²) of a gain from per-item scores of the two runs (same items, same order).

    ``var(d) / n`` of the per-item differences d (scores in points, e.g. 0/100 per item for
    accuracy): what resampling the evaluation items with replacement would give, in closed form.
    """
    a = np.asarray(setup_item_scores, dtype=float)
    b = np.asarray(baseline_item_scores, dtype=float)
    if a.shape != b.shape or a.size < 2:
        return math.nan
    d = a - b
    return float(np.var(d, ddof=1) / d.size)


# --------------------------------------------------------------------------- multiple testing, p formatting


def adjust_pvalues(p: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjusted p-values, ``holm`` or ``fdr_bh``; NaN stays NaN and is not counted as a test.

    A 1-D input goes through statsmodels' ``multipletests``. A 2-D input (simulations: one row
    per data set, no NaN) is corrected row by row in one vectorised step, scipy's
    ``false_discovery_control`` for Benjamini–Hochberg and the Holm step-down for Holm
    (statsmodels runs a garbage collection per call, too slow for thousands of rows).
    """
    if method not in CORRECTIONS:
        raise ValueError(f"correction {method!r}: expected one of {sorted(CORRECTIONS)}")
    arr = np.asarray(p, dtype=float)
    if arr.ndim == 2:
        return _adjust_rows(arr, method)
    from statsmodels.stats.multitest import multipletests

    out = np.full(arr.shape, np.nan)
    ok = np.isfinite(arr)
    if ok.any():
        out[ok] = multipletests(arr[ok], method=method)[1]
    return out


def _adjust_rows(p: np.ndarray, method: str) -> np.ndarray:
    if method == "fdr_bh":
        from scipy.stats import false_discovery_control

        return false_discovery_control(p, axis=-1, method="bh")
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    stepped = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    out = np.empty_like(stepped)
    np.put_along_axis(out, order, stepped, axis=-1)
    return out


def adjust_tables(tables: Sequence[pd.DataFrame], *, column: str = "p_value", method: str = "holm",
                  out_column: str = "p_adjusted") -> int:
    """Correct the ``column`` p-values of all ``tables`` together, in place (adds ``out_column``).

    Returns the number of tests corrected (finite p-values).
    """
    pieces = [t[column].to_numpy(dtype=float) if column in t.columns and len(t) else np.zeros(0) for t in tables]
    flat = np.concatenate(pieces) if pieces else np.zeros(0)
    adjusted = adjust_pvalues(flat, method)
    start = 0
    for t, piece in zip(tables, pieces):
        if column in t.columns:
            t[out_column] = adjusted[start:start + piece.size]
        start += piece.size
    return int(np.isfinite(flat).sum())


def format_p(p: float | None) -> str:
    """A p-value as a reader should see it: ``< 0.001``, ``0.004``, ``0.032``, ``0.41``; ``n/a`` if missing."""
    if p is None or not np.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    if p < 0.1:
        return f"{p:.3f}"
    return f"{p:.2f}"


def significance_mark(p_adjusted: float | None, alpha: float = 0.05) -> str:
    """``*`` (p < alpha), ``**`` (< 0.01), ``***`` (< 0.001) for an adjusted p-value; '' otherwise."""
    if p_adjusted is None or not np.isfinite(p_adjusted) or p_adjusted >= alpha:
        return ""
    return "***" if p_adjusted < 0.001 else "**" if p_adjusted < 0.01 else "*"


# --------------------------------------------------------------------------- power


def t_test_power(effect: float, se: float, df: float, *, alpha: float = 0.05) -> float:
    """Power of the two-sided t-test (noncentral t) to detect ``effect`` given its standard error."""
    from scipy.stats import nct
    from scipy.stats import t as student_t

    if not (se > 0 and df > 0):
        return math.nan
    crit = student_t.ppf(1 - alpha / 2, df)
    nc = abs(effect) / se
    # the far tail (a significant result of the wrong sign) is ~0 and scipy returns NaN for it at large nc
    far = float(nct.cdf(-crit, df, nc))
    return float(nct.sf(crit, df, nc)) + (far if np.isfinite(far) else 0.0)


def minimal_detectable_effect(sd_seed: float, n_seeds: int, *, alpha: float = 0.05, power: float = 0.8,
                              n_tests: int = 1, df: float | None = None) -> float:
    """Smallest gain the seed-level t-test finds with ``power`` (exact, noncentral t).

    ``sd_seed`` is the standard deviation of per-seed gains (one run to the next), ``n_seeds``
    the runs per group; ``n_tests > 1`` uses the Bonferroni level ``alpha / n_tests`` (the
    strictest step of Holm, a bound for Benjamini–Hochberg). ``df`` defaults to ``n_seeds - 1``.
    NaN with fewer than two seeds or an unknown spread.
    """
    from scipy.optimize import brentq

    if n_seeds < 2 or not np.isfinite(sd_seed) or sd_seed <= 0:
        return math.nan
    se = sd_seed / math.sqrt(n_seeds)
    d = float(df if df is not None else n_seeds - 1)
    a = alpha / max(1, n_tests)
    hi = se
    while t_test_power(hi, se, d, alpha=a) < power:
        hi *= 2.0
        if hi > 1e6 * se:
            return math.inf
    return float(brentq(lambda e: t_test_power(e, se, d, alpha=a) - power, 0.0, hi, xtol=1e-6 * se))


@dataclass
class DesignSpread:
    """How much gains move between runs and languages, pooled over the groups of a report."""

    sd_seed: float  # sd of a group's per-seed gain (run to run), pooled
    df_seed: int  # its degrees of freedom: sum of (seeds - 1) over groups
    sd_language: float  # sd of languages' gains around their group's mean (averaged over seeds), pooled
    n_groups: int
    n_seeds: int  # typical (median) seeds per group
    n_languages: int  # typical (median) languages per group


def design_spread(gains: pd.DataFrame, by: Sequence[str] = ("model", "setup", "target")) -> DesignSpread:
    """Pooled run-to-run and language-to-language spread of the gains (see :class:`DesignSpread`)."""
    ss_seed = ss_lang = 0.0
    df_seed = df_lang = 0
    n_seeds, n_langs = [], []
    for _, g in gains.groupby(list(by), sort=True):
        pivot = g.pivot_table(index="seed", columns="language", values="gain", aggfunc="mean")
        per_seed = pivot.mean(axis=1).to_numpy(dtype=float)
        per_lang = pivot.mean(axis=0).to_numpy(dtype=float)
        if per_seed.size >= 2:
            ss_seed += float(np.sum((per_seed - per_seed.mean()) ** 2))
            df_seed += per_seed.size - 1
        if per_lang.size >= 2:
            ss_lang += float(np.sum((per_lang - per_lang.mean()) ** 2))
            df_lang += per_lang.size - 1
        n_seeds.append(per_seed.size)
        n_langs.append(per_lang.size)
    return DesignSpread(
        sd_seed=math.sqrt(ss_seed / df_seed) if df_seed else math.nan, df_seed=df_seed,
        sd_language=math.sqrt(ss_lang / df_lang) if df_lang else math.nan, n_groups=len(n_seeds),
        n_seeds=int(np.median(n_seeds)) if n_seeds else 0, n_languages=int(np.median(n_langs)) if n_langs else 0)


# --------------------------------------------------------------------------- cross-check and binary measures


def mixed_model_gain(cells: pd.DataFrame, *, confidence: float = 0.95) -> dict[str, float | str]:
    """Mean gain from a linear mixed model with crossed random intercepts of seed and language.

    ``cells`` holds one row per (language, seed) (``gain``, ``seed``, ``language``; a ``target``
    column, if any, enters as a fixed effect with sum-to-zero coding so the intercept is the
    equal-weight mean over targets). Fitted by REML (statsmodels ``MixedLM`` with variance
    components). Returns estimate, se, ci_low, ci_high, p (Wald z) and a note; NaN and the
    reason when the model cannot be fitted (fewer than three seeds, or no convergence).
    """
    nan = math.nan
    out: dict[str, float | str] = {"estimate": nan, "se": nan, "ci_low": nan, "ci_high": nan, "p": nan, "note": ""}
    if cells["seed"].nunique() < MIN_SEEDS_FOR_INFERENCE:
        out["note"] = "not fitted: fewer than 3 seeds"
        return out
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    data = cells[["gain", "seed", "language", *(["target"] if "target" in cells else [])]].copy()
    data["one"] = 1
    data["seed"] = data["seed"].astype(str)
    data["language"] = data["language"].astype(str)
    fixed = "gain ~ 1" + (" + C(target, Sum)" if "target" in data and data["target"].nunique() > 1 else "")
    vc = {"seed": "0 + C(seed)", "language": "0 + C(language)"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = smf.mixedlm(fixed, data, groups="one", vc_formula=vc, re_formula="0").fit(reml=True)
        except (ValueError, np.linalg.LinAlgError) as exc:
            out["note"] = f"not fitted: {exc}"
            return out
    if not fit.converged or any(issubclass(w.category, ConvergenceWarning) for w in caught):
        out["note"] = "did not converge cleanly (estimate shown, interpret with care)"
    est, se = float(fit.fe_params["Intercept"]), float(fit.bse_fe["Intercept"])
    from scipy.stats import norm

    q = norm.ppf(0.5 + confidence / 2.0)
    out.update(estimate=est, se=se, ci_low=est - q * se, ci_high=est + q * se, p=float(2 * norm.sf(abs(est / se))))
    return out


def difference_in_mean_gain(gain: Sequence[float], flag: Sequence[float], *, n_boot: int = 2_000,
                            n_perm: int = 5_000, confidence: float = 0.95, seed: int = 0) -> dict[str, float | str]:
    """Mean gain where a binary measure is 1 minus where it is 0, with a BCa CI and a permutation p.

    Points with a NaN are dropped. Returns ``n_1, n_0, mean_1, mean_0, difference, ci_low,
    ci_high, p`` (two-sided, scipy ``permutation_test`` over group labels) and ``note``; the test
    and the CI need two points per side.
    """
    from scipy.stats import bootstrap, permutation_test

    g = np.asarray(gain, dtype=float)
    f = np.asarray(flag, dtype=float)
    ok = np.isfinite(g) & np.isfinite(f)
    a, b = g[ok & (f > 0.5)], g[ok & (f <= 0.5)]
    nan = math.nan
    out: dict[str, float | str] = {"n_1": int(a.size), "n_0": int(b.size), "mean_1": float(a.mean()) if a.size else nan,
                                   "mean_0": float(b.mean()) if b.size else nan, "difference": nan, "ci_low": nan,
                                   "ci_high": nan, "p": nan, "note": ""}
    if a.size == 0 or b.size == 0:
        out["note"] = "every point is on one side: no comparison"
        return out
    out["difference"] = float(a.mean() - b.mean())

    def diff(x, y, axis=-1):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    if a.size < 2 or b.size < 2:
        out["note"] = "one point on one side: no test or interval"
        return out
    rng = np.random.default_rng(seed)
    out["p"] = float(permutation_test((a, b), diff, vectorized=True, n_resamples=n_perm, rng=rng).pvalue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((a, b), diff, vectorized=True, n_resamples=n_boot, method="BCa", confidence_level=confidence,
                        rng=rng)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= out["difference"] <= hi):
        res = bootstrap((a, b), diff, vectorized=True, n_resamples=n_boot, method="percentile",
                        confidence_level=confidence, rng=rng)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        out["note"] = "percentile bootstrap (BCa undefined)"
    out.update(ci_low=lo, ci_high=hi)
    return out
