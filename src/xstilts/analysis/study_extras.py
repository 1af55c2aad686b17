"""Study-specific analyses ("extras") of the study summaries, and the derived measures they read.

A study's ``analysis.yaml`` names its extras (``extras: {name: options}``); the summary
(:mod:`xstilts.analysis.study_summary`) calls ``EXTRAS[name](study, options)`` for each and
puts the Markdown it returns (### heading, tables, a method note) into the README block.
``MEASURES[name](study, options)`` writes the derived CSV an extra reads (``similarity.csv``,
``lexsim.csv``) from the local data; ``xstilts summarize STUDY_DIR --measure`` runs them.

Statistics mean what the report's mean (:mod:`xstilts.analysis.inference`): the seed (one
training run) is the unit of inference; a contrast is computed per seed and tested with the
one-sample t-test of :func:`~xstilts.analysis.inference.seed_level_test` (item-level variance is
not in results.csv, so it is not added); rank correlations come from
:func:`~xstilts.analysis.stats.rank_correlation` (permutation p-values, fixed seeds). Numbers are
printed with fixed precision (1 decimal for points, 3 for p-values and correlations).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from xstilts.analysis.inference import CORRECTIONS, MIN_SEEDS_FOR_INFERENCE, adjust_pvalues, seed_level_test
from xstilts.analysis.metadata import find_task
from xstilts.analysis.stats import rank_correlation
from xstilts.errors import ConfigError, DataError, XStiltsError
from xstilts.languages import find_language

log = logging.getLogger(__name__)

#: the analysis file whose ``extras`` options these functions read (for error messages)
ANALYSIS_FILE = "analysis.yaml"
SIMILARITY_MEASURES = ("same_format", "subword_weighted_jaccard", "word_js", "text_emb")
#: measures where a smaller value means more similar
DIVERGENCES = frozenset({"word_js", "subword_js"})
#: split of the rows with the intermediate tasks' English dev scores (``xstilts results --intermediate-dev``)
INTERMEDIATE_DEV = "intermediate_dev"
#: metric names that may carry a language's evaluation item count in results.csv
COUNT_METRICS = ("n_items", "n_examples", "n", "count")
#: appended to the method notes of the seed-level tests
SEED_RULE = (f" With fewer than {MIN_SEEDS_FOR_INFERENCE} seeds, or no spread over seeds, no interval or p is "
             "given (descriptive only, as in the report).")
PERMUTATIONS = 5_000
BOOTSTRAPS = 2_000
SEED = 0


class StudyLike(Protocol):
    """The fields of :class:`xstilts.analysis.study_summary.StudyData` the extras read."""

    dir: Path
    results: pd.DataFrame
    scores: pd.DataFrame
    gains: pd.DataFrame
    config: dict
    n_seeds: int


# --------------------------------------------------------------------------- formatting


def fmt_points(x: float, *, sign: bool = False) -> str:
    """A value in points with 1 decimal (``n/a`` when missing); ``sign`` prints ``+`` too."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if round(float(x), 1) == 0:
        return "0.0"  # never "-0.0"
    return f"{x:+.1f}" if sign else f"{x:.1f}"


def fmt_p(p: float | None) -> str:
    """A p-value with 3 decimals, ``< 0.001`` below that, ``n/a`` when missing."""
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_r(r: float | None) -> str:
    """A correlation or standardised quantity with 3 decimals (``n/a`` when missing)."""
    if r is None or not np.isfinite(r):
        return "n/a"
    return f"{r:.3f}"


def fmt_signed(x: float) -> str:
    """A difference in points: 1 decimal with its sign."""
    return fmt_points(x, sign=True)


def fmt_ci(lo: float, hi: float, fmt: Callable[[float], str] = fmt_signed) -> str:
    """``[lo, hi]`` with ``fmt`` (default: signed points); ``n/a`` when either bound is missing."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown pipe table; cells are used as given (format them first)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section(title: str, parts: Iterable[str]) -> str:
    """A ### section: heading, then the parts separated by blank lines."""
    return "\n\n".join([f"### {title}", *[p for p in parts if p]]) + "\n"


# --------------------------------------------------------------------------- shared helpers


def options_error(study: StudyLike, extra: str, key: str, message: str) -> ConfigError:
    """A ConfigError naming ``extras.<extra>.<key>`` of the study's analysis.yaml."""
    return ConfigError(message, key=f"extras.{extra}.{key}", file=Path(study.dir) / ANALYSIS_FILE)


