"""Matplotlib figures of the report (Agg backend), each returned as PNG bytes.

Figures are sized to their content (number of rows/columns/labels), long tick labels are
rotated, and every axis names its unit: gains are in points of the target's primary metric.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold", "figure.dpi": 100})
    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.1f}"


def gain_heatmap(
    matrix: pd.DataFrame,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    cbar_label: str = "gain over baseline (points)",
    annotations: pd.DataFrame | None = None,
) -> bytes:
    """A diverging heatmap (blue = gain, red = loss, white = 0), each cell annotated.

    ``matrix`` rows and columns are the labels shown; NaN cells are grey and say "n/a".
    ``annotations`` (same shape, strings) replaces the default "+1.2" cell text.
    """
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    values = matrix.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    col_len = max((len(str(c)) for c in matrix.columns), default=4)
    row_len = max((len(str(r)) for r in matrix.index), default=4)
    width = min(28, max(5.5, 1.05 * n_cols + 0.09 * row_len + 2.5))
    height = min(30, max(3.0, 0.55 * n_rows + 0.07 * col_len + 1.8))
    fig, ax = plt.subplots(figsize=(width, height))
    finite = values[np.isfinite(values)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    bound = bound if bound > 0 else 1.0
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=TwoSlopeNorm(0.0, -bound, bound), aspect="auto")
    ax.set_xticks(range(n_cols))
    ax.set_yticks(range(n_rows))
    rotate = col_len * n_cols > 60
    ax.set_xticklabels([str(c) for c in matrix.columns], rotation=35 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticklabels([str(r) for r in matrix.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fontsize = 9 if n_cols <= 10 else 7
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            text = annotations.iat[i, j] if annotations is not None else _fmt(v)
            dark = np.isfinite(v) and abs(v) > 0.6 * bound
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")
    cb = fig.colorbar(im, ax=ax, fraction=0.046 if n_cols > 3 else 0.08, pad=0.03)
    cb.set_label(cbar_label)
    return _png(fig)


def grouped_bars(
    frame: pd.DataFrame,
    *,
    category: str,
    series: str,
    value: str,
    error: str | None,
    title: str,
    xlabel: str,
    ylabel: str,
    category_order: Sequence[str] | None = None,
) -> bytes:
    """Grouped vertical bars: one group per ``category`` (e.g. language), one bar per ``series``."""
    plt = _plt()
    cats = list(category_order) if category_order is not None else sorted(frame[category].unique().tolist())
    sers = sorted(frame[series].unique().tolist())
    n_c, n_s = len(cats), len(sers)
    width = min(18, max(6.0, 0.14 * n_c * max(1, n_s) + 0.25 * n_c + 2.5))
    max_label = max((len(str(c)) for c in cats), default=4)
    fig, ax = plt.subplots(figsize=(width, 4.2 + 0.05 * max_label))
    bar_w = 0.8 / max(1, n_s)
    colors = plt.get_cmap("tab10")
    x = np.arange(n_c)
    for k, s in enumerate(sers):
        sub = frame[frame[series] == s].set_index(category)
        vals = [float(sub[value].get(c, np.nan)) for c in cats]
        errs = None
        if error is not None:
            errs = [float(sub[error].get(c, np.nan)) for c in cats]
            errs = [0.0 if not np.isfinite(e) else e for e in errs]
        ax.bar(x + (k - (n_s - 1) / 2) * bar_w, vals, bar_w, yerr=errs, capsize=2 if errs else 0,
               label=str(s), color=colors(k % 10))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    rotate = max_label * n_c > 50
    ax.set_xticklabels([str(c) for c in cats], rotation=55 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.6, n_c - 0.4)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if n_s > 1:
        ax.legend(title=series, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def resource_curves(frame: pd.DataFrame, *, title: str, ylabel: str) -> bytes:
    """Mean gain per Joshi resource class (x, 0-5), one line (with CI band if any) per setup."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    colors = plt.get_cmap("tab10")
    for k, (setup, g) in enumerate(frame.groupby("series", sort=True)):
        g = g.sort_values("resource_class")
        x = g["resource_class"].astype(int).to_numpy()
        ax.plot(x, g["mean_gain"], marker="o", label=str(setup), color=colors(k % 10))
        lo, hi = g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float)
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            ax.fill_between(x, lo, hi, alpha=0.15, color=colors(k % 10))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(6))
    ax.set_xticklabels(["0\n(left-behinds)", "1\n(scraping-bys)", "2\n(hopefuls)", "3\n(rising stars)",
                        "4\n(underdogs)", "5\n(winners)"], fontsize=8)
    ax.set_xlim(-0.3, 5.3)
    ax.set_xlabel("Joshi et al. (2020) resource class")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="setup", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def similarity_scatter(
    points: pd.DataFrame,
    measures: Sequence[str],
    correlations: pd.DataFrame,
    *,
    title: str,
    ylabel: str,
    label_column: str | None = None,
    measure_labels: dict[str, str] | None = None,
) -> bytes:
    """One scatter panel per measure (x) against the gain (y), with rho and tau printed on it."""
    plt = _plt()
    n = len(measures)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, m in zip(axes.ravel(), measures):
        ok = points[m].notna() & points["mean_gain"].notna()
        sub = points[ok]
        ax.scatter(sub[m], sub["mean_gain"], s=28, alpha=0.8, color="#1f77b4", edgecolor="white", linewidth=0.5)
        if label_column is not None and len(sub) <= 25:
            for _, r in sub.iterrows():
                ax.annotate(str(r[label_column]), (r[m], r["mean_gain"]), fontsize=6.5, alpha=0.75,
                            xytext=(3, 2), textcoords="offset points")
        ax.axhline(0, color="black", linewidth=0.6)
        c = correlations[(correlations["measure"] == m) & (correlations["group"] == "all")]
        if len(c) and np.isfinite(c["spearman"].iloc[0]):
            r = c.iloc[0]

            def ci(lo: float, hi: float) -> str:
                return f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else " (no CI: n < 5)"

            txt = (f"Spearman ρ = {r['spearman']:+.2f}{ci(r['spearman_ci_low'], r['spearman_ci_high'])}\n"
                   f"Kendall τ = {r['kendall']:+.2f}{ci(r['kendall_ci_low'], r['kendall_ci_high'])}\n"
                   f"n = {int(r['n'])}")
        else:
            txt = f"n = {int(ok.sum())}: too few points\nor constant measure"
        # above the panel, so it never hides a point
        ax.set_title(txt, fontsize=8, loc="left", fontweight="normal")
        ax.set_xlabel((measure_labels or {}).get(m, m))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontweight="bold")
    return _png(fig)
