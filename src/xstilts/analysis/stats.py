"""Statistics used by the analyses: bootstrap intervals, paired tests, rank correlations.

Everything is seeded (``numpy.random.default_rng(seed)``) so a report is reproducible.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)

#: below this many paired cells the sign-flip test enumerates all 2**n sign patterns
EXACT_SIGN_FLIP_MAX_N = 16


def hierarchical_mean(blocks: Sequence[np.ndarray]) -> float:
    """Mean of ``blocks``: each block is a [seeds, languages] array (NaN = missing cell).

    Within a block, the gain is averaged over languages per seed; blocks (e.g. targets)
    are then averaged with equal weight per seed, and the result over seeds. This is the
    XTREME convention: every target task counts the same however many languages it has.
    """
    per_seed = _per_seed_means(blocks)
    return float(np.nanmean(per_seed)) if np.isfinite(per_seed).any() else math.nan


def per_seed_means(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """The gain of each seed (one training run of the grid): languages averaged within a block,
    blocks (e.g. targets) with equal weight; NaN for a seed with no cell. Shape [seeds]."""
    return _per_seed_means(blocks)


def _per_seed_means(blocks: Sequence[np.ndarray]) -> np.ndarray:
    with np.errstate(all="ignore"), _quiet_nan():
        per_block = np.stack([np.nanmean(b, axis=1) for b in blocks])  # [blocks, seeds]
        return np.nanmean(per_block, axis=0)  # [seeds]


class _quiet_nan:
    """Silence numpy's "mean of empty slice" warnings (empty slices are expected here)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def seed_std(blocks: Sequence[np.ndarray]) -> float:
    """Standard deviation (ddof=1) across seeds of the language-averaged gain; NaN for one seed."""
    per_seed = _per_seed_means(blocks)
    per_seed = per_seed[np.isfinite(per_seed)]
    if per_seed.size < 2:
        return math.nan
    return float(np.std(per_seed, ddof=1))


