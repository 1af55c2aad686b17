"""Gains over the no-intermediate baseline, and their summaries with uncertainty.

Input is the results store's metrics table (columns ``model, setup, target, language,
seed, split, metric, value, stage_id``; values in percentage points). A *gain* is one
cell's primary-metric score minus the baseline's score for the same model, target,
language and seed. Summaries average languages within a target, targets with equal
weight, then seeds, and carry a bootstrap CI and paired tests against the baseline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xstilts.analysis.metadata import find_task
from xstilts.analysis.stats import (
    bootstrap_hierarchical_ci,
    hierarchical_mean,
    seed_std,
    sign_flip_greater,
    wilcoxon_greater,
)
from xstilts.errors import DataError
from xstilts.experiments.spec import BASELINE
from xstilts.experiments.store import METRIC_COLUMNS as STORE_METRIC_COLUMNS
from xstilts.tasks.catalog import TaskSpec

log = logging.getLogger(__name__)

#: the store's metric columns that the gains need (``stage_id`` is not)
METRIC_COLUMNS = tuple(c for c in STORE_METRIC_COLUMNS if c != "stage_id")
CELL = ["model", "setup", "target", "language", "seed"]
GAIN_COLUMNS = [*CELL, "split", "metric", "score", "baseline_score", "gain"]
SUMMARY_STATS = [
    "n_targets", "n_languages", "n_seeds", "seeds", "n_cells", "mean_score", "mean_baseline",
    "mean_gain", "std_seeds", "ci_low", "ci_high", "wilcoxon_p", "sign_flip_p", "note",
]
_FALLBACK_METRICS = ("f1", "accuracy")
_FALLBACK_SPLITS = ("test", "dev", "validation")


@dataclass
class GainTable:
    """Per-cell gains, plus what could not be computed and why."""

    gains: pd.DataFrame
    scores: pd.DataFrame  # primary-metric scores of every run (baseline included)
    missing_baseline: pd.DataFrame  # cells of non-baseline setups with no baseline score
    metric_by_target: dict[str, str] = field(default_factory=dict)
    split_by_target: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    baseline: str = BASELINE


def _check_columns(frame: pd.DataFrame, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(what, f"missing columns {missing}; expected at least {list(required)}")


def _pick(available: list[str], wanted: str | None, fallbacks: Sequence[str]) -> tuple[str, bool]:
    """(``wanted`` if available, else the first fallback available, else the first available; whether it fell back)."""
    if wanted in available:
        return str(wanted), False
    return next((x for x in fallbacks if x in available), available[0]), True


def _primary_rows(target: str, rows: pd.DataFrame, spec: TaskSpec | None, notes: list[str]) -> tuple[pd.DataFrame, str, str]:
    """The rows of one target's primary metric on its evaluation split, and (metric, split)."""
    splits = sorted(rows["split"].astype(str).unique())
    split, fell_back = _pick(splits, spec.eval_split if spec else None, _FALLBACK_SPLITS)
    if fell_back and len(splits) > 1:
        notes.append(f"target '{target}': several splits {splits}; using '{split}'.")
    rows = rows[rows["split"].astype(str) == split]
    available = sorted(rows["metric"].astype(str).unique())
    metric, fell_back = _pick(available, spec.primary_metric if spec else None, _FALLBACK_METRICS)
    if fell_back:
        why = "is not in the task catalog" if spec is None else f"has no '{spec.primary_metric}' rows"
        notes.append(f"target '{target}' {why}; using metric '{metric}' (available: {', '.join(available)}).")
    return rows[rows["metric"].astype(str) == metric], metric, split


def select_primary_scores(
    metrics: pd.DataFrame, *, task_lookup: Callable[[str], TaskSpec | None] = find_task
) -> tuple[pd.DataFrame, dict[str, str], dict[str, str], list[str]]:
    """Keep, per target, the rows of its primary metric on its evaluation split.

    The metric is ``TaskSpec.primary_metric`` and the split ``TaskSpec.eval_split``; for a
    target the catalog does not know (or whose metric/split is absent) it falls back to
    ``f1`` then ``accuracy`` and ``test`` then ``dev``, and adds a note. Duplicate rows
    of one cell (a re-run) are averaged, with a note. Returns
    (scores, metric_by_target, split_by_target, notes).
    """
    _check_columns(metrics, METRIC_COLUMNS, "metrics table")
    notes: list[str] = []
    metric_by_target: dict[str, str] = {}
    split_by_target: dict[str, str] = {}
    parts = []
    for target, rows in metrics.groupby("target", sort=True):
        chosen, metric_by_target[str(target)], split_by_target[str(target)] = _primary_rows(
            str(target), rows, task_lookup(str(target)), notes)
        parts.append(chosen)
    if not parts:
        return pd.DataFrame(columns=[*CELL, "split", "metric", "score"]), {}, {}, ["the metrics table is empty."]
    chosen = pd.concat(parts, ignore_index=True)
    counts = chosen.groupby(CELL, dropna=False).size()
    dup = counts[counts > 1]
    if len(dup):
        notes.append(f"{len(dup)} cell(s) have several results (re-runs?); their scores are averaged.")
    scores = (
        chosen.groupby([*CELL, "split", "metric"], dropna=False, sort=True)["value"].mean().rename("score").reset_index()
    )
    return scores, metric_by_target, split_by_target, notes


