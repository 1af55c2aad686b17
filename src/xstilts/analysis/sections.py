"""The report's sections, computed: one typed result per section, with no rendering in it.

Each ``compute_*`` function takes the :class:`ReportInputs` (gains, language metadata, stage
records, options) and returns a dataclass of DataFrames, values and notes;
:mod:`xstilts.analysis.render` turns them into text, tables and figures. A new analysis
(e.g. another statistic) adds a field to a result here and the lines that show it there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from xstilts.analysis.gains import GainTable, per_language_gains, summarize_gains
from xstilts.analysis.groupings import (
    UNKNOWN,
    add_resource_level,
    attach_language_metadata,
    flag_high_low_divergence,
    flag_negative_groups,
    gains_by_group,
)
from xstilts.analysis.records import StageUse, parse_settings, unfinished

if TYPE_CHECKING:  # pragma: no cover
    from xstilts.analysis.report import ReportOptions

log = logging.getLogger(__name__)


@dataclass
class ReportInputs:
    """What every section is computed from."""

    metrics: pd.DataFrame
    stages: pd.DataFrame
    records: list[StageUse]
    gt: GainTable
    options: ReportOptions
    meta: pd.DataFrame = field(default_factory=pd.DataFrame)  # gains + language metadata columns
    meta_notes: list[str] = field(default_factory=list)

    @property
    def summary_kwargs(self) -> dict[str, Any]:
        o = self.options
        return dict(n_boot=o.n_boot, n_perm=o.n_perm, confidence=o.confidence, seed=o.seed)


# --------------------------------------------------------------------------- overview


@dataclass
class Overview:
    """What was compared: models, setups, targets, languages, seeds, and the metric of each target."""

    models: list[str]
    setups: list[str]
    targets: list[str]
    languages: list[str]
    seeds: list[Any]
    baseline: str
    metric_by_target: dict[str, str]
    split_by_target: dict[str, str]
    missing_baseline: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _sorted_unique(frame: pd.DataFrame, column: str) -> list[Any]:
    if frame.empty:
        return []
    values = frame[column].unique().tolist()
    return sorted(values) if column == "seed" else sorted(map(str, values))


def compute_overview(inp: ReportInputs) -> Overview:
    gt = inp.gt
    scores = gt.scores
    seeds = _sorted_unique(scores, "seed")
    notes = list(gt.notes)
    if len(seeds) == 1:
        notes.append(f"Only one seed ({seeds[0]}): standard deviations and confidence intervals across seeds cannot "
                     "be computed and are shown as n/a; run more seeds for them.")
    return Overview(
        models=_sorted_unique(scores, "model"), setups=_sorted_unique(scores, "setup"),
        targets=_sorted_unique(scores, "target"), languages=_sorted_unique(scores, "language"), seeds=seeds,
        baseline=gt.baseline, metric_by_target=gt.metric_by_target, split_by_target=gt.split_by_target,
        missing_baseline=gt.missing_baseline, notes=notes,
    )


# --------------------------------------------------------------------------- gains


@dataclass
class GainsResult:
    """Mean gains with uncertainty per (setup, target), per setup and overall."""

    per_target: pd.DataFrame
    per_setup: pd.DataFrame
    overall: pd.DataFrame
    significant: pd.DataFrame  # rows of per_setup that beat the baseline on both paired tests


def compute_gains_section(inp: ReportInputs) -> GainsResult:
    gains, kw = inp.gt.gains, inp.summary_kwargs
    per_target = summarize_gains(gains, ("model", "setup", "target"), **kw)
    per_setup = summarize_gains(gains, ("model", "setup"), **kw)
    overall = summarize_gains(gains, ("model",), **kw)
    significant = per_setup[(per_setup["wilcoxon_p"] < 0.05) & (per_setup["sign_flip_p"] < 0.05)]
    return GainsResult(per_target, per_setup, overall, significant)


@dataclass
class PerLanguageResult:
    """Gain per (model, setup, target, language): mean and std over seeds."""

    per_language: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def compute_per_language(inp: ReportInputs) -> PerLanguageResult:
    notes = [n for n in inp.meta_notes if n.startswith("no metadata")]
    return PerLanguageResult(per_language_gains(inp.gt.gains), notes)


# --------------------------------------------------------------------------- groupings


@dataclass
class FamilyResult:
    """Gains by language family, genus and script, and the families with a negative mean gain."""

    by_family: pd.DataFrame
    by_genus: pd.DataFrame
    by_script: pd.DataFrame
    negative: pd.DataFrame
    languages_per_family: dict[str, int]
    notes: list[str] = field(default_factory=list)


def compute_families(inp: ReportInputs) -> FamilyResult:
    meta, kw = inp.meta, inp.summary_kwargs
    fam = gains_by_group(meta, "family", **kw)
    counts = meta.assign(family=meta["family"].fillna(UNKNOWN)).groupby("family")["language"].nunique()
    return FamilyResult(
        by_family=fam, by_genus=gains_by_group(meta, "genus", **kw), by_script=gains_by_group(meta, "script", **kw),
        negative=flag_negative_groups(fam, "family"), languages_per_family={str(k): int(v) for k, v in counts.items()},
        notes=list(inp.meta_notes),
    )


@dataclass
class ResourceResult:
    """Gains by Joshi resource class and by low/high resource level, and the high-vs-low flags."""

    by_class: pd.DataFrame
    by_level: pd.DataFrame
    divergence: pd.DataFrame
    low_classes: tuple[int, ...]
    low_languages: list[str] | None
    no_class_languages: list[str]

    @property
    def known_classes(self) -> pd.DataFrame:
        known = self.by_class[self.by_class["resource_class"] != UNKNOWN].copy()
        known["resource_class"] = known["resource_class"].astype(float).astype(int)
        return known

    @property
    def flagged(self) -> pd.DataFrame:
        return self.divergence[self.divergence["flagged"]]


def compute_resource(inp: ReportInputs) -> ResourceResult:
    meta, kw, opts = inp.meta, inp.summary_kwargs, inp.options
    by_class = gains_by_group(meta, "resource_class", **kw)
    no_class = sorted(meta[meta["resource_class"].isna()]["language"].unique()) if len(by_class) else []
    levels = add_resource_level(meta, low_classes=opts.low_resource_classes, low_languages=opts.low_resource_languages)
    return ResourceResult(
        by_class=by_class, by_level=gains_by_group(levels, "resource_level", **kw),
        divergence=flag_high_low_divergence(levels, per_target=True), low_classes=tuple(opts.low_resource_classes),
        low_languages=opts.low_resource_languages, no_class_languages=[str(c) for c in no_class],
    )


# --------------------------------------------------------------------------- runs and settings

#: settings shown per stage in the runs table (keys of TrainConfig and of the eval stage settings)
SETTING_KEYS = ("max_examples", "max_steps", "num_epochs", "learning_rate", "batch_size", "max_length",
                "precision", "split", "sampler", "temperature")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists as one level of dotted keys (lists of scalars joined by commas)."""
    if isinstance(d, dict):
        return {k: v for key, value in d.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(d, list) and any(isinstance(x, (dict, list)) for x in d):
        return {k: v for i, value in enumerate(d) for k, v in flatten(value, f"{prefix}{i}.").items()}
    if isinstance(d, list):
        return {prefix[:-1]: ",".join(map(str, d))}
    return {prefix[:-1]: d}


@dataclass
class SettingsResult:
    """The stages behind the numbers, with their chosen settings, and what each target's numbers are."""

    stages: pd.DataFrame
    unfinished_states: list[str]
    n_unfinished: int
    targets: pd.DataFrame


def _stage_row(row: dict[str, Any]) -> dict[str, Any]:
    flat = flatten(parse_settings(row.get("settings")))
    chosen = {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] in SETTING_KEYS}
    out = {c: row.get(c) for c in ("stage_id", "kind", "state", "setup", "target", "model", "seed") if c in row}
    if "stage_id" in out:
        out["stage_id"] = str(out["stage_id"])[:12]
    out["settings"] = "; ".join(f"{k}={v}" for k, v in sorted(chosen.items())) or "(none recorded)"
    return out


def compute_settings(inp: ReportInputs) -> SettingsResult | None:
    """None when the store has no stage records."""
    if inp.stages is None or inp.stages.empty:
        return None
    rows = [_stage_row(r) for r in inp.stages.to_dict("records")]
    bad = unfinished(inp.records) if "state" in inp.stages.columns else []  # frames without states: unknown
    targets = pd.DataFrame()
    if len(inp.gt.scores):
        targets = inp.gt.scores.groupby(["target", "split", "metric"]).agg(
            languages=("language", "nunique"), seeds=("seed", lambda x: ",".join(map(str, sorted(set(x))))),
            setups=("setup", "nunique")).reset_index()
    return SettingsResult(pd.DataFrame(rows), sorted({r.state for r in bad}), len(bad), targets)


def prepare_inputs(metrics: pd.DataFrame, stages: pd.DataFrame, records: Sequence[StageUse], gt: GainTable,
                   options: ReportOptions) -> ReportInputs:
    """The shared inputs of the sections (language metadata attached to the gains)."""
    inp = ReportInputs(metrics, stages, list(records), gt, options)
    if not gt.gains.empty:
        inp.meta, inp.meta_notes = attach_language_metadata(gt.gains)
    return inp
