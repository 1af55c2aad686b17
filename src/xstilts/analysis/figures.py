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


#: the colour scale of a gain heatmap spans at least +-this many points, so that a gain of a
#: fraction of a point is never drawn as saturated as the largest effect of the grid
HEATMAP_FLOOR = 2.0


def heatmap_bound(values: np.ndarray, floor: float = HEATMAP_FLOOR) -> float:
    """Half-range of a diverging scale centred at 0: the largest |value|, at least ``floor``."""
    finite = np.abs(values[np.isfinite(values)])
    biggest = float(finite.max()) if finite.size else 0.0
    return max(biggest, float(floor) if np.isfinite(floor) and floor > 0 else HEATMAP_FLOOR)


def gain_heatmap(
    matrix: pd.DataFrame,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    cbar_label: str = "gain over baseline (points)",
    annotations: pd.DataFrame | None = None,
    floor: float = HEATMAP_FLOOR,
    marks: pd.DataFrame | None = None,
    flagged: pd.DataFrame | None = None,
) -> bytes:
    """A diverging heatmap (blue = gain, red = loss, white = 0), each cell annotated.

    The colour scale is symmetric around 0 with a half-range of at least ``floor`` points
    (pass the design's minimal detectable effect to draw what it cannot tell from 0 pale).
    ``matrix`` rows and columns are the labels shown; NaN cells are grey and say "n/a".
    ``annotations`` (same shape, strings) replaces the default "+1.2" cell text; ``marks``
    (same shape, strings such as ``*``) is appended to it (significance after correction);
    ``flagged`` (same shape, bool) hatches a cell and prints "failed?" in it (a failed or
    at-chance run; its value does not stretch the scale). A column whose label starts with
    "average" is set off by a thick line.
    """
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    values = matrix.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    col_len = max((len(str(c)) for c in matrix.columns), default=4)
    row_len = max((len(str(r)) for r in matrix.index), default=4)
    width = min(28, max(5.5, 1.15 * n_cols + 0.09 * row_len + 2.5))
    height = min(30, max(3.0, 0.62 * n_rows + 0.07 * col_len + 1.8))
    fig, ax = plt.subplots(figsize=(width, height))
    shown = values if flagged is None else np.where(flagged.to_numpy(dtype=bool), np.nan, values)
    bound = heatmap_bound(shown, floor)  # a failed run's value does not set the scale of the others
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
    _heatmap_cells(ax, values, bound, annotations, marks, flagged, fontsize=9 if n_cols <= 10 else 7)
    avg = [j for j, c in enumerate(matrix.columns) if str(c).lower().startswith("average")]
    if avg:
        ax.axvline(avg[0] - 0.5, color="black", linewidth=2.5)
    cb = fig.colorbar(im, ax=ax, fraction=0.046 if n_cols > 3 else 0.08, pad=0.03)
    cb.set_label(cbar_label + f"\n(scale fixed at ±{bound:.1f})")
    return _png(fig)


def _heatmap_cells(ax, values: np.ndarray, bound: float, annotations: pd.DataFrame | None,
                   marks: pd.DataFrame | None, flagged: pd.DataFrame | None, *, fontsize: float) -> None:
    from matplotlib.patches import Rectangle

    n_rows, n_cols = values.shape
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            text = annotations.iat[i, j] if annotations is not None else _fmt(v)
            mark = str(marks.iat[i, j]) if marks is not None and isinstance(marks.iat[i, j], str) else ""
            if mark:
                first, _, rest = str(text).partition("\n")
                text = f"{first}{mark}" + (f"\n{rest}" if rest else "")
            if flagged is not None and bool(flagged.iat[i, j]):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#b00020",
                                       linewidth=1.5))
                text = f"{text}\nfailed?"
            dark = np.isfinite(v) and abs(v) > 0.6 * bound
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color="white" if dark else "black",
                    fontweight="bold" if mark else "normal")


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


JOSHI_LABELS = ["0 left-behinds", "1 scraping-bys", "2 hopefuls", "3 rising stars", "4 underdogs", "5 winners"]