def bootstrap_hierarchical_ci(
    blocks: Sequence[np.ndarray], *, n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of :func:`hierarchical_mean`, resampling seeds and languages.

    Each resample draws the seeds with replacement (shared by all blocks, since a seed is
    one run of the whole grid) and, independently for every block, its languages with
    replacement. Needs at least two seeds: with one seed the run-to-run variation is
    unobserved and the interval would be too narrow, so (NaN, NaN) is returned.
    """
    n_seeds = blocks[0].shape[0] if blocks else 0
    if n_seeds < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    totals = np.zeros((n_boot, n_seeds))
    counts = np.zeros((n_boot, n_seeds))
    with _quiet_nan():
        for block in blocks:
            n_lang = block.shape[1]
            lang_idx = rng.integers(0, n_lang, size=(n_boot, n_lang))
            sample = block[seed_idx[:, :, None], lang_idx[:, None, :]]  # [B, S, L]
            means = np.nanmean(sample, axis=2)  # [B, S]
            ok = np.isfinite(means)
            totals += np.where(ok, means, 0.0)
            counts += ok
        per_seed = np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
        stats = np.nanmean(per_seed, axis=1)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def wilcoxon_greater(differences: Sequence[float]) -> float:
    """One-sided Wilcoxon signed-rank p-value for "differences are > 0" (scipy); NaN if undefined.

    Undefined when there are fewer than two non-zero differences.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if np.count_nonzero(d) < 2:
        return math.nan
    try:
        return float(wilcoxon(d, alternative="greater", zero_method="wilcox").pvalue)
    except ValueError as exc:  # scipy refuses degenerate inputs
        log.debug("wilcoxon undefined: %s", exc)
        return math.nan


def sign_flip_greater(differences: Sequence[float], *, n_perm: int = 10_000, seed: int = 0) -> float:
    """One-sided paired permutation (sign-flip) test of "mean difference > 0".

    Under the null the sign of each paired difference is exchangeable. With at most
    :data:`EXACT_SIGN_FLIP_MAX_N` pairs every sign pattern is enumerated (exact p); otherwise
    ``n_perm`` random patterns are drawn and p = (1 + #{perm >= observed}) / (1 + n_perm).
    """
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    n = d.size
    if n == 0:
        return math.nan
    observed = d.mean()
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        perm = (signs * d).mean(axis=1)
        return float(np.mean(perm >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(n_perm, n))
    perm = (signs * d).mean(axis=1)
    return float((1 + np.count_nonzero(perm >= observed - tol)) / (1 + n_perm))


#: fewest pairs for a correlation's confidence interval (the bootstrap of a rank correlation
#: on fewer pairs has too few distinct resamples to mean anything)
MIN_PAIRS_FOR_CORRELATION_CI = 5
#: up to this many pairs the permutation p-value enumerates every pairing (8! = 40,320)
EXACT_PERMUTATION_MAX_N = 8


@dataclass
class Correlation:
    """Spearman and Kendall rank correlations with permutation p-values and bootstrap CIs.

    ``ci_method`` says how the intervals were made: ``"BCa bootstrap"`` (paired resamples
    of the points, :func:`scipy.stats.bootstrap`), ``"Fisher z"`` (Bonett & Wright's
    standard errors, used when the BCa interval is undefined or would not contain the
    estimate, which happens when nearly every resample falls on one side of it) or a
    sentence saying why there is none. ``n_degenerate`` counts the bootstrap resamples in
    which one variable came out constant: their coefficient is counted as 0 (no measurable
    association), never dropped.
    """

    n: int
    spearman: float
    spearman_p: float
    spearman_ci_low: float
    spearman_ci_high: float
    kendall: float
    kendall_p: float
    kendall_ci_low: float
    kendall_ci_high: float
    ci_method: str = ""
    p_method: str = ""
    n_degenerate: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def spearman_vectorized(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along ``axis`` (ties get average ranks); 0 where x or y is constant there."""
    from scipy.stats import rankdata

    rx = rankdata(x, axis=axis)
    ry = rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    num = (rx * ry).sum(axis=axis)
    den = np.sqrt((rx**2).sum(axis=axis) * (ry**2).sum(axis=axis))
    with np.errstate(all="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def kendall_vectorized(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall's tau-b along ``axis``; 0 where x or y is constant there."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    num = (sx * sy).sum(axis=(-2, -1))
    den = np.sqrt((sx**2).sum(axis=(-2, -1)) * (sy**2).sum(axis=(-2, -1)))
    with np.errstate(all="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _batch(n: int) -> int:
    """Resamples per vectorised call: Kendall's [batch, n, n] sign tensors stay near 4M entries."""
    return max(16, 4_000_000 // max(1, n * n))


def _fisher_z_ci(r: float, n: int, kind: str, confidence: float) -> tuple[float, float]:
    """Fisher-z interval with Bonett & Wright (2000) standard errors (always contains ``r``)."""
    from scipy.stats import norm

    if abs(r) >= 1.0:
        return (float(r), float(r))
    if kind == "spearman":
        se = math.sqrt((1.0 + r * r / 2.0) / max(n - 3, 1))
    else:
        se = math.sqrt(0.437 / max(n - 4, 1))
    z = math.atanh(r)
    q = norm.ppf(0.5 + confidence / 2.0)
    return (math.tanh(z - q * se), math.tanh(z + q * se))


def _correlation_ci(x: np.ndarray, y: np.ndarray, fn, estimate: float, *, n_boot: int, confidence: float,
                    rng: np.random.Generator) -> tuple[float, float, str]:
    """BCa bootstrap CI of a correlation ``fn``, with the Fisher-z fallback (see :class:`Correlation`)."""
    import warnings

    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on degenerate (all-equal) bootstrap distributions
        res = bootstrap((x, y), fn, paired=True, vectorized=True, n_resamples=n_boot, method="BCa",
                        confidence_level=confidence, rng=rng, batch=_batch(x.size))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    dist = np.asarray(res.bootstrap_distribution)
    if np.all(np.abs(dist - estimate) < 1e-12):
        return (estimate, estimate, "bootstrap, degenerate: every resample gives the estimate")
    if np.isfinite(lo) and np.isfinite(hi) and lo - 1e-12 <= estimate <= hi + 1e-12:
        return (lo, hi, "BCa bootstrap")
    kind = "spearman" if fn is spearman_vectorized else "kendall"
    lo, hi = _fisher_z_ci(estimate, x.size, kind, confidence)
    return (lo, hi, "Fisher z")


def _permutation_p(x: np.ndarray, y: np.ndarray, fn, *, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided permutation p-value of a correlation (exact up to :data:`EXACT_PERMUTATION_MAX_N` pairs)."""
    from scipy.stats import permutation_test

    n_res = math.factorial(x.size) if x.size <= EXACT_PERMUTATION_MAX_N else n_perm
    res = permutation_test((x, y), fn, permutation_type="pairings", vectorized=True, n_resamples=n_res,
                           alternative="two-sided", rng=rng, batch=_batch(x.size))
    return float(res.pvalue)


def _count_degenerate(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> int:
    """How many of ``n_boot`` paired resamples leave x or y constant (counted as 0, see Correlation)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    return int(np.count_nonzero((np.ptp(x[idx], axis=1) == 0) | (np.ptp(y[idx], axis=1) == 0)))


def rank_correlation(
    x: Sequence[float],
    y: Sequence[float],
    *,
    n_boot: int = 2_000,
    n_perm: int = 5_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """Spearman's rho and Kendall's tau-b of ``x`` vs ``y`` with permutation p-values and CIs.

    Pairs with a NaN are dropped (``n`` counts the rest). With fewer than three pairs, or a
    constant input, everything is NaN. p-values: two-sided permutation tests over pairings
    (exact up to :data:`EXACT_PERMUTATION_MAX_N` pairs, else ``n_perm`` random ones); with
    ``n_perm <= 0``, scipy's asymptotic p-values. CIs (see :class:`Correlation`) need
    :data:`MIN_PAIRS_FOR_CORRELATION_CI` pairs and ``n_boot > 0``; the interval always
    contains the estimate.
    """
    from scipy.stats import kendalltau, spearmanr

    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = int(xa.size)
    nan = math.nan
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        why = "n < 3" if n < 3 else "a constant variable"
        return Correlation(n, nan, nan, nan, nan, nan, nan, nan, nan, f"none ({why})", f"none ({why})", 0)
    rho = float(spearmanr(xa, ya)[0])
    tau = float(kendalltau(xa, ya)[0])
    rng = np.random.default_rng(seed)
    if n_perm > 0:
        rho_p = _permutation_p(xa, ya, spearman_vectorized, n_perm=n_perm, rng=rng)
        tau_p = _permutation_p(xa, ya, kendall_vectorized, n_perm=n_perm, rng=rng)
        p_method = "exact permutation" if n <= EXACT_PERMUTATION_MAX_N else f"permutation ({n_perm:,} resamples)"
    else:
        rho_p, tau_p, p_method = float(spearmanr(xa, ya)[1]), float(kendalltau(xa, ya)[1]), "asymptotic (scipy)"
    if n_boot <= 0 or n < MIN_PAIRS_FOR_CORRELATION_CI:
        why = f"none (n < {MIN_PAIRS_FOR_CORRELATION_CI})" if n_boot > 0 else "none (no bootstrap asked)"
        return Correlation(n, rho, rho_p, nan, nan, tau, tau_p, nan, nan, why, p_method, 0)
    s_lo, s_hi, s_how = _correlation_ci(xa, ya, spearman_vectorized, rho, n_boot=n_boot, confidence=confidence, rng=rng)
    k_lo, k_hi, k_how = _correlation_ci(xa, ya, kendall_vectorized, tau, n_boot=n_boot, confidence=confidence, rng=rng)
    how = s_how if s_how == k_how else f"Spearman: {s_how}; Kendall: {k_how}"
    degenerate = _count_degenerate(xa, ya, n_boot, seed)
    return Correlation(n, rho, rho_p, s_lo, s_hi, tau, tau_p, k_lo, k_hi, how, p_method, degenerate)
