"""Rendering the report: computed section results -> text, tables and figures -> HTML + Markdown + PNG.

:func:`render_sections` turns a :class:`~xstilts.analysis.report.ReportData` into
:class:`Section` blocks (paragraphs, notes, tables, figures that draw themselves);
:func:`write_report` writes them as one self-contained HTML file (figures embedded as
base64 PNG) and a Markdown file linking the PNGs under ``figures/``.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from xstilts.analysis import evidence_render as er
from xstilts.analysis import figures as figs
from xstilts.analysis.metadata import language_label, language_name
from xstilts.analysis.sections import (
    FamilyResult,
    GainsResult,
    Overview,
    PerLanguageResult,
    ResourceResult,
    SettingsResult,
)
from xstilts.analysis.similarity import MEASURE_DOCS, MEASURE_LABELS
from xstilts.analysis.similarity_sections import (
    DOMAIN_MEASURES,
    LANGUAGE_MEASURES,
    TASK_MEASURES,
    DomainResult,
    LanguageSimilarityResult,
    TaskSimilarityResult,
)

if TYPE_CHECKING:  # pragma: no cover
    from xstilts.analysis.evidence import Evidence
    from xstilts.analysis.report import ReportData, ReportOptions

log = logging.getLogger(__name__)

SECTIONS = [
    ("overview", "Overview"),
    ("gains", "Gains over the baseline"),
    ("per-language", "Gains per language"),
    ("families", "Gains by language family, genus and script"),
    ("resource", "Gains by resource level"),
    ("task-similarity", "Task similarity and gains"),
    ("language-similarity", "Language similarity and gains"),
    ("domain", "Domain similarity: in-domain vs out-of-domain"),
    ("settings", "Runs, data sizes and settings"),
]
TITLE = "X-STILTs report: intermediate-task gains in zero-shot cross-lingual transfer"


@dataclass
class Figure:
    """A figure of the report: drawn (PNG bytes) when first asked for."""

    name: str
    caption: str
    draw: Callable[[], bytes]

    @cached_property
    def png(self) -> bytes:
        return self.draw()


@dataclass
class Section:
    """One rendered section: paragraphs ("- " starts a list item), notes, figures, (caption, table)."""

    id: str
    title: str
    text: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def round_frame(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Float columns rounded for display."""
    out = frame.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(digits)
    return out


def slug(text: Any) -> str:
    """A file-name-safe form of ``text`` (figure names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")[:60] or "x"


def metric_unit(metric_by_target: dict[str, str], targets: list[str] | None = None) -> str:
    ms = sorted({metric_by_target[t] for t in (targets or metric_by_target) if t in metric_by_target})
    names = {"f1": "F1", "accuracy": "accuracy", "exact_match": "exact match"}
    return "/".join(names.get(m, m) for m in ms) or "score"


def gain_label(metric_by_target: dict[str, str], targets: list[str] | None = None) -> str:
    """The y/colour-bar label of a gain: its unit is the targets' primary metric."""
    return f"gain over baseline (points of {metric_unit(metric_by_target, targets)})"


def _with_language_names(frame: pd.DataFrame, position: int) -> pd.DataFrame:
    t = frame.copy()
    t.insert(position, "language_name", t["language"].map(language_name))
    return t


# --------------------------------------------------------------------------- sections