def compute_gains(
    metrics: pd.DataFrame,
    *,
    baseline: str = BASELINE,
    task_lookup: Callable[[str], TaskSpec | None] = find_task,
) -> GainTable:
    """Gain of every non-baseline cell over the baseline (same model, target, language, seed).

    Cells with no matching baseline score are listed in ``missing_baseline`` and in a note,
    never filled in.
    """
    scores, metric_by_target, split_by_target, notes = select_primary_scores(metrics, task_lookup=task_lookup)
    base = scores[scores["setup"] == baseline][["model", "target", "language", "seed", "score"]]
    base = base.rename(columns={"score": "baseline_score"})
    runs = scores[scores["setup"] != baseline]
    if scores.empty:
        pass
    elif base.empty:
        notes.append(f"no '{baseline}' runs in the results: no gains can be computed.")
    elif runs.empty:
        notes.append(f"only '{baseline}' runs in the results: there are no intermediate setups to compare.")
    merged = runs.merge(base, on=["model", "target", "language", "seed"], how="left")
    missing = merged[merged["baseline_score"].isna()][CELL].reset_index(drop=True)
    if len(missing) and not base.empty:
        by = missing.groupby(["model", "target"])
        detail = "; ".join(
            f"{m}/{t}: {len(g)} cell(s), seeds {sorted(set(g['seed'].tolist()))}" for (m, t), g in by
        )
        notes.append(f"{len(missing)} result(s) have no matching '{baseline}' run and are left out of the gains ({detail}).")
    gains = merged.dropna(subset=["baseline_score"]).copy()
    gains["gain"] = gains["score"] - gains["baseline_score"]
    gains = gains[GAIN_COLUMNS].sort_values(CELL).reset_index(drop=True)
    return GainTable(
        gains=gains,
        scores=scores,
        missing_baseline=missing,
        metric_by_target=metric_by_target,
        split_by_target=split_by_target,
        notes=notes,
        baseline=baseline,
    )


def _blocks(group: pd.DataFrame, block_cols: list[str], seeds: list) -> list[np.ndarray]:
    """One [seeds, languages] gain array per block (e.g. per target), seeds aligned."""
    blocks = []
    if block_cols:
        grouped = [g for _, g in group.groupby(block_cols, sort=True)]
    else:
        grouped = [group]
    for g in grouped:
        pivot = g.pivot_table(index="seed", columns="language", values="gain", aggfunc="mean")
        blocks.append(pivot.reindex(seeds).to_numpy(dtype=float))
    return blocks


def summarize_gains(
    gains: pd.DataFrame,
    by: Sequence[str] = ("model", "setup", "target"),
    *,
    n_boot: int = 10_000,
    n_perm: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean gain per group with across-seed std, bootstrap CI and paired tests.

    ``by`` may include ``model``, ``setup``, ``target`` and any metadata column added to
    ``gains`` (``family``, ``script``, ``resource_class``, …). Among model/setup/target,
    those not in ``by`` become equal-weight blocks (e.g. per setup: targets count equally).
    ``wilcoxon_p`` and ``sign_flip_p`` are one-sided p-values for "the setup beats the
    baseline", treating each (target, language, seed) cell as one pair. A group with one
    seed gets NaN std and CI and a note saying so.
    """
    by = list(by)
    columns = [*by, *SUMMARY_STATS]
    if gains.empty:
        return pd.DataFrame(columns=columns)
    block_cols = [c for c in ("model", "setup", "target") if c not in by]
    rows = []
    for key, group in gains.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        seeds = sorted(group["seed"].unique().tolist())
        blocks = _blocks(group, block_cols, seeds)
        mean = hierarchical_mean(blocks)
        std = seed_std(blocks)
        lo, hi = bootstrap_hierarchical_ci(blocks, n_boot=n_boot, confidence=confidence, seed=seed)
        cells = group.groupby(["setup", "target", "language", "seed"])["gain"].mean().to_numpy()
        note = ""
        if len(seeds) < 2:
            note = f"single seed ({seeds[0]}): no across-seed std or confidence interval"
        rows.append(
            {
                **dict(zip(by, key)),
                "n_targets": group["target"].nunique(),
                "n_languages": group["language"].nunique(),
                "n_seeds": len(seeds),
                "seeds": ",".join(str(s) for s in seeds),
                "n_cells": int(cells.size),
                "mean_score": float(group["score"].mean()),
                "mean_baseline": float(group["baseline_score"].mean()),
                "mean_gain": mean,
                "std_seeds": std,
                "ci_low": lo,
                "ci_high": hi,
                "wilcoxon_p": wilcoxon_greater(cells),
                "sign_flip_p": sign_flip_greater(cells, n_perm=n_perm, seed=seed),
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def per_language_gains(gains: pd.DataFrame) -> pd.DataFrame:
    """Gain per (model, setup, target, language): mean and std over seeds (NaN std for one seed)."""
    if gains.empty:
        return pd.DataFrame(columns=["model", "setup", "target", "language", "n_seeds", "mean_gain", "std_seeds"])
    g = gains.groupby(["model", "setup", "target", "language"], sort=True)["gain"]
    out = pd.DataFrame({"n_seeds": g.size(), "mean_gain": g.mean(), "std_seeds": g.std(ddof=1)}).reset_index()
    out.loc[out["n_seeds"] < 2, "std_seeds"] = math.nan
    return out
