"""The report: every analysis on a results store, written as HTML + Markdown + PNG figures.

Two steps. :func:`compute_report` computes every section as a typed result
(:class:`ReportData`: DataFrames, values and notes; :mod:`xstilts.analysis.sections` and
:mod:`xstilts.analysis.similarity_sections`); :func:`xstilts.analysis.render.render_sections`
and :func:`~xstilts.analysis.render.write_report` turn those into text, tables and figures.

:func:`build_report` reads ``OUTPUT_DIR`` through the results store; :func:`report_from_frames`
does the same from plain metrics / stages DataFrames (the store's columns), which is what
tests and notebooks use. The HTML is self-contained (figures embedded as base64 PNG); the
Markdown links the PNGs written beside it under ``figures/``. Fisher TaskEmb is not computed
here: the report reads it from its cache (:mod:`xstilts.analysis.taskemb`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from xstilts.analysis.evidence import Evidence, compute_evidence
from xstilts.analysis.gains import compute_gains
from xstilts.analysis.groupings import LOW_RESOURCE_CLASSES
from xstilts.analysis.records import setup_tasks, stage_uses
from xstilts.analysis.render import SECTIONS, Section, render_sections, write_report
from xstilts.analysis.sections import (
    FamilyResult,
    GainsResult,
    Overview,
    PerLanguageResult,
    ReportInputs,
    ResourceResult,
    SettingsResult,
    compute_families,
    compute_gains_section,
    compute_overview,
    compute_per_language,
    compute_resource,
    compute_settings,
    prepare_inputs,
)
from xstilts.analysis.similarity import SimilarityCache
from xstilts.analysis.similarity_sections import (
    DomainResult,
    LanguageSimilarityResult,
    TaskSimilarityResult,
    compute_domain,
    compute_language_similarity,
    compute_task_similarity,
    load_encoder,
)
from xstilts.paths import ANALYSIS_DIR, REPORT_DIR, SIMILARITY_CACHE_FILE

log = logging.getLogger(__name__)

__all__ = ["SECTIONS", "ReportData", "ReportOptions", "ReportResult", "build_report", "compute_report",
           "report_from_frames", "restrict_to_spec"]

GAIN_SECTIONS = ("gains", "per-language", "families", "resource", "task-similarity", "language-similarity", "domain")
SIMILARITY_SECTIONS = ("task-similarity", "language-similarity", "domain")


@dataclass
class ReportOptions:
    """Knobs of the analyses. Defaults are what ``xstilts report`` uses."""

    n_boot: int = 10_000
    n_perm: int = 10_000
    corr_boot: int = 2_000
    confidence: float = 0.95
    seed: int = 0
    low_resource_classes: tuple[int, ...] = LOW_RESOURCE_CLASSES
    low_resource_languages: list[str] | None = None
    similarity: bool = True  # text-based and model-based similarity measures (need data)
    encoder: str | None = None  # model for TextEmb/tokenizer; default: the runs' model
    max_examples: int = 200  # per task, for similarity measures
    tatoeba_examples: int = 1000
    data_dir: str | None = None
    setup_tasks: dict[str, list[str]] | None = None  # setup -> its intermediate tasks (override)
    correction: str = "holm"  # multiple-testing correction over every test of the report: "holm" or "fdr_bh"


@dataclass
class ReportData:
    """Every section of the report, computed (None: not computed; ``skipped`` says why)."""

    overview: Overview
    gains: GainsResult | None = None
    per_language: PerLanguageResult | None = None
    families: FamilyResult | None = None
    resource: ResourceResult | None = None
    task_similarity: TaskSimilarityResult | None = None
    language_similarity: LanguageSimilarityResult | None = None
    domain: DomainResult | None = None
    settings: SettingsResult | None = None
    evidence: Evidence | None = None  # seed-level inference, corrected p-values, MDE (analysis.evidence)
    skipped: dict[str, str] = field(default_factory=dict)  # section id -> why it is empty


@dataclass
class ReportResult:
    """Where the report went, and what it had to say about missing inputs."""

    html: Path
    markdown: Path
    figures: list[Path]
    notes: list[str]
    sections: list[Section]
    data: ReportData | None = None


# --------------------------------------------------------------------------- entry points


def restrict_to_spec(metrics: pd.DataFrame, stages: pd.DataFrame, spec_path: str | Path,
                     output_dir: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the rows of the stages that ``spec_path``'s current plan holds, labelled with its
    setups and targets: a store that also holds an edited spec's old stages, or other specs'
    stages, then reports on this spec alone."""
    from xstilts.experiments import load_spec, plan_stages

    overrides = {"output_dir": str(output_dir)} if output_dir is not None else None
    spec = load_spec(Path(spec_path), overrides=overrides)
    ids = set(plan_stages(spec).stages)
    setups = set(spec.intermediate)
    targets = {t.task for t in spec.targets}

    def keep(df: pd.DataFrame) -> pd.DataFrame:
        if df.empty or "stage_id" not in df:
            return df
        m = df["stage_id"].isin(ids)
        if "setup" in df:
            m &= df["setup"].isna() | df["setup"].isin(setups)
        if "target" in df:
            m &= df["target"].isna() | df["target"].isin(targets)
        return df[m].reset_index(drop=True)

    return keep(metrics), keep(stages)