def upper_bound_pairs(config: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The (setup, target) pairs analysis.yaml flags as upper bounds (left out of the extras)."""
    return {(str(u["setup"]), str(u["target"])) for u in config.get("upper_bound") or []}


def correction(config: Mapping[str, Any]) -> str:
    """The multiple-comparison method of analysis.yaml (default Holm)."""
    return str(config.get("correction") or "holm")


def corrected_header(config: Mapping[str, Any]) -> str:
    """The column header of corrected p-values, as in the summary's tables (e.g. "Holm p")."""
    return f"{CORRECTIONS.get(correction(config), correction(config))} p"


def seed_test(per_seed: Sequence[float]) -> dict[str, float]:
    """Mean, 95 % t interval and two-sided p (against 0) of per-seed values; n = finite seeds.

    As in the report, fewer than :data:`MIN_SEEDS_FOR_INFERENCE` seeds are described only (no
    interval or p); so are values without spread over seeds (the t statistic is undefined)."""
    res = seed_level_test(np.asarray(per_seed, dtype=float), 0.0)
    out = {**{k: float(res[k]) for k in ("mean", "ci_low", "ci_high", "p", "t")}, "n": int(res["n"])}
    if out["n"] < MIN_SEEDS_FOR_INFERENCE or not float(res["sd"]) > 0:
        out.update(ci_low=math.nan, ci_high=math.nan, p=math.nan, t=math.nan)
    return out


def setup_target_seed_means(gains: pd.DataFrame) -> pd.DataFrame:
    """Per (model, setup, target, seed): the gain averaged over languages."""
    return gains.groupby(["model", "setup", "target", "seed"], sort=True)["gain"].mean().reset_index()


def score_column(frame: pd.DataFrame) -> str:
    """The score column of a scores frame (``value``, or ``score`` in the gains layer's naming)."""
    return "value" if "value" in frame.columns else "score"


def models_of(frame: pd.DataFrame) -> list[str]:
    """The models in ``frame``, sorted."""
    return sorted(frame["model"].astype(str).unique()) if "model" in frame.columns else []


def model_label(model: str, models: Sequence[str]) -> list[str]:
    """The model cell of a row, only when several models share a table."""
    return [model] if len(models) > 1 else []


def _holm_column(ps: Sequence[float], config: Mapping[str, Any]) -> list[str]:
    return [fmt_p(p) for p in adjust_pvalues(np.asarray(ps, dtype=float), correction(config))]


def _spec(study: StudyLike) -> Any:
    from xstilts.experiments import load_spec

    path = Path(study.dir) / "spec.yaml"
    if not path.is_file():
        raise DataError(path, "the study's spec is missing; expected spec.yaml beside analysis.yaml")
    return load_spec(path)


def setup_tasks(spec: Any) -> dict[str, list[str]]:
    """Every non-baseline setup of ``spec`` -> its intermediate tasks, in training order."""
    from xstilts.experiments.spec import expand_setup

    return {name: [e.task for step in expand_setup(spec, name) for e in step.tasks]
            for name, setup in spec.intermediate.items() if setup.kind != "none"}


def target_languages(spec: Any) -> dict[str, list[str]]:
    """Every target task of ``spec`` -> the languages it is evaluated on (``all`` resolved)."""
    from xstilts.experiments.plan import resolve_target_languages
    from xstilts.tasks.catalog import get_task

    out: dict[str, list[str]] = {}
    for target in spec.targets:
        task = get_task(target.task)
        split = target.splits(task.eval_split)[0]
        out[task.name] = resolve_target_languages(task, target.languages, split, spec.data_dir)
    return out


def load_analysis_tokenizer(name: str) -> Any:
    """The tokenizer of the encoder ``name`` (the one the report uses for sub-word measures)."""
    from xstilts.analysis.similarity import load_encoder_for_analysis

    return load_encoder_for_analysis(name)[1]


def load_analysis_encoder(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) of the encoder ``name`` in eval mode (TextEmb)."""
    from xstilts.analysis.similarity import load_encoder_for_analysis

    return load_encoder_for_analysis(name)


def _model_name(spec: Any, options: Mapping[str, Any]) -> str:
    return str(options.get("model") or spec.models[0].name_or_path)


def _write_csv(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False, float_format="%.6f")
    log.info("wrote %s (%d rows)", path, len(table))
    return path


# =========================================================================== 1. similarity x family


def _pooled_english(task: str, languages: Sequence[str], data_dir: Path | None, n: int, seed: int) -> list[str]:
    """The English side of a retrieval target: its files' English sentences, pooled, de-duplicated, and a
    deterministic sample of ``n`` of them."""
    from xstilts.analysis.similarity import load_task_texts

    pool: set[str] = set()
    for lang in languages:
        try:
            pool.update(load_task_texts(task, language=lang, max_examples=None, data_dir=data_dir, side="input"))
        except (XStiltsError, OSError) as exc:
            log.debug("no %s text for %s: %s", task, lang, exc)
    texts = sorted(pool)
    if len(texts) > n:
        idx = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
        texts = [texts[i] for i in idx]
    return texts


def english_task_texts(spec: Any, tasks: Sequence[str], *, max_examples: int = 200,
                       seed: int = 0) -> dict[str, list[str]]:
    """English input samples of ``tasks``: an intermediate task's own; a target's English training data
    (its spec/catalog ``train_task``); a retrieval target's English side (no training data)."""
    from xstilts.analysis.similarity import load_task_texts
    from xstilts.tasks.catalog import get_task

    targets = {get_task(t.task).name: t for t in spec.targets}
    langs = target_languages(spec)
    texts: dict[str, list[str]] = {}
    for name in tasks:
        task = get_task(name)
        if name in targets and not task.trainable:
            texts[name] = _pooled_english(name, langs[name], spec.data_dir, max_examples, seed)
            continue
        texts[name] = load_task_texts(_text_source(task, targets.get(name)), max_examples=max_examples, seed=seed,
                                      data_dir=spec.data_dir)
    return texts


def _text_source(task: Any, target: Any | None) -> str:
    """The task whose English inputs stand for ``task``: a target's training task, else the task itself."""
    if target is None:
        return task.name
    if target.train is not None and target.train.task:
        return str(target.train.task)
    return task.train_task or task.name


def similarity_table(pairs: Sequence[tuple[str, str]], texts: Mapping[str, Sequence[str]], *,
                     encoder: tuple[Any, Any] | None, measures: Sequence[str] = SIMILARITY_MEASURES) -> pd.DataFrame:
    """(intermediate, target) pairs with ``measures`` (analysis.similarity.task_similarity_table)."""
    from xstilts.analysis.similarity import task_similarity_table

    table = task_similarity_table(pairs, texts, tokenizer=encoder[1] if encoder else None, encoder=encoder)
    return table[["intermediate", "target", *measures]]


def measure_similarity(study: StudyLike, options: Mapping[str, Any]) -> Path:
    """Write ``similarity.csv``: the measures of every (intermediate task, target) pair of the study."""
    spec = _spec(study)
    by_setup = setup_tasks(spec)
    targets = list(target_languages(spec))
    inters = sorted({t for ts in by_setup.values() for t in ts})
    pairs = [(i, t) for i in inters for t in targets]
    texts = english_task_texts(spec, [*inters, *targets], max_examples=int(options.get("max_examples", 200)))
    encoder = load_analysis_encoder(_model_name(spec, options))
    measures = list(options.get("measures") or SIMILARITY_MEASURES)
    table = similarity_table(pairs, texts, encoder=encoder, measures=measures)
    return _write_csv(table, Path(study.dir) / str(options.get("file", "similarity.csv")))


def _read_measure_file(study: StudyLike, options: Mapping[str, Any], default: str, extra: str) -> pd.DataFrame:
    path = Path(study.dir) / str(options.get("file", default))
    if not path.is_file():
        raise DataError(path, f"missing; make it from the local data with `xstilts summarize {study.dir} --measure` "
                              f"(extra '{extra}')")
    return pd.read_csv(path)


def pair_measures(sim: pd.DataFrame, by_setup: Mapping[str, Sequence[str]], measures: Sequence[str]) -> pd.DataFrame:
    """Per (setup, target): each measure averaged over the setup's intermediate tasks."""
    rows = []
    for setup, tasks in sorted(by_setup.items()):
        sub = sim[sim["intermediate"].isin(tasks)]
        for target, g in sub.groupby("target", sort=True):
            rows.append({"setup": setup, "target": str(target), **g[list(measures)].mean().to_dict()})
    return pd.DataFrame(rows, columns=["setup", "target", *measures])


def _drop_upper_bound(frame: pd.DataFrame, config: Mapping[str, Any]) -> pd.DataFrame:
    ub = upper_bound_pairs(config)
    keep = [(s, t) not in ub for s, t in zip(frame["setup"].astype(str), frame["target"].astype(str))]
    return frame[np.asarray(keep, dtype=bool)]


def similarity_correlations(pair_gains: pd.DataFrame, measures: Sequence[str]) -> pd.DataFrame:
    """Spearman's rho (BCa CI, permutation p) of each measure with the pairs' mean gain."""
    rows = []
    for m in measures:
        c = rank_correlation(pair_gains[m], pair_gains["mean_gain"], n_boot=BOOTSTRAPS, n_perm=PERMUTATIONS, seed=SEED)
        rows.append({"measure": m, "n": c.n, "rho": c.spearman, "ci_low": c.spearman_ci_low,
                     "ci_high": c.spearman_ci_high, "p": c.spearman_p})
    return pd.DataFrame(rows, columns=["measure", "n", "rho", "ci_low", "ci_high", "p"])


def keep_families(lang_gains: pd.DataFrame, min_languages: int) -> tuple[pd.DataFrame, list[str]]:
    """Rows of families with at least ``min_languages`` evaluated languages (unknown family dropped),
    and the languages dropped."""
    fam = {c: getattr(find_language(c), "family", None) for c in lang_gains["language"].astype(str).unique()}
    d = lang_gains.assign(family=lang_gains["language"].astype(str).map(fam))
    sizes = d.dropna(subset=["family"]).groupby("family")["language"].nunique()
    kept = set(sizes[sizes >= min_languages].index)
    dropped = sorted(c for c, f in fam.items() if f not in kept)
    return d[d["family"].isin(kept)].copy(), dropped


def _model_formula(d: pd.DataFrame, target_effects: bool) -> str:
    formula = "gain ~ sim * C(family, Sum)" if d["family"].nunique() > 1 else "gain ~ sim"
    return formula + (" + C(target, Sum)" if target_effects and d["target"].nunique() > 1 else "")


def _interaction_p(fit: Any, n_pairs: int) -> tuple[float, str]:
    """Joint Wald F-test p of the similarity x family terms (clustered covariance), and why none."""
    names = [n for n in fit.params.index if n.startswith("sim:")]
    if not names:
        return math.nan, "one family: no interaction"
    if len(names) > n_pairs - 1:
        return math.nan, f"{len(names)} interaction terms > pairs - 1 = {n_pairs - 1}: not testable"
    r = np.zeros((len(names), len(fit.params)))
    for i, n in enumerate(names):
        r[i, list(fit.params.index).index(n)] = 1.0
    return float(fit.wald_test(r, use_f=True, scalar=True).pvalue), ""


def _unfit_reason(per_pair: pd.Series) -> str:
    """Why the pairs' values of a measure cannot carry a slope ('' when they can)."""
    if len(per_pair) < 3:
        return "fewer than 3 pairs"
    counts = per_pair.round(12).value_counts()
    if len(counts) < 2:
        return "the measure does not vary over the pairs"
    if len(counts) == 2 and counts.min() < 2:
        return "one pair differs from all others in this measure: no inference"
    return ""


def family_model(d: pd.DataFrame, measure: str, *, target_effects: bool = True) -> dict[str, Any]:
    """OLS of language-level gain on the standardised measure, family (sum coding) and their
    interaction (+ target effects), standard errors clustered by (setup, target) pair.

    ``d``: one row per (setup, target, language) with ``gain``, ``family``, ``pair``, ``target`` and
    ``measure``. Under sum coding the ``sim`` slope is the unweighted mean of the family slopes.
    """
    import statsmodels.formula.api as smf

    d = d.dropna(subset=[measure, "gain"])
    per_pair = d.drop_duplicates("pair")[measure].astype(float)
    out: dict[str, Any] = {"measure": measure, "n_pairs": int(d["pair"].nunique()),
                           "n_languages": int(d["language"].nunique()), "n_families": int(d["family"].nunique()),
                           **dict.fromkeys(("slope", "ci_low", "ci_high", "p", "p_interaction"), math.nan), "note": ""}
    out["note"] = _unfit_reason(per_pair)
    if out["note"]:
        return out
    sd = float(per_pair.std(ddof=1))
    d = d.assign(sim=(d[measure].astype(float) - per_pair.mean()) / sd)
    groups = pd.factorize(d["pair"])[0]
    fit = smf.ols(_model_formula(d, target_effects), d).fit(cov_type="cluster", cov_kwds={"groups": groups},
                                                          use_t=True)
    lo, hi = fit.conf_int().loc["sim"]
    out.update(slope=float(fit.params["sim"]), ci_low=float(lo), ci_high=float(hi), p=float(fit.pvalues["sim"]))
    out["p_interaction"], out["note"] = _interaction_p(fit, out["n_pairs"])
    return out


def _pair_gains(study: StudyLike, model: str, measures_by_pair: pd.DataFrame) -> pd.DataFrame:
    """Per (setup, target) of ``model``: mean gain (languages per seed, then seeds) + measures."""
    g = setup_target_seed_means(study.gains[study.gains["model"].astype(str) == model])
    mean = g.groupby(["setup", "target"], sort=True)["gain"].mean().rename("mean_gain").reset_index()
    return _drop_upper_bound(mean.merge(measures_by_pair, on=["setup", "target"], how="inner"), study.config)


def _language_gains(study: StudyLike, model: str, measures_by_pair: pd.DataFrame) -> pd.DataFrame:
    g = study.gains[study.gains["model"].astype(str) == model]
    lang = g.groupby(["setup", "target", "language"], sort=True)["gain"].mean().reset_index()
    lang = _drop_upper_bound(lang.merge(measures_by_pair, on=["setup", "target"], how="inner"), study.config)
    return lang.assign(pair=lang["setup"].astype(str) + "→" + lang["target"].astype(str))


def _correlation_rows(corr: pd.DataFrame, prefix: list[str]) -> list[list[str]]:
    return [[*prefix, r.measure + (" (divergence)" if r.measure in DIVERGENCES else ""), str(r.n), fmt_r(r.rho),
             fmt_ci(r.ci_low, r.ci_high, fmt_r), fmt_p(r.p)] for r in corr.itertuples()]


def _model_rows(fits: list[dict[str, Any]], prefix: list[str]) -> list[list[str]]:
    return [[*prefix, f["measure"], fmt_points(f["slope"], sign=True), fmt_ci(f["ci_low"], f["ci_high"]),
             fmt_p(f["p"]), fmt_p(f["p_interaction"]), str(f["n_pairs"]), str(f["n_languages"]),
             str(f["n_families"]), f["note"] or "-"] for f in fits]


def similarity_family(study: StudyLike, options: Mapping[str, Any]) -> str:
    """Study 1: rank correlation of task similarity with the pairs' mean gain, and gain ~ similarity x family."""
    measures = list(options.get("measures") or SIMILARITY_MEASURES)
    sim = _read_measure_file(study, options, "similarity.csv", "similarity_family")
    missing = [m for m in measures if m not in sim.columns]
    if missing:
        raise options_error(study, "similarity_family", "measures", f"{missing} are not columns of the similarity "
                            f"file (it has {list(sim.columns)})")
    by_pair = pair_measures(sim, setup_tasks(_spec(study)), measures)
    min_langs = int(study.config.get("min_group_languages", 3))
    models = models_of(study.gains)
    corr_rows, model_rows, dropped_note = [], [], ""
    for model in models:
        corr_rows += _correlation_rows(similarity_correlations(_pair_gains(study, model, by_pair), measures),
                                       model_label(model, models))
        lang, dropped = keep_families(_language_gains(study, model, by_pair), min_langs)
        fits = [family_model(lang, m, target_effects=bool(options.get("target_effects", True))) for m in measures]
        model_rows += _model_rows(fits, model_label(model, models))
        dropped_note = (f"{len(dropped)} language(s) dropped (family with < {min_langs} evaluated languages, or "
                        f"unknown): {', '.join(dropped) or 'none'}.")
    head = [*(["model"] if len(models) > 1 else [])]
    t1 = markdown_table([*head, "measure", "n pairs", "Spearman ρ", "95 % CI", "p"], corr_rows)
    t2 = markdown_table([*head, "measure", "slope (points / SD)", "95 % CI", "p", "p (× family, joint)", "n pairs",
                         "n languages", "n families", "note"], model_rows)
    note1 = ("*Method:* one point per (setup, target) pair, its mean gain (languages per seed, then seeds) against the "
             "pair's similarity (averaged over a setup's tasks); upper-bound pairs left out; Spearman's ρ with a "
             "BCa bootstrap CI and a permutation p (seeded). A divergence is lower for closer tasks: expect ρ < 0.")
    note2 = ("*Method:* OLS of each language's gain (mean over seeds) on the standardised similarity (SD over pairs), "
             "language family (sum coding, so the slope is the mean of the family slopes), their interaction"
             f"{' and target effects' if options.get('target_effects', True) else ''}; standard errors clustered "
             "by (setup, target) pair, t with pairs - 1 df; the interaction's p is the joint Wald F-test. "
             + dropped_note)
    caveat = ("With about a dozen (setup, target) pairs the pair-level evidence is thin: similarity varies only "
              "between pairs, so each slope rests on that many points whatever the number of languages.")
    return section("Task similarity and language family", [t1, note1, t2, note2, caveat])


# =========================================================================== 2. forgetting


def _dev_metric(task: str, rows: pd.DataFrame) -> str:
    """The task's primary metric when its rows have it, else f1 / accuracy / the first one."""
    available = sorted(rows["metric"].astype(str).unique())
    spec = find_task(task)
    for m in ([spec.primary_metric] if spec else []) + ["f1", "accuracy"]:
        if m in available:
            return m
    return available[0]


def dev_scores(study: StudyLike) -> pd.DataFrame:
    """English dev scores of the intermediate tasks: one row per (model, setup, task, seed) (primary metric)."""
    r = study.results
    rows = r[(r["split"].astype(str) == INTERMEDIATE_DEV) & (r["language"].astype(str) == "en")]
    if rows.empty:
        raise DataError(Path(study.dir) / "results.csv",
                        "has no intermediate dev rows (split 'intermediate_dev'), which the forgetting measure needs; "
                        "rerun `xstilts results SPEC --output-dir OUT --format csv --intermediate-dev` to add them")
    parts = []
    for task, g in rows.groupby("target", sort=True):
        metric = _dev_metric(str(task), g)
        parts.append(g[g["metric"].astype(str) == metric].assign(metric=metric))
    out = pd.concat(parts, ignore_index=True)
    return out.groupby(["model", "setup", "target", "seed", "metric"], sort=True)["value"].mean().reset_index()


def forgetting_row(dev: pd.DataFrame, model: str, pair: Mapping[str, str]) -> dict[str, Any]:
    """``task``'s dev score after ``setup`` minus after ``reference``, paired by seed (t-test over seeds)."""
    d = dev[(dev["model"].astype(str) == model) & (dev["target"].astype(str) == pair["task"])]
    after = d[d["setup"].astype(str) == pair["setup"]].set_index("seed")["value"]
    ref = d[d["setup"].astype(str) == pair["reference"]].set_index("seed")["value"]
    seeds = sorted(set(after.index) & set(ref.index))
    diff = (after.loc[seeds] - ref.loc[seeds]).to_numpy(dtype=float)
    res = seed_test(diff)
    metric = str(d["metric"].iloc[0]) if len(d) else "n/a"
    return {"model": model, **pair, "metric": metric, "after": float(after.loc[seeds].mean()) if seeds else math.nan,
            "reference_score": float(ref.loc[seeds].mean()) if seeds else math.nan, **res}


def _check_pairs(study: StudyLike, pairs: Any) -> list[dict[str, str]]:
    if not isinstance(pairs, list) or not pairs:
        raise options_error(study, "forgetting", "pairs", "expected a list of {setup, task, reference} mappings")
    out = []
    for i, p in enumerate(pairs):
        if not isinstance(p, Mapping) or not {"setup", "task", "reference"} <= set(p):
            raise options_error(study, "forgetting", f"pairs[{i}]", "expected keys setup, task and reference")
        out.append({k: str(p[k]) for k in ("setup", "task", "reference")})
    return out


def forgetting(study: StudyLike, options: Mapping[str, Any]) -> str:
    """Study 2: the first task's English dev score after a chain minus after the single task, per seed."""
    pairs = _check_pairs(study, options.get("pairs"))
    dev = dev_scores(study)
    models = models_of(dev)
    rows = [forgetting_row(dev, m, p) for m in models for p in pairs]
    missing = [f"{r['setup']}/{r['reference']} on {r['task']}" for r in rows if r["n"] == 0]
    holm = _holm_column([r["p"] for r in rows], study.config)
    table = markdown_table(
        [*(["model"] if len(models) > 1 else []), "task", "setup", "reference setup", "metric", "after setup",
         "after reference", "Δ (points)", "95 % CI", "p", corrected_header(study.config), "n seeds"],
        [[*model_label(r["model"], models), r["task"], r["setup"], r["reference"], r["metric"], fmt_points(r["after"]),
          fmt_points(r["reference_score"]), fmt_points(r["mean"], sign=True), fmt_ci(r["ci_low"], r["ci_high"]),
          fmt_p(r["p"]), h, str(r["n"])] for r, h in zip(rows, holm)])
    note = ("*Method:* the task's English dev score (primary metric) recorded by the setup's last intermediate stage, "
            "the task's head carried over from the earlier chain step, minus the single-task setup's score, paired "
            "by seed; mean over seeds, 95 % t interval and two-sided one-sample t-test (df = seeds - 1); negative = "
            "forgetting." + SEED_RULE + (f" No paired seeds for: {', '.join(missing)}." if missing else ""))
    return section("Forgetting: the first task's English dev score after the chain", [table, note])


# =========================================================================== 3. lexical similarity


def tatoeba_side(language: str, *, data_dir: Path | None, max_sentences: int | None, seed: int = 0,
                 english: bool = False) -> list[str]:
    """One side of a language's Tatoeba file: its own sentences, or (``english``) the English ones;
    a deterministic sample of ``max_sentences`` (``tasks.loading.load_examples``)."""
    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.loading import load_examples

    spec = get_task("tatoeba")
    ex = load_examples(spec, language, spec.eval_split, data_dir=data_dir, max_examples=max_sentences, seed=seed,
                       source="local")
    return [e.target if english else e.source for e in ex]


def english_sample(data_dir: Path | None, max_sentences: int, seed: int = 0) -> list[str]:
    """English for the lexical measures: the English sides of every local Tatoeba file, pooled,
    de-duplicated and sampled (seeded) to ``max_sentences`` (parallel to no one language's side)."""
    from xstilts.tasks.loading import local_availability

    langs = sorted({lang for lang, _ in local_availability("tatoeba", data_dir)})
    pool: set[str] = set()
    for lang in langs:
        pool.update(tatoeba_side(lang, data_dir=data_dir, max_sentences=None, english=True))
    texts = sorted(pool)
    if len(texts) > max_sentences:
        idx = np.sort(np.random.default_rng(seed).choice(len(texts), size=max_sentences, replace=False))
        texts = [texts[i] for i in idx]
    return texts


def language_profiles(languages: Iterable[str], tokenizer: Any, *, data_dir: Path | None,
                      max_sentences: int = 1000) -> tuple[dict[str, Counter], dict[str, int]]:
    """Sub-word piece counts of each language's Tatoeba side (English: :func:`english_sample`), and
    the sentences used; languages without a local Tatoeba file are left out (logged)."""
    from xstilts.analysis.similarity import subword_counts

    counts: dict[str, Counter] = {}
    sizes: dict[str, int] = {}
    missing = []
    for lang in sorted(set(languages)):
        try:
            texts = (english_sample(data_dir, max_sentences) if lang == "en"
                     else tatoeba_side(lang, data_dir=data_dir, max_sentences=max_sentences))
        except (XStiltsError, OSError) as exc:
            log.debug("no Tatoeba text for %s: %s", lang, exc)
            missing.append(lang)
            continue
        counts[lang], sizes[lang] = subword_counts(texts, tokenizer), len(texts)
    if missing:
        log.info("no local Tatoeba file for %s: left out of the lexical similarity", ", ".join(missing))
    return counts, sizes


def lexsim_table(targets: Sequence[str], intermediates: Sequence[str], tokenizer: Any, *, data_dir: Path | None,
                 max_sentences: int = 1000) -> pd.DataFrame:
    """Sub-word weighted Jaccard of every target language's Tatoeba side with every intermediate language's
    (one row per pair; target languages without Tatoeba data are left out)."""
    from xstilts.analysis.similarity import weighted_jaccard

    counts, sizes = language_profiles([*targets, *intermediates], tokenizer, data_dir=data_dir,
                                      max_sentences=max_sentences)
    lost = sorted(set(intermediates) - set(counts))
    if lost:
        raise DataError(Path(str(data_dir)) / "tatoeba", f"no Tatoeba file for intermediate language(s) {lost}")
    rows = [{"target_language": t, "intermediate_language": i,
             "subword_weighted_jaccard": weighted_jaccard(counts[t], counts[i]), "n_target": sizes[t],
             "n_intermediate": sizes[i]}
            for t in sorted(set(targets) & set(counts)) for i in sorted(set(intermediates))]
    return pd.DataFrame(rows, columns=["target_language", "intermediate_language", "subword_weighted_jaccard",
                                       "n_target", "n_intermediate"])


def spec_language_counts(spec: Any, setup: str) -> dict[str, float] | None:
    """Examples per language in setup ``setup``'s intermediate data, from the spec's caps (an entry's
    ``max_examples``, else ``max_examples.intermediate``); None when a language has no cap."""
    from xstilts.experiments.spec import expand_setup

    if spec is None or setup not in spec.intermediate or spec.intermediate[setup].kind == "none":
        return None
    counts: Counter = Counter()
    for entry in (e for step in expand_setup(spec, setup) for e in step.tasks):
        cap = entry.max_examples
        for lang in entry.languages:
            n = cap.get(lang, cap.get("default")) if isinstance(cap, dict) else cap
            n = n or spec.max_examples.for_task("intermediate", entry.task)
            if n is None:
                return None
            counts[lang] += float(n)
    return dict(counts)


def _arm_counts(langs: Any, from_spec: dict[str, float] | None) -> dict[str, float]:
    """Given shares; else the spec's counts when they cover exactly the listed languages; else equal."""
    if isinstance(langs, Mapping):
        return {str(k): float(v) for k, v in langs.items()}
    listed = [str(lang) for lang in langs or []]
    if from_spec and set(from_spec) == set(listed):
        return {lang: from_spec[lang] for lang in listed}
    return dict.fromkeys(listed, 1.0)


def arm_shares(study: StudyLike, options: Mapping[str, Any], spec: Any = None) -> dict[str, dict[str, float]]:
    """Each arm's intermediate languages -> their share of its data: ``{language: share}`` as given;
    a list: the spec's examples per language when it caps each of them, else equal shares."""
    arms = options.get("languages")
    if not isinstance(arms, Mapping) or not arms:
        raise options_error(study, "lexical_similarity", "languages",
                            "expected {setup: [languages]} or {setup: {language: share}}")
    out = {}
    for arm, langs in arms.items():
        raw = _arm_counts(langs, spec_language_counts(spec, str(arm)))
        total = float(sum(raw.values()))
        if not raw or total <= 0:
            raise options_error(study, "lexical_similarity", f"languages.{arm}", "expected languages with shares > 0")
        out[str(arm)] = {str(k): float(v) / total for k, v in raw.items()}
    return out


def measure_lexsim(study: StudyLike, options: Mapping[str, Any]) -> Path:
    """Write ``lexsim.csv``: sub-word weighted Jaccard of each target language with each intermediate language."""
    spec = _spec(study)
    targets = sorted({lang for langs in target_languages(spec).values() for lang in langs})
    inters = sorted({lang for shares in arm_shares(study, options).values() for lang in shares})
    tokenizer = load_analysis_tokenizer(_model_name(spec, options))
    table = lexsim_table(targets, inters, tokenizer, data_dir=spec.data_dir,
                         max_sentences=int(options.get("max_sentences", 1000)))
    return _write_csv(table, Path(study.dir) / str(options.get("file", "lexsim.csv")))


def arm_similarity(lexsim: pd.DataFrame, shares: Mapping[str, float]) -> pd.DataFrame:
    """Per target language: max and share-weighted mean similarity to the arm's languages."""
    sub = lexsim[lexsim["intermediate_language"].astype(str).isin(list(shares))]
    sub = sub.assign(w=sub["intermediate_language"].astype(str).map(shares))
    rows = []
    for lang, g in sub.groupby("target_language", sort=True):
        if set(g["intermediate_language"].astype(str)) != set(shares):
            continue
        s = g["subword_weighted_jaccard"].to_numpy(float)
        rows.append({"language": str(lang), "max": float(s.max()), "weighted": float(np.sum(s * g["w"].to_numpy()))})
    return pd.DataFrame(rows, columns=["language", "max", "weighted"])


def spearman_permutation(x: Sequence[float], y: Sequence[float]) -> tuple[int, float, float]:
    """(n, Spearman's rho, two-sided permutation p; seeded) of the finite pairs."""
    c = rank_correlation(x, y, n_boot=0, n_perm=PERMUTATIONS, seed=SEED)
    return c.n, c.spearman, c.spearman_p


def seen_unseen(gains: pd.DataFrame, seen: set[str]) -> dict[str, Any]:
    """Per seed: mean gain of the seen languages minus that of the unseen ones (English left out of both)."""
    g = gains[gains["language"].astype(str) != "en"]
    is_seen = g["language"].astype(str).isin(seen)
    by = [g[is_seen].groupby("seed")["gain"].mean(), g[~is_seen].groupby("seed")["gain"].mean()]
    seeds = sorted(set(by[0].index) & set(by[1].index))
    res = seed_test((by[0].loc[seeds] - by[1].loc[seeds]).to_numpy(float))
    return {"n_seen": int(g[is_seen]["language"].nunique()), "n_unseen": int(g[~is_seen]["language"].nunique()),
            "seen": float(by[0].loc[seeds].mean()) if seeds else math.nan,
            "unseen": float(by[1].loc[seeds].mean()) if seeds else math.nan, **res}


def _lexsim_rows(gains: pd.DataFrame, arm: str, target: str, sims: pd.DataFrame, prefix: list[str]) -> list[list[str]]:
    lang = gains.groupby("language")["gain"].mean().rename("gain").reset_index().merge(sims, on="language")
    rows = []
    for kind, label in (("max", "max over the arm's languages"), ("weighted", "share-weighted mean")):
        n, rho, p = spearman_permutation(lang[kind], lang["gain"])
        rows.append([*prefix, arm, target, label, str(n), fmt_r(rho), fmt_p(p)])
    return rows


def _seen_rows(gains: pd.DataFrame, arm: str, target: str, seen: set[str],
               prefix: list[str]) -> tuple[list[str], float]:
    s = seen_unseen(gains, seen)
    return ([*prefix, arm, target, str(s["n_seen"]), str(s["n_unseen"]), fmt_points(s["seen"], sign=True),
             fmt_points(s["unseen"], sign=True), fmt_points(s["mean"], sign=True), fmt_ci(s["ci_low"], s["ci_high"]),
             fmt_p(s["p"])], s["p"])


def _no_lexsim_note(gains: pd.DataFrame, lexsim: pd.DataFrame) -> str:
    missing = sorted(set(gains["language"].astype(str)) - set(lexsim["target_language"].astype(str)))
    return f" No similarity (no local Tatoeba file) for: {', '.join(missing)}." if missing else ""


def _shares_text(shares: Mapping[str, Mapping[str, float]]) -> str:
    return "; ".join(f"{arm} " + ", ".join(f"{lang} {w:.0%}" for lang, w in langs.items())
                     for arm, langs in shares.items())


def _lexsim_table_rows(study: StudyLike, shares: Mapping[str, Mapping[str, float]],
                       lexsim: pd.DataFrame) -> tuple[list[list[str]], list[list[str]]]:
    """The correlation rows and the seen-vs-unseen rows (with the corrected p) of every model, arm and target."""
    models = models_of(study.gains)
    corr_rows, seen_rows, seen_p = [], [], []
    for model, arm in ((m, a) for m in models for a in shares):
        g_arm = study.gains[(study.gains["model"].astype(str) == model) & (study.gains["setup"].astype(str) == arm)]
        sims = arm_similarity(lexsim, shares[arm])
        seen = {lang for lang in shares[arm] if lang != "en"}
        for target, g in g_arm.groupby("target", sort=True):
            corr_rows += _lexsim_rows(g, arm, str(target), sims, model_label(model, models))
            if seen:
                row, p = _seen_rows(g, arm, str(target), seen, model_label(model, models))
                seen_rows.append(row)
                seen_p.append(p)
    return corr_rows, [[*r, h] for r, h in zip(seen_rows, _holm_column(seen_p, study.config))]


def lexical_similarity(study: StudyLike, options: Mapping[str, Any]) -> str:
    """Study 3: per arm, the target languages' lexical similarity to its languages against their gain,
    and seen vs unseen languages."""
    spec = _spec(study) if (Path(study.dir) / "spec.yaml").is_file() else None
    shares = arm_shares(study, options, spec)
    lexsim = _read_measure_file(study, options, "lexsim.csv", "lexical_similarity")
    corr_rows, seen_rows = _lexsim_table_rows(study, shares, lexsim)
    head = ["model"] if len(models_of(study.gains)) > 1 else []
    t1 = markdown_table([*head, "arm", "target", "similarity", "n languages", "Spearman ρ", "p"], corr_rows)
    t2 = markdown_table([*head, "arm", "target", "n seen", "n unseen", "seen gain", "unseen gain", "Δ (points)",
                         "95 % CI", "p", corrected_header(study.config)], seen_rows)
    note1 = ("*Method:* similarity = sub-word weighted Jaccard (the study model's tokenizer pieces) of a target "
             "language's Tatoeba side with each intermediate language's (English: a seeded sample of the pooled "
             "English sides), lexsim.csv; per arm "
             "the max and the share-weighted mean over its languages, against each language's mean gain over seeds; "
             f"Spearman's ρ with a two-sided permutation p ({PERMUTATIONS:,} seeded resamples). Shares: "
             f"{_shares_text(shares)}." + _no_lexsim_note(study.gains, lexsim))
    note2 = ("*Method:* per seed, the mean gain of the languages in the arm's non-English intermediate data (seen) minus "
             "that of the other evaluated languages (unseen; English, the target's training language, in neither); "
             "mean over seeds, 95 % t interval, two-sided one-sample t-test." + SEED_RULE)
    return section("Lexical similarity to the intermediate languages", [t1, note1, t2 if seen_rows else "",
                                                                         note2 if seen_rows else ""])


# =========================================================================== 4. crossover


def group_seed_means(per_seed: pd.DataFrame, setups: Sequence[str], targets: Sequence[str]) -> pd.Series:
    """Per seed: the mean over ``setups`` of the mean over ``targets`` of the language-averaged gain."""
    sub = per_seed[per_seed["setup"].astype(str).isin(setups) & per_seed["target"].astype(str).isin(targets)]
    by_setup = sub.groupby(["seed", "setup"])["gain"].mean()  # targets with equal weight
    return by_setup.groupby("seed").mean()


def _aligned(*series: pd.Series) -> list[np.ndarray]:
    seeds = sorted(set.intersection(*[set(s.index) for s in series])) if series else []
    return [s.loc[seeds].to_numpy(float) for s in series]


def crossover_rows(per_seed: pd.DataFrame, a: Sequence[str], b: Sequence[str], a_t: Sequence[str],
                   b_t: Sequence[str]) -> list[tuple[str, dict[str, float]]]:
    """The four cell means, the a - b difference on each target group, and the interaction (per seed)."""
    aa, ba, ab, bb = _aligned(group_seed_means(per_seed, a, a_t), group_seed_means(per_seed, b, a_t),
                              group_seed_means(per_seed, a, b_t), group_seed_means(per_seed, b, b_t))
    la, lb, ta, tb = " + ".join(a), " + ".join(b), " + ".join(a_t), " + ".join(b_t)
    return [(f"{la} on {ta}", seed_test(aa)), (f"{lb} on {ta}", seed_test(ba)), (f"{la} on {tb}", seed_test(ab)),
            (f"{lb} on {tb}", seed_test(bb)), (f"({la}) − ({lb}) on {ta}", seed_test(aa - ba)),
            (f"({la}) − ({lb}) on {tb}", seed_test(ab - bb)),
            ("interaction: difference on " f"{ta} − difference on {tb}", seed_test((aa - ba) - (ab - bb)))]


def control_rows(per_seed: pd.DataFrame, a: Sequence[str], a_t: Sequence[str],
                 b_t: Sequence[str]) -> list[tuple[str, dict[str, float]]]:
    """Every pair of ``a`` setups against each other on each target group, and its crossover."""
    rows = []
    for i, s1 in enumerate(a):
        for s2 in a[i + 1:]:
            d_a, d_b = (np.subtract(*_aligned(group_seed_means(per_seed, [s1], t), group_seed_means(per_seed, [s2], t)))
                        for t in (a_t, b_t))
            n = min(len(d_a), len(d_b))
            rows += [(f"{s1} − {s2} on {' + '.join(a_t)}", seed_test(d_a)),
                     (f"{s1} − {s2} on {' + '.join(b_t)}", seed_test(d_b)),
                     (f"{s1} − {s2}: difference on {' + '.join(a_t)} − on {' + '.join(b_t)}",
                      seed_test(d_a[:n] - d_b[:n]))]
    return rows


def _check_crossover(study: StudyLike, options: Mapping[str, Any]) -> dict[str, list[str]]:
    out = {}
    setups, targets = set(study.gains["setup"].astype(str)), set(study.gains["target"].astype(str))
    for key, known in (("a", setups), ("b", setups), ("a_targets", targets), ("b_targets", targets)):
        value = options.get(key)
        vals = [str(v) for v in (value if isinstance(value, list) else [value] if value else [])]
        unknown = [v for v in vals if v not in known]
        if not vals or unknown:
            raise options_error(study, "crossover", key, f"expected a list of names among {sorted(known)}; "
                                f"got {value!r}")
        out[key] = vals
    return out


def crossover(study: StudyLike, options: Mapping[str, Any]) -> str:
    """Study 4: (gain of ``a`` - gain of ``b``) on ``a_targets`` minus the same on ``b_targets``, per seed,
    and the ``a`` setups against each other (same-domain control)."""
    o = _check_crossover(study, options)
    models = models_of(study.gains)
    tables = []
    for model in models:
        per_seed = setup_target_seed_means(study.gains[study.gains["model"].astype(str) == model])
        rows = crossover_rows(per_seed, o["a"], o["b"], o["a_targets"], o["b_targets"])
        rows += control_rows(per_seed, o["a"], o["a_targets"], o["b_targets"])
        holm = _holm_column([r["p"] for _, r in rows], study.config)
        tables.append((f"Model {model}." if len(models) > 1 else "") + "\n\n" + markdown_table(
            ["quantity", "mean (points)", "95 % CI", "p", corrected_header(study.config), "n seeds"],
            [[name, fmt_points(r["mean"], sign=True), fmt_ci(r["ci_low"], r["ci_high"]), fmt_p(r["p"]), h, str(r["n"])]
             for (name, r), h in zip(rows, holm)]))
    note = ("*Method:* per seed, each setup's gain averaged over a target's languages, targets of a group with equal "
            "weight, setups of a group with equal weight; each quantity (a cell mean, a difference, the interaction) "
            "is formed per seed and tested with a two-sided one-sample t-test over seeds (95 % t interval). The last "
            "rows compare the first group's setups with each other: the same-domain control for round "
            "differences." + SEED_RULE)
    return section("Domain crossover", [*(t.strip() for t in tables), note])


# =========================================================================== 5. above chance


def item_counts(study: StudyLike, target: str, options: Mapping[str, Any]) -> dict[str, float] | None:
    """Items per language of ``target``: ``options['n_items']`` (int or {language: n}), else a count
    metric in results.csv (max over setups and seeds); None when unknown."""
    given = options.get("n_items")
    langs = sorted(study.scores[study.scores["target"].astype(str) == target]["language"].astype(str).unique())
    if isinstance(given, Mapping):
        return {str(k): float(v) for k, v in given.items()}
    if given:
        return dict.fromkeys(langs, float(given))
    r = study.results
    rows = r[(r["target"].astype(str) == target) & r["metric"].astype(str).isin(COUNT_METRICS)]
    if rows.empty:
        return None
    return rows.groupby(rows["language"].astype(str))["value"].max().astype(float).to_dict()


def chance_row(scores: pd.DataFrame, chance: float, items: Mapping[str, float] | None) -> dict[str, Any]:
    """Mean accuracy of one (model, setup) over seeds and languages vs ``chance``: one-sided t over seeds,
    and a binomial test of the pooled items (mean accuracy over seeds; items counted once)."""
    from scipy.stats import binomtest

    col = score_column(scores)
    per_seed = scores.groupby("seed")[col].mean().to_numpy(float)
    res = seed_test(per_seed - chance)
    p_t = res["p"] / 2 if res["t"] > 0 else 1 - res["p"] / 2 if np.isfinite(res["p"]) else math.nan
    out = {"mean": res["mean"] + chance, "ci_low": res["ci_low"] + chance, "ci_high": res["ci_high"] + chance,
           "n": res["n"], "p_t": p_t, "n_items": math.nan, "p_binom": math.nan,
           "n_languages": int(scores["language"].nunique())}
    langs = sorted(scores["language"].astype(str).unique())
    if items and all(lang in items for lang in langs):
        lang_acc = scores.groupby(scores["language"].astype(str))[col].mean()
        n = int(sum(items[lang] for lang in langs))
        k = int(round(sum(lang_acc[lang] / 100.0 * items[lang] for lang in langs)))
        out.update(n_items=n, p_binom=float(binomtest(k, n, chance / 100.0, alternative="greater").pvalue))
    return out


def above_chance(study: StudyLike, options: Mapping[str, Any]) -> str:
    """Study 5: is each setup's accuracy on the target above chance (one-sided, seeds; binomial on items)?"""
    target, chance = str(options.get("target", "")), options.get("chance")
    scores = study.scores[study.scores["target"].astype(str) == target]
    if scores.empty:
        raise options_error(study, "above_chance", "target", f"no scores for target {target!r}; the results have "
                            f"{sorted(study.scores['target'].astype(str).unique())}")
    if not isinstance(chance, (int, float)) or not 0 < chance < 100:
        raise options_error(study, "above_chance", "chance", f"expected the chance accuracy in points, got {chance!r}")
    items = item_counts(study, target, options)
    rows = [({"model": str(m), "setup": str(s)}, chance_row(g, float(chance), items))
            for (m, s), g in scores.groupby(["model", "setup"], sort=True)]
    models = models_of(scores)
    holm = _holm_column([r["p_t"] for _, r in rows], study.config)
    table = markdown_table(
        [*(["model"] if len(models) > 1 else []), "setup", "accuracy", "95 % CI", "chance", "p (t, one-sided)",
         corrected_header(study.config), "items", "p (binomial)", "n seeds", "n languages"],
        [[*model_label(k["model"], models), k["setup"], fmt_points(r["mean"]),
          fmt_ci(r["ci_low"], r["ci_high"], fmt_points), fmt_points(chance), fmt_p(r["p_t"]), h,
          str(int(r["n_items"])) if np.isfinite(r["n_items"]) else "not known", fmt_p(r["p_binom"]), str(r["n"]),
          str(r["n_languages"])] for (k, r), h in zip(rows, holm)])
    items_note = ("the binomial test pools the languages' items (counted once: every seed re-scores the same items) "
                  "at the accuracy averaged over seeds" if items else
                  "the item count is not in results.csv (no count metric) nor in the options (n_items), so no "
                  "binomial test")
    note = (f"*Method:* per seed, the accuracy on {target} averaged over languages; mean over seeds with a 95 % t "
            f"interval, one-sided one-sample t-test of accuracy > chance (df = seeds - 1); {items_note}." + SEED_RULE)
    return section(f"Above chance on {target}", [table, note])


EXTRAS: dict[str, Callable[[Any, dict], str]] = {
    "similarity_family": similarity_family,
    "forgetting": forgetting,
    "lexical_similarity": lexical_similarity,
    "crossover": crossover,
    "above_chance": above_chance,
}
MEASURES: dict[str, Callable[[Any, dict], Path]] = {
    "similarity_family": measure_similarity,
    "lexical_similarity": measure_lexsim,
}