def _group_colors(groups: Sequence[str], *, sequential: bool = False) -> dict[str, tuple]:
    """A colour per group: tab10/tab20 for categories, viridis for ordered classes (resource)."""
    plt = _plt()
    if sequential:
        cmap = plt.get_cmap("viridis")
        n = max(1, len(groups) - 1)
        return {g: cmap(0.1 + 0.8 * k / n) for k, g in enumerate(groups)}
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    return {g: cmap(k % cmap.N) for k, g in enumerate(groups)}


def language_gain_panels(
    frame: pd.DataFrame,
    *,
    group: str,
    title: str,
    ylabel: str,
    group_order: Sequence[str] | None = None,
    sequential: bool = False,
) -> bytes:
    """Per-language gains, one panel per setup, languages grouped (and coloured) by ``group``.

    ``frame`` has ``setup, language_label, <group>, mean_gain`` and optionally ``err_low`` /
    ``err_high`` (distances below / above the mean, e.g. the range over seeds). Within a group
    languages are sorted by their gain averaged over setups; thin lines separate the groups.
    ``sequential`` colours ordered groups (resource classes) on one scale.
    """
    plt = _plt()
    groups = list(group_order) if group_order is not None else sorted(frame[group].astype(str).unique())
    f = frame.assign(**{group: frame[group].astype(str)})
    avg = f.groupby("language_label")["mean_gain"].mean()
    grp_of = f.drop_duplicates("language_label").set_index("language_label")[group]
    order = sorted(avg.index, key=lambda lab: (groups.index(grp_of[lab]) if grp_of[lab] in groups else len(groups),
                                              -avg[lab]))
    setups = sorted(f["setup"].unique().tolist())
    colors = _group_colors(groups, sequential=sequential)
    width = min(22, max(7.0, 0.32 * len(order) + 3.0))
    fig, axes = plt.subplots(len(setups), 1, figsize=(width, 2.6 * len(setups) + 1.4), sharex=True, squeeze=False)
    x = np.arange(len(order))
    for ax, setup in zip(axes[:, 0], setups):
        sub = f[f["setup"] == setup].set_index("language_label").reindex(order)
        err = None
        if {"err_low", "err_high"} <= set(sub.columns):
            err = np.vstack([sub["err_low"].fillna(0).to_numpy(float), sub["err_high"].fillna(0).to_numpy(float)])
        ax.bar(x, sub["mean_gain"].to_numpy(float), 0.75, yerr=err, capsize=1.5, error_kw={"linewidth": 0.8},
               color=[colors.get(grp_of.get(lab), "#999999") for lab in order])
        _group_separators(ax, order, grp_of)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"setup: {setup}", fontsize=10, loc="left")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[-1, 0]
    ax.set_xticks(x)
    ax.set_xticklabels(order, rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(order) - 0.4)
    from matplotlib.patches import Patch

    counts = grp_of.value_counts()
    handles = [Patch(color=colors[g], label=f"{g} ({int(counts.get(g, 0))})") for g in groups if g in counts]
    fig.legend(handles=handles, title=f"{group.replace('_', ' ')} (languages)", fontsize=8, loc="upper left",
               bbox_to_anchor=(1.0, 0.95))
    fig.suptitle(title, fontweight="bold")
    return _png(fig)


def _group_separators(ax, order: Sequence[str], grp_of: pd.Series) -> None:
    for k in range(1, len(order)):
        if grp_of[order[k]] != grp_of[order[k - 1]]:
            ax.axvline(k - 0.5, color="#888888", linewidth=0.6, linestyle=":")