def build_report(output_dir: str | Path, out: str | Path | None = None, options: ReportOptions | None = None,
                 spec: str | Path | None = None, *, on_phase: PhaseCallback | None = None) -> ReportResult:
    """Analyse the results store of ``output_dir`` and write the report.

    ``out`` is the HTML path (default ``OUTPUT_DIR/report/report.html``); ``report.md`` and
    ``figures/`` go beside it. Similarity values are cached in ``OUTPUT_DIR/analysis/``.
    ``spec``: report only on the stages of that spec's current plan (see :func:`restrict_to_spec`).
    ``on_phase(done, total, name)`` is called as each phase starts (the CLI's progress bar).
    """
    from xstilts.analysis.store import load_frames

    output_dir = Path(output_dir)
    metrics, stages = load_frames(output_dir)
    if spec is not None:
        metrics, stages = restrict_to_spec(metrics, stages, spec, output_dir)
    out = Path(out) if out is not None else output_dir / REPORT_DIR / "report.html"
    return report_from_frames(metrics, stages, out, options=options, output_dir=output_dir, on_phase=on_phase)


def report_from_frames(
    metrics: pd.DataFrame,
    stages: pd.DataFrame | None,
    out: str | Path,
    *,
    options: ReportOptions | None = None,
    output_dir: str | Path | None = None,
    on_phase: PhaseCallback | None = None,
) -> ReportResult:
    """Run every analysis on store-shaped frames and write HTML, Markdown and figures."""
    opts = options or ReportOptions()
    stages = stages if stages is not None else pd.DataFrame()
    phase = _Phases(on_phase, total=len(_COMPUTE_PHASES) + 2)
    data = compute_report(metrics, stages, opts, output_dir=output_dir, on_phase=phase)
    phase("rendering")
    sections = render_sections(data, opts)
    phase("writing HTML, Markdown and figures")
    md, figures = write_report(sections, Path(out), n_metric_rows=len(metrics), n_stage_rows=len(stages))
    notes = [f"{s.title}: {n}" for s in sections for n in s.notes]
    return ReportResult(html=Path(out), markdown=md, figures=figures, notes=notes, sections=sections, data=data)


# --------------------------------------------------------------------------- computing


def compute_report(metrics: pd.DataFrame, stages: pd.DataFrame, opts: ReportOptions,
                   *, output_dir: str | Path | None = None, on_phase: Callable[[str], None] | None = None) -> ReportData:
    """Every section of the report as typed results (no rendering). ``on_phase(name)`` is told
    as each of :data:`_COMPUTE_PHASES` starts."""
    phase = on_phase or (lambda name: None)
    phase("gains")
    gt = compute_gains(metrics)
    inp = prepare_inputs(metrics, stages, stage_uses(stages, output_dir), gt, opts)
    data = ReportData(overview=compute_overview(inp), settings=compute_settings(inp))
    if gt.gains.empty:
        msg = "No gains could be computed (see the notes above), so the gain analyses are empty."
        data.skipped = dict.fromkeys(GAIN_SECTIONS, msg)
        return data
    data.gains = compute_gains_section(inp)
    data.per_language = compute_per_language(inp)
    phase("families and resource levels")
    data.families = compute_families(inp)
    data.resource = compute_resource(inp)
    phase("similarity (loads data and an encoder)")
    if opts.similarity:
        _compute_similarity(data, inp, output_dir)
    else:
        data.skipped = dict.fromkeys(SIMILARITY_SECTIONS, "Similarity analyses were turned off (--no-similarity).")
    phase("statistics")
    data.evidence = compute_evidence(inp, data, output_dir=output_dir)
    return data


#: the phases :func:`compute_report` announces, in order
_COMPUTE_PHASES = ("gains", "families and resource levels", "similarity (loads data and an encoder)", "statistics")
PhaseCallback = Callable[[int, int, str], None]


class _Phases:
    """Counts phases for an ``on_phase(done, total, name)`` callback."""

    def __init__(self, callback: PhaseCallback | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def __call__(self, name: str) -> None:
        if self.callback is not None:
            self.callback(self.done, self.total, name)
        self.done += 1


def _compute_similarity(data: ReportData, inp: ReportInputs, output_dir: str | Path | None) -> None:
    """The task, language and domain similarity sections (values cached under OUTPUT_DIR/analysis/)."""
    assert data.gains is not None
    cache_file = Path(output_dir) / ANALYSIS_DIR / SIMILARITY_CACHE_FILE if output_dir is not None else None
    cache = SimilarityCache(cache_file)
    tasks_by_setup, notes = setup_tasks(inp.records, sorted(inp.gt.gains["setup"].unique()), inp.options.setup_tasks)
    encoder = load_encoder(inp, notes)
    data.task_similarity = compute_task_similarity(inp, data.gains.per_target, tasks_by_setup, notes, encoder, cache)
    data.language_similarity = compute_language_similarity(inp, encoder)
    data.domain = compute_domain(inp, data.task_similarity)
    cache.save()
