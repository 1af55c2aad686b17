"""The report's similarity sections, computed: task, language and domain similarity against gains.

Text-based and embedding measures are computed here (cached in a :class:`SimilarityCache`);
Fisher TaskEmb is only read from its cache (:mod:`xstilts.analysis.taskemb`), never computed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from xstilts.analysis.groupings import UNKNOWN
from xstilts.analysis.metadata import find_task
from xstilts.analysis.records import model_sources, setup_languages, task_models
from xstilts.analysis.sections import ReportInputs
from xstilts.analysis.similarity import (
    SimilarityCache,
    correlate_with_gains,
    language_similarity_table,
    load_encoder_for_analysis,
    load_task_texts,
    model_identity,
    task_similarity_table,
)
from xstilts.analysis.taskemb import load_task_embeddings
from xstilts.errors import XStiltsError

log = logging.getLogger(__name__)

TASK_MEASURES = ["text_emb", "task_emb", "same_format", "same_label_space", "subword_jaccard", "subword_weighted_jaccard"]
LANGUAGE_MEASURES = ["subword_jaccard", "subword_weighted_jaccard", "lexical_overlap", "same_family", "same_script"]
DOMAIN_MEASURES = ["word_js", "subword_js", "text_emb", "same_domain"]


def first_sentence(exc: BaseException) -> str:
    """The first sentence of an error message (for one-line notes)."""
    text = str(exc).strip()
    return text.split(". ")[0].rstrip(".") if text else type(exc).__name__


def measures_present(points: pd.DataFrame, measures: list[str]) -> list[str]:
    """The measures with at least one value in ``points``."""
    return [m for m in measures if m in points.columns and points[m].notna().any()]


@dataclass
class Encoder:
    """The encoder/tokenizer the embedding and sub-word measures use (None fields: not loaded)."""

    name: str | None = None
    model: Any = None
    tokenizer: Any = None
    identity: str = ""

    @property
    def pair(self) -> tuple[Any, Any] | None:
        return (self.model, self.tokenizer) if self.model is not None else None


def load_encoder(inp: ReportInputs, notes: list[str]) -> Encoder:
    """The ``--encoder``, else the runs' only model (loaded from the name or path its stages started
    from); a note says why when none is loaded."""
    models = sorted(inp.gt.gains["model"].astype(str).unique())
    sources = model_sources(inp.records)  # a model label of the spec -> the name or path it loads from
    name = inp.options.encoder or (sources.get(models[0], models[0]) if len(models) == 1 else None)
    if name is None:
        notes.append("Several models in the results and no --encoder given: embedding and sub-word measures skipped.")
        return Encoder()
    try:
        model, tokenizer = load_encoder_for_analysis(name)
    except (XStiltsError, ImportError, OSError) as exc:
        notes.append(f"Could not load encoder '{name}' ({exc}): TextEmb and sub-word measures skipped.")
        return Encoder()
    return Encoder(name, model, tokenizer, model_identity(name))


# --------------------------------------------------------------------------- task similarity


@dataclass
class TaskSimilarityResult:
    """Similarity of each intermediate task to each target, and its rank correlation with the gain."""

    setup_tasks: dict[str, list[str]]
    encoder_name: str | None
    text_sizes: dict[str, int]
    table: pd.DataFrame  # one row per (intermediate, target)
    points: pd.DataFrame  # one row per (model, setup, target): mean gain + measures
    measures: list[str]
    corr: pd.DataFrame
    family_corr: pd.DataFrame
    task_emb_missing: dict[str, str]
    notes: list[str] = field(default_factory=list)


def _task_texts(tasks: list[str], inp: ReportInputs, notes: list[str]) -> dict[str, list[str]]:
    o = inp.options
    texts: dict[str, list[str]] = {}
    for t in tasks:
        try:
            texts[t] = load_task_texts(t, max_examples=o.max_examples, seed=o.seed, data_dir=o.data_dir)
        except (XStiltsError, ImportError, OSError) as exc:
            notes.append(f"No English text for task '{t}' ({first_sentence(exc)}); its text measures are n/a.")
    return texts


def _task_points(per_target: pd.DataFrame, table: pd.DataFrame, setup_tasks: dict[str, list[str]]) -> pd.DataFrame:
    """One point per (model, setup, target): measures averaged over the setup's intermediate tasks."""
    pts = []
    for r in per_target.itertuples():
        its = setup_tasks.get(r.setup)
        if not its:
            continue
        sub = table[(table["intermediate"].isin(its)) & (table["target"] == r.target)] if len(table) else table
        vals = sub.drop(columns=["intermediate", "target"]).mean(numeric_only=True).to_dict() if len(sub) else {}
        pts.append({"model": r.model, "setup": r.setup, "target": r.target, "mean_gain": r.mean_gain,
                    "label": f"{r.setup}→{r.target}", **vals})
    return pd.DataFrame(pts)


