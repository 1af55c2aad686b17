"""The report: every analysis on a results store, written as HTML + Markdown + PNG figures.

:func:`build_report` reads ``OUTPUT_DIR`` through the results store; :func:`report_from_frames`
does the same from plain metrics / stages DataFrames (the store's columns), which is what
tests and notebooks use. The HTML is self-contained (figures embedded as base64 PNG); the
Markdown links the PNGs written beside it under ``figures/``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xstilts.analysis import figures as figs
from xstilts.analysis.gains import BASELINE, GainTable, compute_gains, per_language_gains, summarize_gains
from xstilts.analysis.groupings import (
    LOW_RESOURCE_CLASSES,
    UNKNOWN,
    add_resource_level,
    attach_language_metadata,
    flag_high_low_divergence,
    flag_negative_groups,
    gains_by_group,
)
from xstilts.analysis.metadata import language_info, task_info
from xstilts.analysis.similarity import (
    MEASURE_DOCS,
    MEASURE_LABELS,
    SimilarityCache,
    correlate_with_gains,
    fisher_task_embedding,
    language_similarity_table,
    load_encoder_for_analysis,
    load_task_texts,
    model_identity,
    task_similarity_table,
)
from xstilts.errors import XStiltsError

log = logging.getLogger(__name__)

TASK_MEASURES = ["text_emb", "task_emb", "same_format", "same_label_space", "subword_jaccard", "subword_weighted_jaccard"]
LANGUAGE_MEASURES = ["subword_jaccard", "subword_weighted_jaccard", "lexical_overlap", "same_family", "same_script"]
DOMAIN_MEASURES = ["word_js", "subword_js", "text_emb", "same_domain"]
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
    task_emb: bool = False  # Fisher TaskEmb (needs stage model dirs; slow)
    max_examples: int = 200  # per task, for similarity measures
    tatoeba_examples: int = 1000
    data_dir: str | None = None
    setup_tasks: dict[str, list[str]] | None = None  # setup -> its intermediate tasks (override)


@dataclass
class Figure:
    name: str
    caption: str
    png: bytes


@dataclass
class Section:
    id: str
    title: str
    text: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


@dataclass
class ReportResult:
    """Where the report went, and what it had to say about missing inputs."""

    html: Path
    markdown: Path
    figures: list[Path]
    notes: list[str]
    sections: list[Section]


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
                 spec: str | Path | None = None) -> ReportResult:
    """Analyse the results store of ``output_dir`` and write the report.

    ``out`` is the HTML path (default ``OUTPUT_DIR/report/report.html``); ``report.md`` and
    ``figures/`` go beside it. Similarity values are cached in ``OUTPUT_DIR/analysis/``.
    ``spec``: report only on the stages of that spec's current plan (see :func:`restrict_to_spec`).
    """
    from xstilts.analysis.store import load_frames

    output_dir = Path(output_dir)
    metrics, stages = load_frames(output_dir)
    if spec is not None:
        metrics, stages = restrict_to_spec(metrics, stages, spec, output_dir)
    out = Path(out) if out is not None else output_dir / "report" / "report.html"
    return report_from_frames(metrics, stages, out, options=options, output_dir=output_dir)


def report_from_frames(
    metrics: pd.DataFrame,
    stages: pd.DataFrame | None,
    out: str | Path,
    *,
    options: ReportOptions | None = None,
    output_dir: str | Path | None = None,
) -> ReportResult:
    """Run every analysis on store-shaped frames and write HTML, Markdown and figures."""
    opts = options or ReportOptions()
    out = Path(out)
    stages = stages if stages is not None else pd.DataFrame()
    cache = SimilarityCache(Path(output_dir) / "analysis" / "similarity_cache.json" if output_dir else None)
    sections = _analyse(metrics, stages, opts, cache, output_dir)
    cache.save()
    return _write(sections, out, metrics, stages, opts)


# --------------------------------------------------------------------------- analysis


def _metric_unit(gt: GainTable, targets: list[str] | None = None) -> str:
    ms = sorted({gt.metric_by_target[t] for t in (targets or gt.metric_by_target) if t in gt.metric_by_target})
    names = {"f1": "F1", "accuracy": "accuracy", "exact_match": "exact match"}
    return "/".join(names.get(m, m) for m in ms) or "score"


def _ylabel(gt: GainTable, targets: list[str] | None = None) -> str:
    return f"gain over baseline (points of {_metric_unit(gt, targets)})"


def _lang_label(code: str) -> str:
    info = language_info(code)
    return info.label if info.known else f"{code} (no metadata)"


def _analyse(metrics: pd.DataFrame, stages: pd.DataFrame, opts: ReportOptions, cache: SimilarityCache,
             output_dir: str | Path | None) -> list[Section]:
    sec = {sid: Section(sid, title) for sid, title in SECTIONS}
    gt = compute_gains(metrics)
    gains = gt.gains
    kw = dict(n_boot=opts.n_boot, n_perm=opts.n_perm, confidence=opts.confidence, seed=opts.seed)
    overview = sec["overview"]
    _overview(overview, metrics, gt, opts)
    if gains.empty:
        msg = "No gains could be computed (see the notes above), so the gain analyses are empty."
        for sid in ("gains", "per-language", "families", "resource", "task-similarity", "language-similarity", "domain"):
            sec[sid].notes.append(msg)
        _settings(sec["settings"], stages, gt)
        return list(sec.values())

    per_target = summarize_gains(gains, ("model", "setup", "target"), **kw)
    per_setup = summarize_gains(gains, ("model", "setup"), **kw)
    overall = summarize_gains(gains, ("model",), **kw)
    _gains_section(sec["gains"], gt, per_target, per_setup, overall, opts)

    meta, meta_notes = attach_language_metadata(gains)
    plang = per_language_gains(gains)
    _per_language(sec["per-language"], gt, plang, meta_notes)
    _families(sec["families"], gt, meta, meta_notes, kw)
    _resource(sec["resource"], gt, meta, opts, kw)

    setup_tasks, st_notes = infer_setup_tasks(stages, sorted(gains["setup"].unique()), opts.setup_tasks)
    if opts.similarity:
        _similarity_sections(sec, gt, per_target, meta, setup_tasks, st_notes, stages, opts, cache, output_dir)
    else:
        for sid in ("task-similarity", "language-similarity", "domain"):
            sec[sid].notes.append("Similarity analyses were turned off (--no-similarity).")
    _settings(sec["settings"], stages, gt)
    return list(sec.values())


def _overview(s: Section, metrics: pd.DataFrame, gt: GainTable, opts: ReportOptions) -> None:
    scores = gt.scores
    models = sorted(scores["model"].astype(str).unique()) if len(scores) else []
    setups = sorted(scores["setup"].astype(str).unique()) if len(scores) else []
    targets = sorted(scores["target"].astype(str).unique()) if len(scores) else []
    seeds = sorted(scores["seed"].unique().tolist()) if len(scores) else []
    langs = sorted(scores["language"].astype(str).unique()) if len(scores) else []
    s.text.append(
        f"Model(s): {', '.join(models) or 'none'}. Intermediate setups: {', '.join(x for x in setups if x != gt.baseline) or 'none'} "
        f"(compared with '{gt.baseline}', no intermediate training). Targets: {', '.join(targets) or 'none'}. "
        f"Languages: {len(langs)}. Seeds: {', '.join(map(str, seeds)) or 'none'}."
    )
    s.text.append(
        "A gain is a run's zero-shot score minus the baseline's score for the same model, target, language and seed, "
        "in points of the target's primary metric (" +
        ", ".join(f"{t}: {gt.metric_by_target[t]} on {gt.split_by_target[t]}" for t in targets) + "). "
        "Averages weigh languages equally within a target and targets equally within a setup. "
        f"Uncertainty: standard deviation across seeds, {int(opts.confidence * 100)}% percentile-bootstrap CI "
        f"({opts.n_boot:,} resamples of seeds and languages, numpy seed {opts.seed}), and one-sided paired tests "
        "over (language, seed) cells that the setup beats the baseline: Wilcoxon signed-rank (scipy) and a sign-flip "
        f"permutation test (exact up to 16 cells, else {opts.n_perm:,} permutations)."
    )
    s.notes.extend(gt.notes)
    if len(seeds) == 1:
        s.notes.append(f"Only one seed ({seeds[0]}): standard deviations and confidence intervals across seeds cannot "
                       "be computed and are shown as n/a; run more seeds for them.")
    if len(gt.missing_baseline):
        s.tables.append(("Results without a matching baseline run (left out of the gains)", gt.missing_baseline))


def _gains_section(s: Section, gt: GainTable, per_target: pd.DataFrame, per_setup: pd.DataFrame,
                   overall: pd.DataFrame, opts: ReportOptions) -> None:
    s.text.append("The paper's main figure: mean gain of each intermediate setup (rows) on each target (columns); "
                  "the last column averages the targets. Blue = better than the baseline, red = worse.")
    for model, pt in per_target.groupby("model", sort=True):
        mat = pt.pivot(index="setup", columns="target", values="mean_gain")
        ps = per_setup[per_setup["model"] == model].set_index("setup")["mean_gain"]
        cols = list(mat.columns)
        mat.columns = [f"{t}\n({gt.metric_by_target.get(t, '?')})" for t in cols]
        mat["average"] = ps.reindex(mat.index)
        ann = mat.map(lambda v: figs._fmt(v))
        ci = pt.pivot(index="setup", columns="target", values="ci_low")
        if ci.notna().any().any():
            lo = pt.pivot(index="setup", columns="target", values="ci_low")[cols]
            hi = pt.pivot(index="setup", columns="target", values="ci_high")[cols]
            for j in range(len(cols)):
                for i in range(len(mat.index)):
                    if np.isfinite(lo.iat[i, j]):
                        ann.iat[i, j] = f"{mat.iat[i, j]:+.1f}\n[{lo.iat[i, j]:+.1f}, {hi.iat[i, j]:+.1f}]"
        s.figures.append(Figure(
            f"gain_heatmap_{_slug(model)}",
            f"Mean gain over the baseline, intermediate setup × target ({model}). Cells: mean [95% CI] in points "
            "of each target's primary metric; 'average' weighs targets equally.",
            figs.gain_heatmap(mat, annotations=ann, title=f"Gain over the no-intermediate baseline — {model}",
                              xlabel="target task (primary metric)", ylabel="intermediate setup",
                              cbar_label=_ylabel(gt)),
        ))
    s.tables.append(("Gain per setup and target", _round(per_target)))
    s.tables.append(("Gain per setup (targets weighed equally)", _round(per_setup)))
    s.tables.append(("Gain over all setups and targets", _round(overall)))
    sig = per_setup[(per_setup["wilcoxon_p"] < 0.05) & (per_setup["sign_flip_p"] < 0.05)]
    if len(sig):
        s.text.append("Setups that beat the baseline at p < 0.05 on both paired tests: "
                      + ", ".join(f"{r.setup} ({r.mean_gain:+.2f})" for r in sig.itertuples()) + ".")
    else:
        s.text.append("No setup beats the baseline at p < 0.05 on both paired tests.")


def _per_language(s: Section, gt: GainTable, plang: pd.DataFrame, meta_notes: list[str]) -> None:
    s.notes.extend(n for n in meta_notes if n.startswith("no metadata"))
    for (model, target), g in plang.groupby(["model", "target"], sort=True):
        g = g.copy()
        order_codes = g.groupby("language")["mean_gain"].mean().sort_values(ascending=False).index.tolist()
        g["language_label"] = g["language"].map(_lang_label)
        order = [_lang_label(c) for c in order_codes]
        s.figures.append(Figure(
            f"per_language_{_slug(model)}_{_slug(target)}",
            f"Gain per language on {target} ({model}), sorted by mean gain; error bars: std across seeds"
            + (" (single seed: none)" if g["n_seeds"].max() < 2 else "") + ".",
            figs.grouped_bars(g, category="language_label", series="setup", value="mean_gain", error="std_seeds",
                              title=f"{target}: gain over baseline per language — {model}",
                              xlabel="target language", ylabel=_ylabel(gt, [target]), category_order=order),
        ))
    t = plang.copy()
    t.insert(4, "language_name", t["language"].map(lambda c: language_info(c).name or "(no metadata)"))
    s.tables.append(("Gain per language (mean and std across seeds)", _round(t)))


def _families(s: Section, gt: GainTable, meta: pd.DataFrame, meta_notes: list[str], kw: dict) -> None:
    s.notes.extend(n for n in meta_notes)
    fam = gains_by_group(meta, "family", **kw)
    counts = meta.assign(family=meta["family"].fillna(UNKNOWN)).groupby("family")["language"].nunique()
    for model, g in fam.groupby("model", sort=True):
        mat = g.pivot(index="family", columns="setup", values="mean_gain")
        mat.index = [f"{f} ({counts.get(f, 0)} lang.)" for f in mat.index]
        s.figures.append(Figure(
            f"family_heatmap_{_slug(model)}",
            f"Mean gain by language family × intermediate setup ({model}), over all targets; "
            "languages weigh equally within a target.",
            figs.gain_heatmap(mat, title=f"Gain by language family — {model}", xlabel="intermediate setup",
                              ylabel="language family (number of languages)", cbar_label=_ylabel(gt)),
        ))
    neg = flag_negative_groups(fam, "family")
    if len(neg):
        s.text.append("**Flagged — families with a negative mean gain:** " + "; ".join(
            f"{r.setup} on {r.family} ({r.mean_gain:+.2f}" + (", CI below 0" if r.significant else "") + ")"
            for r in neg.itertuples()) + ".")
        s.tables.append(("Flagged: families where the gain is negative", _round(neg)))
    else:
        s.text.append("No language family has a negative mean gain.")
    s.tables.append(("Gain by language family", _round(fam)))
    for grp in ("genus", "script"):
        s.tables.append((f"Gain by {grp}", _round(gains_by_group(meta, grp, **kw))))


def _resource(s: Section, gt: GainTable, meta: pd.DataFrame, opts: ReportOptions, kw: dict) -> None:
    rc = gains_by_group(meta, "resource_class", **kw)
    known = rc[rc["resource_class"] != UNKNOWN].copy()
    if len(rc) and (rc["resource_class"] == UNKNOWN).any():
        missing = sorted(meta[meta["resource_class"].isna()]["language"].unique())
        s.notes.append(f"No resource class for {', '.join(missing)}: left out of the curves, shown as '{UNKNOWN}' in the table.")
    if len(known):
        known["resource_class"] = known["resource_class"].astype(float).astype(int)
        for model, g in known.groupby("model", sort=True):
            g = g.rename(columns={"setup": "series"})
            s.figures.append(Figure(
                f"resource_curves_{_slug(model)}",
                f"Mean gain by Joshi et al. (2020) resource class ({model}); shaded: 95% bootstrap CI where available.",
                figs.resource_curves(g, title=f"Gain by resource class — {model}", ylabel=_ylabel(gt)),
            ))
    else:
        s.notes.append("No language has a resource class: no resource curves.")
    s.tables.append(("Gain by resource class", _round(rc)))
    levels = add_resource_level(meta, low_classes=opts.low_resource_classes, low_languages=opts.low_resource_languages)
    if opts.low_resource_languages is not None:
        s.text.append(f"Low-resource subset (user list): {', '.join(opts.low_resource_languages)}.")
    else:
        s.text.append(f"Low-resource subset: Joshi classes {', '.join(map(str, opts.low_resource_classes))}; "
                      "high-resource: the others.")
    s.tables.append(("Gain on low- vs high-resource languages", _round(gains_by_group(levels, "resource_level", **kw))))
    div = flag_high_low_divergence(levels, per_target=True)
    flagged = div[div["flagged"]]
    if len(flagged):
        s.text.append("**Flagged — helps high-resource but hurts low-resource languages:** " + "; ".join(
            f"{r.setup} on {r.target} (high {r.gain_high:+.2f}, low {r.gain_low:+.2f})" for r in flagged.itertuples()) + ".")
    elif len(div):
        s.text.append("No setup helps high-resource languages while hurting low-resource ones.")
    else:
        s.notes.append("No languages with a known resource level on both sides: the high/low comparison is not possible.")
    s.tables.append(("High- vs low-resource gain per setup and target (flagged = helps high, hurts low)", _round(div)))


def infer_setup_tasks(stages: pd.DataFrame, setups: list[str],
                      override: dict[str, list[str]] | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """The intermediate task(s) of each setup: from ``override``, the stages' settings, or the setup's name.

    Settings are searched for a ``tasks`` list (of names or ``{"task": name}`` dicts) or a
    ``task`` key of the setup's non-target stages. A setup named like a catalog task is that task.
    """
    out: dict[str, list[str]] = {}
    notes = []
    for setup in setups:
        if override and setup in override:
            out[setup] = list(override[setup])
            continue
        found: list[str] = []
        if len(stages) and "setup" in stages.columns:
            rows = stages[(stages["setup"] == setup)]
            if "kind" in rows.columns:
                rows = rows[~rows["kind"].astype(str).str.contains("target|eval", regex=True)]
            for raw in rows.get("settings", []):
                for t in _tasks_in_settings(_parse_settings(raw)):
                    if t not in found:
                        found.append(t)
        if not found and task_info(setup).known:
            found = [setup]
        if found:
            out[setup] = found
        else:
            notes.append(f"setup '{setup}': its intermediate task is unknown (not in the stage settings, "
                         "not a catalog task name), so it has no task similarity values.")
    return out, notes


def _parse_settings(raw: Any) -> dict:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.strip():
        try:
            val = json.loads(raw)
            return val if isinstance(val, dict) else {}
        except json.JSONDecodeError:
            return {}
    return {}


def _tasks_in_settings(settings: dict) -> list[str]:
    tasks = settings.get("tasks")
    out = []
    if isinstance(tasks, list):
        for t in tasks:
            name = t.get("task") if isinstance(t, dict) else t
            if isinstance(name, str):
                out.append(name)
    elif isinstance(settings.get("task"), str):
        out.append(settings["task"])
    for sub in ("train", "config", "train_config"):
        if not out and isinstance(settings.get(sub), dict):
            out = _tasks_in_settings(settings[sub])
    return out


def _languages_in_settings(settings: dict) -> list[str]:
    langs: list[str] = []
    tasks = settings.get("tasks")
    if isinstance(tasks, list):
        for t in tasks:
            if isinstance(t, dict) and isinstance(t.get("languages"), list):
                langs += [str(x) for x in t["languages"]]
    for sub in ("train", "config", "train_config"):
        if not langs and isinstance(settings.get(sub), dict):
            langs = _languages_in_settings(settings[sub])
    return langs


def _similarity_sections(sec: dict[str, Section], gt: GainTable, per_target: pd.DataFrame, meta: pd.DataFrame,
                         setup_tasks: dict[str, list[str]], st_notes: list[str], stages: pd.DataFrame,
                         opts: ReportOptions, cache: SimilarityCache, output_dir: str | Path | None) -> None:
    ts, ls, ds = sec["task-similarity"], sec["language-similarity"], sec["domain"]
    ts.notes.extend(st_notes)
    models = sorted(gt.gains["model"].astype(str).unique())
    encoder_name = opts.encoder or (models[0] if len(models) == 1 else None)
    encoder = tokenizer = None
    enc_id = ""
    if encoder_name is None:
        ts.notes.append("Several models in the results and no --encoder given: embedding and sub-word measures skipped.")
    else:
        try:
            model, tokenizer = load_encoder_for_analysis(encoder_name)
            encoder = (model, tokenizer)
            enc_id = model_identity(encoder_name)
            ts.text.append(f"Embedding and sub-word measures use the encoder/tokenizer of '{encoder_name}' "
                           f"(mean pooling of the last layer, max 128 tokens).")
        except (XStiltsError, ImportError, OSError) as exc:
            ts.notes.append(f"Could not load encoder '{encoder_name}' ({exc}): TextEmb and sub-word measures skipped.")
    tasks_needed = sorted({t for ts_ in setup_tasks.values() for t in ts_} | set(gt.gains["target"].astype(str)))
    texts: dict[str, list[str]] = {}
    for t in tasks_needed:
        try:
            texts[t] = load_task_texts(t, max_examples=opts.max_examples, seed=opts.seed, data_dir=opts.data_dir)
        except (XStiltsError, ImportError, OSError) as exc:
            ts.notes.append(f"No English text for task '{t}' ({_first_sentence(exc)}); its text measures are n/a.")
    sample_id = f"en|n={opts.max_examples}|seed={opts.seed}|data={opts.data_dir or ''}"
    ts.text.append(f"Text samples: up to {opts.max_examples} English examples per task (training split when it has one, "
                   f"else its evaluation split; seeded sample, seed {opts.seed}): "
                   + ", ".join(f"{t} {len(v)}" for t, v in sorted(texts.items())) + ".")
    fisher = _fisher_vectors(setup_tasks, gt, stages, opts, output_dir, ts) if opts.task_emb else None
    if not opts.task_emb:
        ts.notes.append("TaskEmb (Fisher) not computed: it needs each task's fine-tuned stage model; "
                        "run `xstilts report --task-emb` to compute it.")
    pairs = sorted({(it, tg) for s_, its in setup_tasks.items() for it in its for tg in gt.gains["target"].astype(str).unique()})
    table = task_similarity_table(pairs, texts, tokenizer=tokenizer, encoder=encoder, encoder_id=enc_id,
                                  fisher=fisher, cache=cache, sample_id=sample_id)
    # one point per (model, setup, target): measures averaged over the setup's intermediate tasks
    pts = []
    for r in per_target.itertuples():
        its = setup_tasks.get(r.setup)
        if not its:
            continue
        sub = table[(table["intermediate"].isin(its)) & (table["target"] == r.target)]
        vals = sub.drop(columns=["intermediate", "target"]).mean(numeric_only=True).to_dict() if len(sub) else {}
        pts.append({"model": r.model, "setup": r.setup, "target": r.target, "mean_gain": r.mean_gain,
                    "label": f"{r.setup}→{r.target}", **vals})
    points = pd.DataFrame(pts)
    ts.text.append("Measures (each from its source):")
    ts.text.extend(f"- `{m}`: {MEASURE_DOCS[m]}" for m in TASK_MEASURES)
    if len(points):
        measures = [m for m in TASK_MEASURES if m in points.columns and points[m].notna().sum() >= 1]
        corr = correlate_with_gains(points, measures, n_boot=opts.corr_boot, seed=opts.seed)
        # per language family: per (setup, target, family) gains against the same task measures
        fam_pts = _family_points(gt.gains, meta, points, measures)
        fam_corr = correlate_with_gains(fam_pts, measures, by="family", n_boot=opts.corr_boot, seed=opts.seed)
        fam_corr = fam_corr[fam_corr["group"] != "all"]
        if measures:
            ts.figures.append(Figure(
                "task_similarity_vs_gain",
                "Task similarity (x) against mean gain per (setup, target) (y), with Spearman/Kendall correlation and 95% bootstrap CIs.",
                figs.similarity_scatter(points, measures, corr, title="Task similarity vs gain", ylabel=_ylabel(gt),
                                        label_column="label", measure_labels=MEASURE_LABELS),
            ))
        ts.tables.append(("Similarity of each intermediate task to each target task", _round(table)))
        ts.tables.append(("Rank correlation of each measure with the gain (all languages)", _round(corr)))
        ts.tables.append(("Rank correlation per language family", _round(fam_corr)))
        ts.tables.append(("Points behind the scatter plots", _round(points)))
        if len(points) < 3:
            ts.notes.append(f"Only {len(points)} (setup, target) point(s): correlations need at least 3 and are n/a.")
    else:
        ts.notes.append("No setup with a known intermediate task: no task-similarity points.")

    _language_similarity(ls, gt, meta, setup_tasks, stages, tokenizer, opts)
    _domain(ds, gt, table, points, opts)


def _family_points(gains: pd.DataFrame, meta: pd.DataFrame, points: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    if points.empty:
        return pd.DataFrame(columns=["family", "mean_gain", *measures])
    m = meta.assign(family=meta["family"].fillna(UNKNOWN))
    fam = m.groupby(["model", "setup", "target", "family"])["gain"].mean().rename("mean_gain").reset_index()
    return fam.merge(points.drop(columns=["mean_gain", "label"]), on=["model", "setup", "target"], how="inner")


def _fisher_vectors(setup_tasks, gt, stages, opts, output_dir, s: Section) -> dict[str, np.ndarray] | None:
    dirs = find_task_model_dirs(stages, setup_tasks, output_dir)
    needed = sorted({t for ts_ in setup_tasks.values() for t in ts_} | set(gt.gains["target"].astype(str)))
    out = {}
    for t in needed:
        d = dirs.get(t)
        if d is None:
            s.notes.append(f"TaskEmb: no fine-tuned model directory found for task '{t}'.")
            continue
        try:
            out[t] = fisher_task_embedding(d, t, max_examples=min(opts.max_examples, 100), seed=opts.seed,
                                           data_dir=opts.data_dir)
        except (XStiltsError, ImportError, OSError, ValueError, KeyError) as exc:
            s.notes.append(f"TaskEmb for '{t}' failed ({type(exc).__name__}: {exc}).")
    return out


def find_task_model_dirs(stages: pd.DataFrame, setup_tasks: dict[str, list[str]],
                         output_dir: str | Path | None) -> dict[str, Path]:
    """A model dir fine-tuned on each task: single-task intermediate stages and baseline target stages.

    Looks for ``model_dir`` / ``output_dir`` in a stage's settings, else
    ``OUTPUT_DIR/stages/<stage_id>/model``; keeps dirs that hold ``xstilts_model.json``.
    """
    found: dict[str, Path] = {}
    if stages.empty:
        return found
    for r in stages.to_dict("records"):
        settings = _parse_settings(r.get("settings"))
        task = None
        kind = str(r.get("kind", ""))
        if "target" in kind and r.get("setup") == BASELINE:
            task = r.get("target")
        elif "target" not in kind and len(setup_tasks.get(str(r.get("setup")), [])) == 1:
            task = setup_tasks[str(r.get("setup"))][0]
        if not task or task in found:
            continue
        candidates = []
        for key in ("model_dir", "output_dir"):
            if isinstance(settings.get(key), str):
                candidates += [Path(settings[key]), Path(settings[key]) / "model"]
        if output_dir is not None:
            candidates.append(Path(output_dir) / "stages" / str(r.get("stage_id")) / "model")
        for c in candidates:
            if (c / "xstilts_model.json").is_file():
                found[str(task)] = c
                break
    return found


def _language_similarity(s: Section, gt: GainTable, meta: pd.DataFrame, setup_tasks, stages: pd.DataFrame,
                         tokenizer, opts: ReportOptions) -> None:
    langs = sorted(gt.gains["language"].astype(str).unique())
    parallel: dict[str, tuple[list[str], list[str]]] = {}
    refs_by_setup: dict[str, list[str]] = {}
    for setup in sorted(gt.gains["setup"].unique()):
        refs = ["en"]
        if len(stages) and "setup" in stages.columns:
            for raw in stages[stages["setup"] == setup].get("settings", []):
                for lang in _languages_in_settings(_parse_settings(raw)):
                    if lang not in refs:
                        refs.append(lang)
        refs_by_setup[setup] = refs
    missing = []
    try:
        from xstilts.tasks.loading import load_examples
        from xstilts.tasks.catalog import get_task

        spec = get_task("tatoeba")
        for lang in sorted(set(langs) | {r for v in refs_by_setup.values() for r in v}):
            if lang == "en":
                continue
            try:
                ex = load_examples(spec, lang, spec.eval_split, data_dir=opts.data_dir,
                                   max_examples=opts.tatoeba_examples, seed=opts.seed)
                parallel[lang] = ([e.source for e in ex], [e.target for e in ex])
            except (XStiltsError, OSError) as exc:
                missing.append(lang)
                log.debug("no tatoeba for %s: %s", lang, exc)
    except (ImportError, XStiltsError) as exc:
        s.notes.append(f"Tatoeba parallel text is not available ({_first_sentence(exc)}): overlap measures are n/a.")
    if missing:
        s.notes.append(f"No Tatoeba parallel text for {', '.join(missing)}: their overlap measures are n/a.")
    if tokenizer is None:
        s.notes.append("No tokenizer loaded: sub-word overlap measures are n/a.")
    s.text.append(f"Parallel text: Tatoeba (up to {opts.tatoeba_examples} sentence pairs per language with English). "
                  "Reference languages: English, plus the languages of a setup's intermediate training data.")
    s.text.extend(f"- `{m}`: {MEASURE_DOCS[m]}" for m in LANGUAGE_MEASURES)
    tables = {}
    for refs in {tuple(v) for v in refs_by_setup.values()}:
        tables[refs] = language_similarity_table(langs, parallel, tokenizer=tokenizer, references=list(refs))
    pl = gt.gains.groupby(["model", "setup", "language"])["gain"].mean().rename("mean_gain").reset_index()
    pts = []
    for r in pl.itertuples():
        tab = tables[tuple(refs_by_setup[r.setup])].set_index("language")
        vals = tab.loc[r.language].to_dict() if r.language in tab.index else {}
        pts.append({"model": r.model, "setup": r.setup, "language": r.language, "mean_gain": r.mean_gain,
                    "label": r.language, **vals})
    points = pd.DataFrame(pts)
    fam = meta.drop_duplicates("language").set_index("language")["family"]
    points["family"] = points["language"].map(fam).fillna(UNKNOWN)
    measures = [m for m in LANGUAGE_MEASURES if m in points.columns and points[m].notna().any()]
    corr = correlate_with_gains(points, measures, by="family", n_boot=opts.corr_boot, seed=opts.seed)
    if measures:
        s.figures.append(Figure(
            "language_similarity_vs_gain",
            "Similarity of each target language to the reference language(s) (x) against its gain averaged over targets (y), "
            "one point per (setup, language).",
            figs.similarity_scatter(points, measures, corr, title="Language similarity vs gain", ylabel=_ylabel(gt),
                                    label_column="label", measure_labels=MEASURE_LABELS),
        ))
    for refs, tab in sorted(tables.items()):
        t = tab.copy()
        t.insert(1, "language_name", t["language"].map(lambda c: language_info(c).name or "(no metadata)"))
        s.tables.append((f"Language similarity to {', '.join(refs)}", _round(t)))
    s.tables.append(("Rank correlation of language similarity with the gain (overall and per family)", _round(corr)))


def _domain(s: Section, gt: GainTable, table: pd.DataFrame, points: pd.DataFrame, opts: ReportOptions) -> None:
    s.text.append("Domain similarity between each intermediate task's English text and each target's: "
                  "vocabulary-distribution divergence and embedding similarity; 'in-domain' pairs share the catalog's "
                  "text domain.")
    s.text.extend(f"- `{m}`: {MEASURE_DOCS[m]}" for m in DOMAIN_MEASURES)
    dom = pd.DataFrame(
        [{"task": t, "domain": task_info(t).domain or "(unknown)"} for t in
         sorted(set(table["intermediate"]) | set(table["target"]))] if len(table) else [])
    if len(dom):
        s.tables.append(("Text domain of each task (task catalog)", dom))
    if points.empty:
        s.notes.append("No (setup, target) points with a known intermediate task: no domain comparison.")
        return
    measures = [m for m in DOMAIN_MEASURES if m in points.columns and points[m].notna().any()]
    corr = correlate_with_gains(points, measures, n_boot=opts.corr_boot, seed=opts.seed)
    if measures:
        s.figures.append(Figure(
            "domain_similarity_vs_gain",
            "Domain divergence / similarity of intermediate vs target text (x) against mean gain per (setup, target) (y).",
            figs.similarity_scatter(points, measures, corr, title="Domain similarity vs gain", ylabel=_ylabel(gt),
                                    label_column="label", measure_labels=MEASURE_LABELS),
        ))
    if "same_domain" in points.columns and points["same_domain"].notna().any():
        p = points.dropna(subset=["same_domain"]).copy()
        p["domain_match"] = p["same_domain"].map({1.0: "in-domain", 0.0: "out-of-domain"})
        comp = p.groupby(["model", "domain_match"])["mean_gain"].agg(["count", "mean", "std"]).reset_index()
        comp = comp.rename(columns={"count": "n_pairs", "mean": "mean_gain", "std": "std_over_pairs"})
        s.tables.append(("In-domain vs out-of-domain intermediate tasks (mean gain per (setup, target) pair)", _round(comp)))
        if p["domain_match"].nunique() < 2:
            s.notes.append("All pairs are " + p["domain_match"].iloc[0] + ": no in-/out-of-domain contrast is possible.")
    else:
        s.notes.append("The task catalog gives no domain for these tasks: no in-/out-of-domain comparison.")
    s.tables.append(("Rank correlation of domain measures with the gain", _round(corr)))


_SETTING_KEYS = ("max_examples", "max_steps", "num_epochs", "learning_rate", "batch_size", "max_length",
                 "precision", "n_examples", "num_examples", "split", "sampler", "temperature")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        if all(not isinstance(x, (dict, list)) for x in d):
            out[prefix[:-1]] = ",".join(map(str, d))
        else:
            for i, v in enumerate(d):
                out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def _settings(s: Section, stages: pd.DataFrame, gt: GainTable) -> None:
    s.text.append("Every number above comes from the runs below: their state, seeds and the settings recorded in the "
                  "results store (data sizes, steps, learning rates, batch sizes).")
    if stages is None or stages.empty:
        s.notes.append("The results store has no stage records: settings and data sizes are unknown.")
        return
    rows = []
    for r in stages.to_dict("records"):
        flat = _flatten(_parse_settings(r.get("settings")))
        chosen = {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] in _SETTING_KEYS}
        row = {c: r.get(c) for c in ("stage_id", "kind", "state", "setup", "target", "model", "seed") if c in r}
        if "stage_id" in row:
            row["stage_id"] = str(row["stage_id"])[:12]
        row["settings"] = "; ".join(f"{k}={v}" for k, v in sorted(chosen.items())) or "(none recorded)"
        rows.append(row)
    s.tables.append(("Stages", pd.DataFrame(rows)))
    if "state" in stages.columns:
        bad = stages[~stages["state"].astype(str).isin(["done", "DONE", "finished", "succeeded", "complete", "completed"])]
        if len(bad):
            s.notes.append(f"{len(bad)} stage(s) are not finished (states: "
                           f"{', '.join(sorted(bad['state'].astype(str).unique()))}); their results, if any, may be partial.")
    if len(gt.scores):
        n = gt.scores.groupby(["target", "split", "metric"]).agg(
            languages=("language", "nunique"), seeds=("seed", lambda x: ",".join(map(str, sorted(set(x))))),
            setups=("setup", "nunique")).reset_index()
        s.tables.append(("What each target's numbers are (split, metric, languages, seeds)", n))


def _round(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    out = frame.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(digits)
    return out


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.split(". ")[0].rstrip(".") if text else type(exc).__name__


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")[:60] or "x"


# --------------------------------------------------------------------------- rendering

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


def _html_table(df: pd.DataFrame) -> str:
    shown = df.copy()
    shown = shown.map(lambda v: "n/a" if (isinstance(v, float) and math.isnan(v)) or v is None or v is pd.NA else v)
    return shown.to_html(index=False, border=0, escape=True, na_rep="n/a")


def _hoist_common_note(df: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
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
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _write(sections: list[Section], out: Path, metrics: pd.DataFrame, stages: pd.DataFrame, opts: ReportOptions) -> ReportResult:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = out.parent / "figures"
    fig_dir.mkdir(exist_ok=True)
    md_path = out.parent / "report.md"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = "X-STILTs report: intermediate-task gains in zero-shot cross-lingual transfer"
    h = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
         f"<p>Generated {stamp} by xstilts from {len(metrics)} metric rows and {len(stages)} stage records.</p>",
         "<nav><strong>Contents</strong><ul>"]
    h += [f"<li><a href='#{s.id}'>{html.escape(s.title)}</a></li>" for s in sections]
    h.append("</ul></nav>")
    md = [f"# {title}", "", f"Generated {stamp} by xstilts from {len(metrics)} metric rows and {len(stages)} stage records.", ""]
    paths: list[Path] = []
    notes: list[str] = []
    for s in sections:
        h.append(f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>")
        md += [f"## {s.title}", ""]
        in_list = False
        for t in s.text:
            if t.startswith("- "):
                if not in_list:
                    h.append("<ul>")
                    in_list = True
                h.append(f"<li>{_md_inline(t[2:])}</li>")
            else:
                if in_list:
                    h.append("</ul>")
                    in_list = False
                h.append(f"<p>{_md_inline(t)}</p>")
            md.append(t)
        if in_list:
            h.append("</ul>")
        md.append("")
        for n in s.notes:
            notes.append(f"{s.title}: {n}")
            h.append(f"<div class='note'><strong>Note:</strong> {_md_inline(n)}</div>")
            md += [f"> **Note:** {n}", ""]
        for f in s.figures:
            p = fig_dir / f"{f.name}.png"
            p.write_bytes(f.png)
            paths.append(p)
            b64 = base64.b64encode(f.png).decode("ascii")
            h.append(f"<figure><img alt='{html.escape(f.caption)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{_md_inline(f.caption)}</figcaption></figure>")
            md += [f"![{f.caption}](figures/{p.name})", "", f"*{f.caption}*", ""]
        for caption, df in s.tables:
            df, common = _hoist_common_note(df)
            after = f"<p class='note'>Every row: {html.escape(common)}</p>" if common else ""
            h.append(f"<details{' open' if len(df) <= 12 else ''}><summary>{html.escape(caption)} ({len(df)} rows)</summary>"
                     f"<div class='tablewrap'>{_html_table(df)}</div>{after}</details>")
            md += [f"**{caption}**", "", _md_table(df), ""] + ([f"_Every row: {common}_", ""] if common else [])
        h.append("</section>")
    h.append("</body></html>")
    out.write_text("\n".join(h), encoding="utf-8")
    md_path.write_text("\n".join(md), encoding="utf-8")
    log.info("report written to %s (%d figures)", out, len(paths))
    return ReportResult(html=out, markdown=md_path, figures=paths, notes=notes, sections=sections)