def render_overview(s: Section, ov: Overview, opts: ReportOptions, ev: Evidence | None = None) -> None:
    setups = ", ".join(x for x in ov.setups if x != ov.baseline) or "none"
    s.text.append(
        f"Model(s): {', '.join(ov.models) or 'none'}. Intermediate setups: {setups} "
        f"(compared with '{ov.baseline}', no intermediate training). Targets: {', '.join(ov.targets) or 'none'}. "
        f"Languages: {len(ov.languages)}. Seeds: {', '.join(map(str, ov.seeds)) or 'none'}."
    )
    s.text.append(
        "A gain is a run's zero-shot score minus the baseline's score for the same model, target, language and seed, "
        "in points of the target's primary metric (" +
        ", ".join(f"{t}: {ov.metric_by_target[t]} on {ov.split_by_target[t]}" for t in ov.targets) + "). "
        "Averages weigh languages equally within a target and targets equally within a setup."
        + ("" if ev is not None else " "
        f"Uncertainty: standard deviation across seeds, {int(opts.confidence * 100)}% percentile-bootstrap CI "
        f"({opts.n_boot:,} resamples of seeds and languages, numpy seed {opts.seed}), and one-sided paired tests "
        "over (language, seed) cells that the setup beats the baseline: Wilcoxon signed-rank (scipy) and a sign-flip "
        f"permutation test (exact up to 16 cells, else {opts.n_perm:,} permutations).")
    )
    if ev is not None:
        s.text.extend(er.method_paragraphs(ev, opts))
        s.text.extend(t for t in (er.power_paragraph(ev), er.failed_paragraph(ev)) if t)
    s.notes.extend(ov.notes)
    if len(ov.missing_baseline):
        s.tables.append(("Results without a matching baseline run (left out of the gains)", ov.missing_baseline))