def _family_points(meta: pd.DataFrame, points: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    if points.empty:
        return pd.DataFrame(columns=["family", "mean_gain", *measures])
    m = meta.assign(family=meta["family"].fillna(UNKNOWN))
    fam = m.groupby(["model", "setup", "target", "family"])["gain"].mean().rename("mean_gain").reset_index()
    return fam.merge(points.drop(columns=["mean_gain", "label"]), on=["model", "setup", "target"], how="inner")


def _cached_task_emb(inp: ReportInputs, tasks: list[str],
                     setup_tasks: dict[str, list[str]]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Cached Fisher TaskEmb vectors of ``tasks``, and why the others have none."""
    models = task_models([r for r in inp.records if r.finished and r.has_model()], setup_tasks)
    vectors, missing = load_task_embeddings({t: m for t, m in models.items() if t in tasks})
    for t in tasks:
        if t not in models:
            missing[t] = "no finished single-task stage model for it"
    return vectors, missing


def compute_task_similarity(inp: ReportInputs, per_target: pd.DataFrame, setup_tasks: dict[str, list[str]],
                            setup_notes: list[str], encoder: Encoder, cache: SimilarityCache) -> TaskSimilarityResult:
    o = inp.options
    notes = list(setup_notes)
    targets = sorted(inp.gt.gains["target"].astype(str).unique())
    tasks = sorted({t for ts in setup_tasks.values() for t in ts} | set(targets))
    texts = _task_texts(tasks, inp, notes)
    fisher, missing = _cached_task_emb(inp, tasks, setup_tasks)
    pairs = sorted({(it, tg) for its in setup_tasks.values() for it in its for tg in targets})
    table = task_similarity_table(pairs, texts, tokenizer=encoder.tokenizer, encoder=encoder.pair,
                                  encoder_id=encoder.identity, fisher=fisher, cache=cache,
                                  sample_id=f"en|n={o.max_examples}|seed={o.seed}|data={o.data_dir or ''}")
    points = _task_points(per_target, table, setup_tasks)
    measures = [m for m in TASK_MEASURES if m in points.columns and points[m].notna().sum() >= 1]
    corr = fam_corr = pd.DataFrame()
    if len(points):
        corr = correlate_with_gains(points, measures, n_boot=o.corr_boot, seed=o.seed)
        fam_corr = correlate_with_gains(_family_points(inp.meta, points, measures), measures, by="family",
                                        n_boot=o.corr_boot, seed=o.seed)
        fam_corr = fam_corr[fam_corr["group"] != "all"]
    return TaskSimilarityResult(setup_tasks, encoder.name, {t: len(v) for t, v in sorted(texts.items())}, table,
                                points, measures, corr, fam_corr, missing, notes)


# --------------------------------------------------------------------------- language similarity


@dataclass
class LanguageSimilarityResult:
    """Similarity of each target language to the reference language(s) of each setup, against gains."""

    tables: dict[tuple[str, ...], pd.DataFrame]  # reference languages -> one row per language
    points: pd.DataFrame  # one row per (model, setup, language)
    measures: list[str]
    corr: pd.DataFrame
    tatoeba_examples: int
    notes: list[str] = field(default_factory=list)


def _tatoeba(languages: set[str], inp: ReportInputs, notes: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """Tatoeba sentence pairs (language side, English side) of every non-English language."""
    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.loading import load_examples

    o = inp.options
    try:
        spec = get_task("tatoeba")
    except XStiltsError as exc:
        notes.append(f"Tatoeba parallel text is not available ({first_sentence(exc)}): overlap measures are n/a.")
        return {}
    parallel: dict[str, tuple[list[str], list[str]]] = {}
    missing = []
    for lang in sorted(languages - {"en"}):
        try:
            ex = load_examples(spec, lang, spec.eval_split, data_dir=o.data_dir, max_examples=o.tatoeba_examples,
                               seed=o.seed)
        except (XStiltsError, OSError) as exc:
            missing.append(lang)
            log.debug("no tatoeba for %s: %s", lang, exc)
            continue
        parallel[lang] = ([e.source for e in ex], [e.target for e in ex])
    if missing:
        notes.append(f"No Tatoeba parallel text for {', '.join(missing)}: their overlap measures are n/a.")
    return parallel


def _language_points(inp: ReportInputs, tables: dict[tuple[str, ...], pd.DataFrame],
                     refs_by_setup: dict[str, list[str]]) -> pd.DataFrame:
    pl = inp.gt.gains.groupby(["model", "setup", "language"])["gain"].mean().rename("mean_gain").reset_index()
    indexed = {refs: tab.set_index("language") for refs, tab in tables.items()}
    pts = []
    for r in pl.itertuples():
        tab = indexed[tuple(refs_by_setup[r.setup])]
        vals = tab.loc[r.language].to_dict() if r.language in tab.index else {}
        pts.append({"model": r.model, "setup": r.setup, "language": r.language, "mean_gain": r.mean_gain,
                    "label": r.language, **vals})
    points = pd.DataFrame(pts)
    fam = inp.meta.drop_duplicates("language").set_index("language")["family"]
    points["family"] = points["language"].map(fam).fillna(UNKNOWN)
    return points


def compute_language_similarity(inp: ReportInputs, encoder: Encoder) -> LanguageSimilarityResult:
    o = inp.options
    notes: list[str] = []
    langs = sorted(inp.gt.gains["language"].astype(str).unique())
    refs_by_setup = {s: setup_languages(inp.records, s) for s in sorted(inp.gt.gains["setup"].unique())}
    parallel = _tatoeba(set(langs) | {r for v in refs_by_setup.values() for r in v}, inp, notes)
    if encoder.tokenizer is None:
        notes.append("No tokenizer loaded: sub-word overlap measures are n/a.")
    tables = {refs: language_similarity_table(langs, parallel, tokenizer=encoder.tokenizer, references=list(refs))
              for refs in {tuple(v) for v in refs_by_setup.values()}}
    points = _language_points(inp, tables, refs_by_setup)
    measures = measures_present(points, LANGUAGE_MEASURES)
    corr = correlate_with_gains(points, measures, by="family", n_boot=o.corr_boot, seed=o.seed)
    return LanguageSimilarityResult(dict(sorted(tables.items())), points, measures, corr, o.tatoeba_examples, notes)


# --------------------------------------------------------------------------- domain


@dataclass
class DomainResult:
    """Domain measures of (intermediate, target) pairs against gains, and in- vs out-of-domain gains."""

    domains: pd.DataFrame  # task -> catalog domain
    points: pd.DataFrame
    measures: list[str]
    corr: pd.DataFrame
    in_vs_out: pd.DataFrame | None  # None: the catalog gives no domains
    single_kind: str | None  # "in-domain" / "out-of-domain" when every pair is of one kind


def _in_vs_out(points: pd.DataFrame) -> tuple[pd.DataFrame | None, str | None]:
    if "same_domain" not in points.columns or not points["same_domain"].notna().any():
        return None, None
    p = points.dropna(subset=["same_domain"]).copy()
    p["domain_match"] = p["same_domain"].map({1.0: "in-domain", 0.0: "out-of-domain"})
    comp = p.groupby(["model", "domain_match"])["mean_gain"].agg(["count", "mean", "std"]).reset_index()
    comp = comp.rename(columns={"count": "n_pairs", "mean": "mean_gain", "std": "std_over_pairs"})
    return comp, (p["domain_match"].iloc[0] if p["domain_match"].nunique() < 2 else None)


def compute_domain(inp: ReportInputs, task_sim: TaskSimilarityResult) -> DomainResult:
    table, points = task_sim.table, task_sim.points
    tasks = sorted(set(table["intermediate"]) | set(table["target"])) if len(table) else []
    domains = pd.DataFrame([{"task": t, "domain": getattr(find_task(t), "domain", None) or "(unknown)"} for t in tasks])
    if points.empty:
        return DomainResult(domains, points, [], pd.DataFrame(), None, None)
    measures = measures_present(points, DOMAIN_MEASURES)
    corr = correlate_with_gains(points, measures, n_boot=inp.options.corr_boot, seed=inp.options.seed)
    in_out, single = _in_vs_out(points)
    return DomainResult(domains, points, measures, corr, in_out, single)