def resource_points(frame: pd.DataFrame, *, title: str, ylabel: str) -> bytes:
    """Mean gain per Joshi resource class: one point with its CI per (class, setup), no lines.

    ``frame`` has ``series`` (setup), ``resource_class`` (0-5), ``mean_gain``, ``ci_low``,
    ``ci_high`` (NaN: no bar) and ``n_languages``; the number of languages of each class is
    printed under it. Setups are dodged side by side within a class.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 4.6))
    series = sorted(frame["series"].unique().tolist())
    colors = plt.get_cmap("tab10")
    step = 0.7 / max(1, len(series))
    for k, (setup, g) in enumerate(frame.groupby("series", sort=True)):
        x = g["resource_class"].astype(int).to_numpy() + (k - (len(series) - 1) / 2) * step
        y = g["mean_gain"].to_numpy(float)
        lo, hi = g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float)
        err = np.vstack([np.where(np.isfinite(lo), y - lo, 0.0), np.where(np.isfinite(hi), hi - y, 0.0)])
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, markersize=6, linestyle="none", color=colors(k % 10),
                    label=str(setup))
    ax.axhline(0, color="black", linewidth=0.8)
    n_by_class = frame.groupby(frame["resource_class"].astype(int))["n_languages"].max()
    ax.set_xticks(range(6))
    labels = [lab.replace(" ", "\n", 1) for lab in JOSHI_LABELS]
    ax.set_xticklabels([f"{lab}\n(n = {int(n_by_class[c])})" if c in n_by_class.index else f"{lab}\n(none)"
                        for c, lab in enumerate(labels)], fontsize=8)
    ax.set_xlim(-0.5, 5.5)
    ax.set_xlabel("Joshi et al. (2020) resource class (n = languages)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="setup", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def resource_curves(frame: pd.DataFrame, *, title: str, ylabel: str) -> bytes:
    """Kept for callers of the old name: the same figure as :func:`resource_points` (no lines)."""
    f = frame if "n_languages" in frame.columns else frame.assign(n_languages=np.nan)
    return resource_points(f.fillna({"n_languages": 0}), title=title, ylabel=ylabel)


#: a similarity panel with fewer points than this shows a sentence instead of axes
MIN_SCATTER_POINTS = 3


def similarity_scatter(
    points: pd.DataFrame,
    measures: Sequence[str],
    correlations: pd.DataFrame,
    *,
    title: str,
    ylabel: str,
    label_column: str | None = None,
    measure_labels: dict[str, str] | None = None,
    hue: str | None = "target",
    binary: Sequence[str] = (),
    differences: pd.DataFrame | None = None,
) -> bytes:
    """One panel per measure (x) against the gain (y).

    Continuous measures: points coloured by ``hue`` (e.g. target), an OLS line with its 95 %
    confidence band, and Spearman/Kendall with CI, adjusted p and n above the panel (from
    ``correlations``: columns ``group, measure, n, spearman, …``; ``p_adjusted`` if present).
    Measures in ``binary`` are drawn as two jittered strips with their means, and captioned with
    the difference in mean gain from ``differences`` (columns ``measure, difference, ci_low,
    ci_high, n_1, n_0`` and optionally ``p_adjusted``). A panel with fewer than
    :data:`MIN_SCATTER_POINTS` points says so in words instead of drawing empty axes.
    """
    plt = _plt()
    n = len(measures)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    hues = sorted(points[hue].astype(str).unique()) if hue and hue in points.columns else []
    colors = _group_colors(hues) if hues else {}
    for ax, m in zip(axes.ravel(), measures):
        sub = points[points[m].notna() & points["mean_gain"].notna()]
        label = (measure_labels or {}).get(m, m)
        if len(sub) < MIN_SCATTER_POINTS:
            _too_few(ax, label, len(sub))
            continue
        if m in binary:
            _binary_panel(ax, sub, m, hue, colors, differences)
        else:
            _continuous_panel(ax, sub, m, hue, colors, correlations, label_column)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if hues and len(hues) > 1:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="none", color=colors[h], label=h) for h in hues]
        fig.legend(handles=handles, title=hue, fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 1.0),
                   ncol=min(len(hues), 6))
    fig.suptitle(title, fontweight="bold")
    return _png(fig)


def _too_few(ax, label: str, n: int) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"{label}:\nonly {n} point{'s' if n != 1 else ''}, too few\nfor a correlation or a fit "
            f"(needs {MIN_SCATTER_POINTS})", ha="center", va="center", fontsize=10, wrap=True, transform=ax.transAxes)


def _ci_text(lo: float, hi: float) -> str:
    return f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else " (no CI)"


def _p_text(row: pd.Series, raw: str) -> str:
    from xstilts.analysis.inference import format_p

    if "p_adjusted" in row.index and np.isfinite(row["p_adjusted"]):
        return f", p_adj = {format_p(row['p_adjusted'])}"
    if raw in row.index and np.isfinite(row[raw]):
        return f", p = {format_p(row[raw])}"
    return ""


def _continuous_panel(ax, sub: pd.DataFrame, m: str, hue: str | None, colors: dict, correlations: pd.DataFrame,
                      label_column: str | None) -> None:
    xs, ys = sub[m].to_numpy(float), sub["mean_gain"].to_numpy(float)
    point_colors = [colors.get(str(h), "#1f77b4") for h in sub[hue]] if colors else "#1f77b4"
    ax.scatter(xs, ys, s=30, alpha=0.85, c=point_colors, edgecolor="white", linewidth=0.5, zorder=3)
    if label_column is not None and len(sub) <= 25:
        for x, y, lab in zip(xs, ys, sub[label_column]):
            ax.annotate(str(lab), (x, y), fontsize=6.5, alpha=0.75, xytext=(3, 2), textcoords="offset points")
    _fit_band(ax, xs, ys)
    c = correlations[(correlations["measure"] == m) & (correlations["group"] == "all")] if len(correlations) else []
    if len(c) and np.isfinite(c["spearman"].iloc[0]):
        r = c.iloc[0]
        txt = (f"Spearman ρ = {r['spearman']:+.2f}{_ci_text(r['spearman_ci_low'], r['spearman_ci_high'])}"
               f"{_p_text(r, 'spearman_p')}\nKendall τ = {r['kendall']:+.2f}"
               f"{_ci_text(r['kendall_ci_low'], r['kendall_ci_high'])}\nn = {int(r['n'])}")
    else:
        txt = f"n = {len(sub)}: constant measure, no correlation"
    ax.set_title(txt, fontsize=8, loc="left", fontweight="normal")


def _fit_band(ax, xs: np.ndarray, ys: np.ndarray) -> None:
    """OLS line with its 95 % confidence band (statsmodels); nothing for a constant x."""
    if np.ptp(xs) == 0 or len(xs) < MIN_SCATTER_POINTS:
        return
    import statsmodels.api as sm

    fit = sm.OLS(ys, sm.add_constant(xs)).fit()
    grid = np.linspace(xs.min(), xs.max(), 50)
    pred = fit.get_prediction(sm.add_constant(grid)).summary_frame(alpha=0.05)
    ax.plot(grid, pred["mean"], color="#333333", linewidth=1.2, zorder=2)
    ax.fill_between(grid, pred["mean_ci_lower"], pred["mean_ci_upper"], color="#333333", alpha=0.12, zorder=1)


def _binary_panel(ax, sub: pd.DataFrame, m: str, hue: str | None, colors: dict,
                  differences: pd.DataFrame | None) -> None:
    rng = np.random.default_rng(0)
    for level in (0, 1):
        part = sub[(sub[m] > 0.5) == bool(level)]
        x = level + rng.uniform(-0.12, 0.12, size=len(part))
        point_colors = [colors.get(str(h), "#1f77b4") for h in part[hue]] if colors else "#1f77b4"
        ax.scatter(x, part["mean_gain"], s=26, alpha=0.8, c=point_colors, edgecolor="white", linewidth=0.5)
        if len(part):
            ax.hlines(part["mean_gain"].mean(), level - 0.25, level + 0.25, color="black", linewidth=2)
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["no (0)", "yes (1)"])
    ax.set_xlim(-0.5, 1.5)
    d = differences[differences["measure"] == m] if differences is not None and len(differences) else []
    if len(d) and np.isfinite(d["difference"].iloc[0]):
        r = d.iloc[0]
        txt = (f"difference in mean gain (yes − no) = {r['difference']:+.2f}{_ci_text(r['ci_low'], r['ci_high'])}"
               f"{_p_text(r, 'p')}\nn = {int(r['n_1'])} yes, {int(r['n_0'])} no")
    else:
        txt = f"n = {int((sub[m] > 0.5).sum())} yes, {int((sub[m] <= 0.5).sum())} no: no comparison"
    ax.set_title(txt, fontsize=8, loc="left", fontweight="normal")