def _heatmap_matrix(pt: pd.DataFrame, setup_means: pd.Series,
                    metric_by_target: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(matrix, annotations) of one model's setup × target gains, plus an 'average' column."""
    mat = pt.pivot(index="setup", columns="target", values="mean_gain")
    cols = list(mat.columns)
    mat.columns = [f"{t}\n({metric_by_target.get(t, '?')})" for t in cols]
    mat["average"] = setup_means.reindex(mat.index)
    ann = mat.map(lambda v: "n/a" if _missing(v) else f"{v:+.1f}")
    lo = pt.pivot(index="setup", columns="target", values="ci_low")
    if lo.notna().any().any():
        lo = lo[cols]
        hi = pt.pivot(index="setup", columns="target", values="ci_high")[cols]
        for j in range(len(cols)):
            for i in range(len(mat.index)):
                if np.isfinite(lo.iat[i, j]):
                    ann.iat[i, j] = f"{mat.iat[i, j]:+.1f}\n[{lo.iat[i, j]:+.1f}, {hi.iat[i, j]:+.1f}]"
    return mat, ann


def render_gains(s: Section, g: GainsResult, metric_by_target: dict[str, str], ev: Evidence | None = None) -> None:
    if ev is not None:
        _render_gains_evidence(s, ev, metric_by_target)
        return
    s.text.append("The paper's main figure: mean gain of each intermediate setup (rows) on each target (columns); "
                  "the last column averages the targets. Blue = better than the baseline, red = worse.")
    for model, pt in g.per_target.groupby("model", sort=True):
        ps = g.per_setup[g.per_setup["model"] == model].set_index("setup")["mean_gain"]
        mat, ann = _heatmap_matrix(pt, ps, metric_by_target)
        s.figures.append(Figure(
            f"gain_heatmap_{slug(model)}",
            f"Mean gain over the baseline, intermediate setup × target ({model}). Cells: mean [95% CI] in points "
            "of each target's primary metric; 'average' weighs targets equally.",
            partial(figs.gain_heatmap, mat, annotations=ann, title=f"Gain over the no-intermediate baseline — {model}",
                    xlabel="target task (primary metric)", ylabel="intermediate setup",
                    cbar_label=gain_label(metric_by_target)),
        ))
    s.tables.append(("Gain per setup and target", round_frame(g.per_target)))
    s.tables.append(("Gain per setup (targets weighed equally)", round_frame(g.per_setup)))
    s.tables.append(("Gain over all setups and targets", round_frame(g.overall)))
    if len(g.significant):
        s.text.append("Setups that beat the baseline at p < 0.05 on both paired tests: "
                      + ", ".join(f"{r.setup} ({r.mean_gain:+.2f})" for r in g.significant.itertuples()) + ".")
    else:
        s.text.append("No setup beats the baseline at p < 0.05 on both paired tests.")


def _render_gains_evidence(s: Section, ev: Evidence, metric_by_target: dict[str, str]) -> None:
    s.text.append("The paper's main figure: mean gain of each intermediate setup (rows) on each target (columns); "
                  "the last column averages the targets. Blue = better than the baseline, red = worse; the colour "
                  "scale is fixed at ± the larger of 2 points and the design's minimal detectable effect.")
    cell = ("mean [95% CI]; * marks p_adj < 0.05 after correction" if ev.inferential
            else "mean and range over seeds (descriptive only: fewer than 3 seeds)")
    for model in sorted(ev.gains["per_target"]["model"].unique()):
        mat, kw = er.gain_heatmap_args(ev, model, metric_by_target)
        s.figures.append(Figure(
            f"gain_heatmap_{slug(model)}",
            f"Mean gain over the baseline, intermediate setup × target ({model}). Cells: {cell}, in points of each "
            "target's primary metric; 'average' weighs targets equally; hatched: a failed or at-chance run.",
            partial(figs.gain_heatmap, mat, title=f"Gain over the no-intermediate baseline — {model}",
                    xlabel="target task (primary metric)", ylabel="intermediate setup",
                    cbar_label=gain_label(metric_by_target), **kw),
        ))
    s.tables.append(("Gain per setup and target", er.gain_table(ev, "per_target")))
    s.tables.append(("Gain per setup (targets weighed equally)", er.gain_table(ev, "per_setup")))
    s.tables.append(("Gain over all setups and targets", er.gain_table(ev, "overall")))
    s.text.append(er.significance_sentence(ev))


def render_per_language(s: Section, r: PerLanguageResult, metric_by_target: dict[str, str],
                        ev: Evidence | None = None) -> None:
    s.notes.extend(r.notes)
    if ev is not None:
        _render_language_panels(s, ev, metric_by_target)
    for (model, target), g in (r.per_language.groupby(["model", "target"], sort=True) if ev is None else []):
        g = g.copy()
        order_codes = g.groupby("language")["mean_gain"].mean().sort_values(ascending=False).index.tolist()
        g["language_label"] = g["language"].map(language_label)
        s.figures.append(Figure(
            f"per_language_{slug(model)}_{slug(target)}",
            f"Gain per language on {target} ({model}), sorted by mean gain; error bars: std across seeds"
            + (" (single seed: none)" if g["n_seeds"].max() < 2 else "") + ".",
            partial(figs.grouped_bars, g, category="language_label", series="setup", value="mean_gain",
                    error="std_seeds", title=f"{target}: gain over baseline per language — {model}",
                    xlabel="target language", ylabel=gain_label(metric_by_target, [target]),
                    category_order=[language_label(c) for c in order_codes]),
        ))
    s.tables.append(("Gain per language (mean and std across seeds)", round_frame(_with_language_names(r.per_language, 4))))


def _render_language_panels(s: Section, ev: Evidence, metric_by_target: dict[str, str]) -> None:
    from xstilts.analysis.figures import JOSHI_LABELS

    for (model, target), _ in ev.meta.groupby(["model", "target"], sort=True):
        for group, name, order, seq in (("family", "per_language", None, False),
                                        ("resource_class", "per_language_resource", None, True)):
            frame = er.language_panel_frame(ev.meta, model, target, group)
            if group == "resource_class":
                frame[group] = frame[group].map(lambda c: JOSHI_LABELS[int(float(c))] if c != "unknown" else c)
                order = [c for c in [*JOSHI_LABELS, "unknown"] if c in set(frame[group])]
            s.figures.append(Figure(
                f"{name}_{slug(model)}_{slug(target)}",
                f"Gain per language on {target} ({model}), grouped and coloured by {group.replace('_', ' ')}; within a "
                "group sorted by gain; one panel per setup; error bars: lowest and highest seed.",
                partial(figs.language_gain_panels, frame, group=group, group_order=order, sequential=seq,
                        title=f"{target}: gain per language by {group.replace('_', ' ')} — {model}",
                        ylabel=gain_label(metric_by_target, [target])),
            ))


def render_families(s: Section, r: FamilyResult, metric_by_target: dict[str, str], ev: Evidence | None = None) -> None:
    s.notes.extend(r.notes)
    if ev is not None:
        _render_families_evidence(s, r, ev, metric_by_target)
        return
    for model, g in r.by_family.groupby("model", sort=True):
        mat = g.pivot(index="family", columns="setup", values="mean_gain")
        mat.index = [f"{f} ({r.languages_per_family.get(f, 0)} lang.)" for f in mat.index]
        s.figures.append(Figure(
            f"family_heatmap_{slug(model)}",
            f"Mean gain by language family × intermediate setup ({model}), over all targets; "
            "languages weigh equally within a target.",
            partial(figs.gain_heatmap, mat, title=f"Gain by language family — {model}", xlabel="intermediate setup",
                    ylabel="language family (number of languages)", cbar_label=gain_label(metric_by_target)),
        ))
    if len(r.negative):
        s.text.append("**Flagged — families with a negative mean gain:** " + "; ".join(
            f"{x.setup} on {x.family} ({x.mean_gain:+.2f}" + (", CI below 0" if x.significant else "") + ")"
            for x in r.negative.itertuples()) + ".")
        s.tables.append(("Flagged: families where the gain is negative", round_frame(r.negative)))
    else:
        s.text.append("No language family has a negative mean gain.")
    s.tables.append(("Gain by language family", round_frame(r.by_family)))
    s.tables.append(("Gain by genus", round_frame(r.by_genus)))
    s.tables.append(("Gain by script", round_frame(r.by_script)))


def _render_families_evidence(s: Section, r: FamilyResult, ev: Evidence, metric_by_target: dict[str, str]) -> None:
    for model in sorted(ev.gains["family"]["model"].unique()):
        mat, kw = er.family_heatmap_args(ev, model, r.languages_per_family)
        s.figures.append(Figure(
            f"family_heatmap_{slug(model)}",
            f"Mean gain by language family × intermediate setup ({model}), over all targets; languages weigh equally "
            "within a target" + ("; * marks p_adj < 0.05 after correction." if ev.inferential else "."),
            partial(figs.gain_heatmap, mat, title=f"Gain by language family — {model}", xlabel="intermediate setup",
                    ylabel="language family (number of languages)", cbar_label=gain_label(metric_by_target), **kw),
        ))
    fam = ev.gains["family"]
    neg = fam[(fam["mean_gain"] < 0) & (fam["family"] != "unknown")]
    if len(neg):
        s.text.append("**Flagged — families with a negative mean gain:** " + "; ".join(
            f"{x.setup} on {x.family} ({x.mean_gain:+.2f}"
            + (f", p_adj {er.format_p(x.p_adjusted)}" if ev.inferential else "") + ")" for x in neg.itertuples()) + ".")
    else:
        s.text.append("No language family has a negative mean gain.")
    s.tables.append(("Gain by language family", er.gain_table(ev, "family")))
    s.tables.append(("Gain by genus (described, not tested)", er.gain_table(ev, "genus")))
    s.tables.append(("Gain by script (described, not tested)", er.gain_table(ev, "script")))


def _render_resource_curves(s: Section, r: ResourceResult, metric_by_target: dict[str, str]) -> None:
    if r.no_class_languages:
        s.notes.append(f"No resource class for {', '.join(r.no_class_languages)}: left out of the curves, "
                       "shown as 'unknown' in the table.")
    known = r.known_classes
    if known.empty:
        s.notes.append("No language has a resource class: no resource curves.")
        return
    for model, g in known.groupby("model", sort=True):
        s.figures.append(Figure(
            f"resource_curves_{slug(model)}",
            f"Mean gain by Joshi et al. (2020) resource class ({model}); shaded: 95% bootstrap CI where available.",
            partial(figs.resource_curves, g.rename(columns={"setup": "series"}),
                    title=f"Gain by resource class — {model}", ylabel=gain_label(metric_by_target)),
        ))


def render_resource(s: Section, r: ResourceResult, metric_by_target: dict[str, str], ev: Evidence | None = None) -> None:
    if ev is None:
        _render_resource_curves(s, r, metric_by_target)
        s.tables.append(("Gain by resource class", round_frame(r.by_class)))
    else:
        _render_resource_points(s, r, ev, metric_by_target)
    if r.low_languages is not None:
        s.text.append(f"Low-resource subset (user list): {', '.join(r.low_languages)}.")
    else:
        s.text.append(f"Low-resource subset: Joshi classes {', '.join(map(str, r.low_classes))}; "
                      "high-resource: the others.")
    s.tables.append(("Gain on low- vs high-resource languages", round_frame(r.by_level) if ev is None
                     else er.gain_table(ev, "resource_level")))
    if len(r.flagged):
        s.text.append("**Flagged — helps high-resource but hurts low-resource languages:** " + "; ".join(
            f"{x.setup} on {x.target} (high {x.gain_high:+.2f}, low {x.gain_low:+.2f})" for x in r.flagged.itertuples())
            + ".")
    elif len(r.divergence):
        s.text.append("No setup helps high-resource languages while hurting low-resource ones.")
    else:
        s.notes.append("No languages with a known resource level on both sides: the high/low comparison is not possible.")
    s.tables.append(("High- vs low-resource gain per setup and target (flagged = helps high, hurts low)",
                     round_frame(r.divergence)))


def _render_resource_points(s: Section, r: ResourceResult, ev: Evidence, metric_by_target: dict[str, str]) -> None:
    if r.no_class_languages:
        s.notes.append(f"No resource class for {', '.join(r.no_class_languages)}: left out of the figure, "
                       "shown as 'unknown' in the table.")
    for model in sorted(ev.gains["resource_class"]["model"].unique()):
        frame = er.resource_points_frame(ev, model)
        if frame.empty:
            s.notes.append("No language has a resource class: no resource figure.")
            continue
        s.figures.append(Figure(
            f"resource_curves_{slug(model)}",
            f"Mean gain by Joshi et al. (2020) resource class ({model}): one point per setup and class"
            + (", bars: 95% seed-level CI" if ev.inferential else " (descriptive only: no intervals)")
            + "; n = languages in the class.",
            partial(figs.resource_points, frame, title=f"Gain by resource class — {model}",
                    ylabel=gain_label(metric_by_target)),
        ))
    s.tables.append(("Gain by resource class", er.gain_table(ev, "resource_class")))


def _scatter(name: str, caption: str, title: str, points: pd.DataFrame, measures: list[str], corr: pd.DataFrame,
             ylabel: str, ev: Evidence | None = None, key: str = "") -> Figure:
    extra: dict[str, Any] = {}
    if ev is not None:
        corr, extra = er.scatter_inputs(ev, key, measures)
    return Figure(name, caption, partial(figs.similarity_scatter, points, measures, corr, title=title, ylabel=ylabel,
                                         label_column="label", measure_labels=MEASURE_LABELS, **extra))


def _evidence_tables(s: Section, ev: Evidence | None, key: str) -> bool:
    """The section's correlations and binary-measure differences from the evidence (False: none)."""
    if ev is None:
        return False
    s.tables.append(("Rank correlation of each measure with the gain (at its unit; p corrected over the report)",
                     er.correlation_table(ev, key)))
    s.tables.append(("Binary measures: difference in mean gain (yes − no)", er.difference_table(ev, key)))
    return True


def render_task_similarity(s: Section, r: TaskSimilarityResult, opts: ReportOptions,
                           metric_by_target: dict[str, str], ev: Evidence | None = None) -> None:
    s.notes.extend(r.notes)
    if r.encoder_name:
        s.text.append(f"Embedding and sub-word measures use the encoder/tokenizer of '{r.encoder_name}' "
                      f"(mean pooling of the last layer, max 128 tokens).")
    s.text.append(f"Text samples: up to {opts.max_examples} English examples per task (training split when it has one, "
                  f"else its evaluation split; seeded sample, seed {opts.seed}): "
                  + ", ".join(f"{t} {n}" for t, n in r.text_sizes.items()) + ".")
    if r.task_emb_missing:
        s.notes.append("TaskEmb (Fisher) is read from its cache and is missing for "
                       + "; ".join(f"'{t}' ({why})" for t, why in sorted(r.task_emb_missing.items()))
                       + ". Compute it once with `xstilts report OUTPUT_DIR --compute-taskemb`.")
    s.text.append("Measures (each from its source):")
    s.text.extend(f"- `{m}`: {MEASURE_DOCS[m]}" for m in TASK_MEASURES)
    if r.points.empty:
        s.notes.append("No setup with a known intermediate task: no task-similarity points.")
        return
    if r.measures:
        s.figures.append(_scatter(
            "task_similarity_vs_gain",
            "Task similarity (x) against mean gain per (setup, target) (y), with Spearman/Kendall correlation and "
            "95% bootstrap CIs; points coloured by target, line: least-squares fit with its 95% band.",
            "Task similarity vs gain", r.points, r.measures, r.corr, gain_label(metric_by_target), ev, "task"))
    s.tables.append(("Similarity of each intermediate task to each target task", round_frame(r.table)))
    if not _evidence_tables(s, ev, "task"):
        s.tables.append(("Rank correlation of each measure with the gain (all languages)", round_frame(r.corr)))
    s.tables.append(("Rank correlation per language family" + ("" if ev is None else " (described, not tested)"),
                     round_frame(r.family_corr if ev is None else er.without_p(r.family_corr))))
    s.tables.append(("Points behind the scatter plots", round_frame(r.points)))
    if len(r.points) < 3:
        s.notes.append(f"Only {len(r.points)} (setup, target) point(s): correlations need at least 3 and are n/a.")


def render_language_similarity(s: Section, r: LanguageSimilarityResult, metric_by_target: dict[str, str],
                               ev: Evidence | None = None) -> None:
    s.notes.extend(r.notes)
    s.text.append(f"Parallel text: Tatoeba (up to {r.tatoeba_examples} sentence pairs per language with English). "
                  "Reference languages: English, plus the languages of a setup's intermediate training data.")
    s.text.extend(f"- `{m}`: {MEASURE_DOCS[m]}" for m in LANGUAGE_MEASURES)
    if r.measures:
        s.figures.append(_scatter(
            "language_similarity_vs_gain",
            "Similarity of each target language to the reference language(s) (x) against its gain averaged over "
            "targets (y), one point per (setup, language), coloured by setup; the correlation above each panel is "
            "at the language level (one point per language, gains averaged over setups).", "Language similarity vs gain",
            r.points, r.measures, r.corr, gain_label(metric_by_target), ev, "language"))
    for refs, tab in r.tables.items():
        s.tables.append((f"Language similarity to {', '.join(refs)}", round_frame(_with_language_names(tab, 1))))
    if not _evidence_tables(s, ev, "language"):
        s.tables.append(("Rank correlation of language similarity with the gain (overall and per family)",
                         round_frame(r.corr)))


def render_domain(s: Section, r: DomainResult, metric_by_target: dict[str, str], ev: Evidence | None = None) -> None:
    s.text.append("Domain similarity between each intermediate task's English text and each target's: "
                  "vocabulary-distribution divergence and embedding similarity; 'in-domain' pairs share the catalog's "
                  "text domain.")
    s.text.extend(f"- `{m}`: {MEASURE_DOCS[m]}" for m in DOMAIN_MEASURES)
    if len(r.domains):
        s.tables.append(("Text domain of each task (task catalog)", r.domains))
    if r.points.empty:
        s.notes.append("No (setup, target) points with a known intermediate task: no domain comparison.")
        return
    if r.measures:
        s.figures.append(_scatter(
            "domain_similarity_vs_gain",
            "Domain divergence / similarity of intermediate vs target text (x) against mean gain per (setup, target) (y).",
            "Domain similarity vs gain", r.points, r.measures, r.corr, gain_label(metric_by_target), ev, "domain"))
    if r.in_vs_out is not None:
        s.tables.append(("In-domain vs out-of-domain intermediate tasks (mean gain per (setup, target) pair)",
                         round_frame(r.in_vs_out)))
        if r.single_kind:
            s.notes.append(f"All pairs are {r.single_kind}: no in-/out-of-domain contrast is possible.")
    else:
        s.notes.append("The task catalog gives no domain for these tasks: no in-/out-of-domain comparison.")
    if not _evidence_tables(s, ev, "domain"):
        s.tables.append(("Rank correlation of domain measures with the gain", round_frame(r.corr)))


def render_settings(s: Section, r: SettingsResult | None) -> None:
    s.text.append("Every number above comes from the runs below: their state, seeds and the settings recorded in the "
                  "results store (data sizes, steps, learning rates, batch sizes).")
    if r is None:
        s.notes.append("The results store has no stage records: settings and data sizes are unknown.")
        return
    s.tables.append(("Stages", r.stages))
    if r.n_unfinished:
        s.notes.append(f"{r.n_unfinished} stage(s) are not finished (states: {', '.join(r.unfinished_states)}); "
                       "their results, if any, may be partial.")
    if len(r.targets):
        s.tables.append(("What each target's numbers are (split, metric, languages, seeds)", r.targets))


def render_sections(data: ReportData, opts: ReportOptions) -> list[Section]:
    """The report's sections (in :data:`SECTIONS` order) from its computed results."""
    sec = {sid: Section(sid, title) for sid, title in SECTIONS}
    mbt = data.overview.metric_by_target
    ev = getattr(data, "evidence", None)
    render_overview(sec["overview"], data.overview, opts, ev)
    for sid, why in data.skipped.items():
        sec[sid].notes.append(why)
    if data.gains is not None:
        render_gains(sec["gains"], data.gains, mbt, ev)
    if data.per_language is not None:
        render_per_language(sec["per-language"], data.per_language, mbt, ev)
    if data.families is not None:
        render_families(sec["families"], data.families, mbt, ev)
    if data.resource is not None:
        render_resource(sec["resource"], data.resource, mbt, ev)
    if data.task_similarity is not None:
        render_task_similarity(sec["task-similarity"], data.task_similarity, opts, mbt, ev)
    if data.language_similarity is not None:
        render_language_similarity(sec["language-similarity"], data.language_similarity, mbt, ev)
    if data.domain is not None:
        render_domain(sec["domain"], data.domain, mbt, ev)
    render_settings(sec["settings"], data.settings)
    return list(sec.values())


# --------------------------------------------------------------------------- HTML and Markdown

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.15em}
figure{margin:1.2em 0;text-align:center} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555;margin-top:.3em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.5em 0;font-size:.92em}
table{border-collapse:collapse;font-size:.8em;margin:.4em 0 1em 0} th,td{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
details{margin:.6em 0} summary{cursor:pointer;font-weight:600}
.tablewrap{overflow-x:auto} nav ul{columns:2} code{background:#f4f4f4;padding:0 3px}
"""


def _md_inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _html_table(df: pd.DataFrame) -> str:
    shown = df.map(lambda v: "n/a" if _missing(v) else v)
    return shown.to_html(index=False, border=0, escape=True, na_rep="n/a")


def hoist_common_note(df: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """A ``note`` column with one and the same text on every row becomes one line under the table."""
    if "note" not in df.columns or len(df) < 2:
        return df, None
    notes = df["note"].astype(str).unique()
    if len(notes) != 1 or not notes[0].strip() or notes[0] in ("nan", "None"):
        return df, None
    return df.drop(columns=["note"]), notes[0]


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(empty)_\n"

    def cell(v: Any) -> str:
        return "n/a" if _missing(v) else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


class _Document:
    """The HTML and Markdown of the report, built side by side."""

    def __init__(self, fig_dir: Path):
        self.fig_dir = fig_dir
        self.h: list[str] = []
        self.md: list[str] = []
        self.figures: list[Path] = []

    def text(self, paragraphs: list[str]) -> None:
        in_list = False
        for t in paragraphs:
            item = t.startswith("- ")
            if item != in_list:
                self.h.append("<ul>" if item else "</ul>")
                in_list = item
            self.h.append(f"<li>{_md_inline(t[2:])}</li>" if item else f"<p>{_md_inline(t)}</p>")
            self.md.append(t)
        if in_list:
            self.h.append("</ul>")
        self.md.append("")

    def note(self, n: str) -> None:
        self.h.append(f"<div class='note'><strong>Note:</strong> {_md_inline(n)}</div>")
        self.md += [f"> **Note:** {n}", ""]

    def figure(self, f: Figure) -> None:
        p = self.fig_dir / f"{f.name}.png"
        p.write_bytes(f.png)
        self.figures.append(p)
        b64 = base64.b64encode(f.png).decode("ascii")
        self.h.append(f"<figure><img alt='{html.escape(f.caption)}' src='data:image/png;base64,{b64}'>"
                      f"<figcaption>{_md_inline(f.caption)}</figcaption></figure>")
        self.md += [f"![{f.caption}](figures/{p.name})", "", f"*{f.caption}*", ""]

    def table(self, caption: str, df: pd.DataFrame) -> None:
        df, common = hoist_common_note(df)
        after = f"<p class='note'>Every row: {html.escape(common)}</p>" if common else ""
        self.h.append(f"<details{' open' if len(df) <= 12 else ''}><summary>{html.escape(caption)} ({len(df)} rows)"
                      f"</summary><div class='tablewrap'>{_html_table(df)}</div>{after}</details>")
        if len(df) > er.LONG_TABLE_ROWS:  # collapsed in Markdown too, and the full table as CSV beside it
            csv = self.fig_dir.parent / "tables" / f"{slug(caption)}.csv"
            csv.parent.mkdir(exist_ok=True)
            df.to_csv(csv, index=False)
            self.md += [f"<details><summary><b>{html.escape(caption)}</b> ({len(df)} rows; "
                        f"<a href='tables/{csv.name}'>CSV</a>)</summary>", "", _md_table(df), "</details>", ""]
        else:
            self.md += [f"**{caption}**", "", _md_table(df), ""]
        self.md += [f"_Every row: {common}_", ""] if common else []

    def section(self, s: Section) -> None:
        self.h.append(f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>")
        self.md += [f"## {s.title}", ""]
        self.text(s.text)
        for n in s.notes:
            self.note(n)
        for f in s.figures:
            self.figure(f)
        for caption, df in s.tables:
            self.table(caption, df)
        self.h.append("</section>")


def write_report(sections: list[Section], out: Path, *, n_metric_rows: int, n_stage_rows: int) -> tuple[Path, list[Path]]:
    """Write ``out`` (HTML), ``report.md`` and ``figures/*.png`` beside it; returns (markdown path, figures)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = out.parent / "figures"
    fig_dir.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    origin = f"Generated {stamp} by xstilts from {n_metric_rows} metric rows and {n_stage_rows} stage records."
    doc = _Document(fig_dir)
    doc.h += [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(TITLE)}</title>",
              f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(TITLE)}</h1>", f"<p>{origin}</p>",
              "<nav><strong>Contents</strong><ul>"]
    doc.h += [f"<li><a href='#{s.id}'>{html.escape(s.title)}</a></li>" for s in sections]
    doc.h.append("</ul></nav>")
    doc.md += [f"# {TITLE}", "", origin, ""]
    for s in sections:
        doc.section(s)
    doc.h.append("</body></html>")
    out.write_text("\n".join(doc.h), encoding="utf-8")
    md_path = out.parent / "report.md"
    md_path.write_text("\n".join(doc.md), encoding="utf-8")
    log.info("report written to %s (%d figures)", out, len(doc.figures))
    return md_path, doc.figures
