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


@dataclass
class Correlation:
    """Spearman and Kendall rank correlations with percentile-bootstrap CIs."""

    n: int
    spearman: float
    spearman_p: float
    spearman_ci_low: float
    spearman_ci_high: float
    kendall: float
    kendall_p: float
    kendall_ci_low: float
    kendall_ci_high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def rank_correlation(
    x: Sequence[float], y: Sequence[float], *, n_boot: int = 2_000, confidence: float = 0.95, seed: int = 0
) -> Correlation:
    """Spearman's rho and Kendall's tau-b of ``x`` vs ``y`` (scipy), with bootstrap CIs over pairs.

    Pairs with a NaN are dropped. With fewer than three pairs, or a constant input, the
    coefficients are NaN. Bootstrap resamples that come out constant are skipped.
    """
    from scipy.stats import kendalltau, spearmanr

    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = int(xa.size)
    nan = math.nan
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return Correlation(n, nan, nan, nan, nan, nan, nan, nan, nan)
    rho, rho_p = spearmanr(xa, ya)
    tau, tau_p = kendalltau(xa, ya)
    if n_boot <= 0:
        return Correlation(n, float(rho), float(rho_p), nan, nan, float(tau), float(tau_p), nan, nan)
    rng = np.random.default_rng(seed)
    rhos, taus = _bootstrap_rank_correlations(xa, ya, n_boot=n_boot, rng=rng)
    alpha = (1.0 - confidence) / 2.0

    def ci(vals: np.ndarray) -> tuple[float, float]:
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return (nan, nan)
        lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
        return (float(lo), float(hi))

    s_lo, s_hi = ci(rhos)
    k_lo, k_hi = ci(taus)
    return Correlation(n, float(rho), float(rho_p), s_lo, s_hi, float(tau), float(tau_p), k_lo, k_hi)


def _bootstrap_rank_correlations(
    x: np.ndarray, y: np.ndarray, *, n_boot: int, rng: np.random.Generator, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Spearman rho and Kendall tau-b over ``n_boot`` resamples of the pairs.

    Resamples in which x or y is constant give NaN (and are ignored by the CI).
    """
    from scipy.stats import rankdata

    n = x.size
    rhos: list[np.ndarray] = []
    taus: list[np.ndarray] = []
    # keep the [chunk, n, n] sign tensors of Kendall's tau near 50M entries
    chunk = max(1, min(chunk, 50_000_000 // max(1, n * n)))
    with np.errstate(all="ignore"):
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            idx = rng.integers(0, n, size=(b, n))
            bx, by = x[idx], y[idx]
            rx, ry = rankdata(bx, axis=1), rankdata(by, axis=1)
            rx = rx - rx.mean(axis=1, keepdims=True)
            ry = ry - ry.mean(axis=1, keepdims=True)
            rhos.append((rx * ry).sum(1) / np.sqrt((rx**2).sum(1) * (ry**2).sum(1)))
            sx = np.sign(bx[:, :, None] - bx[:, None, :])
            sy = np.sign(by[:, :, None] - by[:, None, :])
            num = (sx * sy).sum(axis=(1, 2))
            den = np.sqrt((sx**2).sum(axis=(1, 2)) * (sy**2).sum(axis=(1, 2)))
            taus.append(num / den)
    return np.concatenate(rhos), np.concatenate(taus)
