"""Task, language and domain similarity measures, and their correlation with gains.

Measures (each says where it comes from):

* ``text_emb`` — cosine between the mean sentence embeddings of two tasks' English inputs
  ("TextEmb", Vu et al. 2020, *Exploring and Predicting Transferability across NLP
  Tasks*, EMNLP, §3.1). Sentence embedding = mean-pooled last hidden states of an encoder.
* ``task_emb`` — cosine between task embeddings built from the diagonal of the empirical
  Fisher information of a model fine-tuned on each task ("TaskEmb", same paper, §3.2, after
  Achille et al. 2019 *Task2Vec*): the squared gradient of the task loss (gold labels)
  w.r.t. the encoder parameters, averaged over examples.
* ``same_format`` / ``same_label_space`` — indicators from the task catalog (format, label list).
* ``subword_jaccard`` / ``subword_weighted_jaccard`` — overlap of the tokenizer-piece sets /
  piece frequency distributions (weighted Jaccard = sum of minima / sum of maxima of the
  relative frequencies), as vocabulary-overlap measures in e.g. Wu & Dredze 2019 and
  Pires et al. 2019.
* ``lexical_overlap`` — Jaccard overlap of lower-cased word types of a language's side of
  parallel text (Tatoeba) with the English side.
* ``word_js`` / ``subword_js`` — Jensen-Shannon divergence (base 2, in [0, 1]) between word
  or sub-word unigram distributions, a standard domain-divergence measure (Plank & van
  Noord 2011; Ruder & Plank 2017).

The model-based measures are cached in a JSON file (see :class:`SimilarityCache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xstilts.analysis.metadata import find_task
from xstilts.analysis.stats import rank_correlation
from xstilts.errors import XStiltsError
from xstilts.languages import Language, find_language
from xstilts.tasks.catalog import TaskSpec
from xstilts.tasks.types import Example

log = logging.getLogger(__name__)

MEASURE_DOCS: dict[str, str] = {
    "text_emb": "TextEmb: cosine of mean-pooled encoder embeddings of the tasks' English inputs (Vu et al. 2020, §3.1).",
    "task_emb": "TaskEmb: cosine of diagonal empirical-Fisher task embeddings of models fine-tuned on each task (Vu et al. 2020, §3.2; Achille et al. 2019).",
    "same_format": "1 if both tasks have the same input/output format (task catalog), else 0.",
    "same_label_space": "1 if both tasks have the same label list (task catalog), else 0.",
    "subword_jaccard": "Jaccard overlap of the sets of tokenizer pieces in the two texts (Wu & Dredze 2019; Pires et al. 2019).",
    "subword_weighted_jaccard": "Weighted Jaccard (sum of minima / sum of maxima) of relative piece frequencies.",
    "lexical_overlap": "Jaccard overlap of lower-cased word types of a language's side of Tatoeba with the English side.",
    "word_js": "Jensen-Shannon divergence (base 2) of word unigram distributions (Plank & van Noord 2011; Ruder & Plank 2017); lower = more similar.",
    "subword_js": "Jensen-Shannon divergence (base 2) of sub-word unigram distributions; lower = more similar.",
    "same_domain": "1 if the catalog gives both tasks the same text domain, else 0 (n/a when either is unknown or 'mixed').",
    "same_family": "1 if the language is in the same family as a reference language, else 0.",
    "same_script": "1 if the language is written in the same script as a reference language, else 0.",
}

MEASURE_LABELS: dict[str, str] = {
    "text_emb": "TextEmb (cosine of mean embeddings)",
    "task_emb": "TaskEmb (cosine of Fisher embeddings)",
    "same_format": "same format (0 = no, 1 = yes)",
    "same_label_space": "same label space (0 = no, 1 = yes)",
    "subword_jaccard": "sub-word vocabulary Jaccard",
    "subword_weighted_jaccard": "sub-word weighted Jaccard",
    "lexical_overlap": "word-type overlap with English (Jaccard)",
    "word_js": "word JS divergence (lower = closer)",
    "subword_js": "sub-word JS divergence (lower = closer)",
    "same_domain": "same domain (0 = no, 1 = yes)",
    "same_family": "same family (0 = no, 1 = yes)",
    "same_script": "same script (0 = no, 1 = yes)",
}
#: fewer pairs than this give no bootstrap CI for a rank correlation
MIN_PAIRS_FOR_CI = 5

_WORD = re.compile(r"\w+", re.UNICODE)


# --------------------------------------------------------------------------- text


def load_task_texts(
    task: str,
    *,
    language: str = "en",
    split: str | None = None,
    max_examples: int | None = 200,
    seed: int = 0,
    data_dir: str | Path | None = None,
    side: str = "input",
) -> list[str]:
    """A deterministic sample of a task's texts in ``language`` (``tasks.loading.load_examples``).

    ``split`` defaults to "train" when the task has one, else its evaluation split. For
    bitext (Tatoeba) ``side`` picks "source" (the non-English side) or "target"/"input"
    (English).
    """
    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.formats import get_format
    from xstilts.tasks.loading import load_examples, local_availability

    spec = get_task(task)
    if split is None:
        split = _pick_split(spec, language, data_dir, local_availability)
    examples = load_examples(spec, language, split, data_dir=data_dir, max_examples=max_examples, seed=seed)
    if side == "source":
        return [ex.source for ex in examples]
    fmt = get_format(spec.format)
    return [fmt.input_text(ex) for ex in examples]


def _pick_split(spec: TaskSpec, language: str, data_dir: str | Path | None, availability: Callable) -> str:
    """Prefer a split that exists locally (train, then the eval split, then any); else train/eval (hub)."""
    order = ["train", spec.eval_split, *spec.splits]
    try:
        local = {s for (lang, s) in availability(spec, data_dir) if lang == language}
    except (XStiltsError, OSError) as exc:  # best-effort here; loading reports real errors
        log.debug("local availability of %s unknown: %s", spec.name, exc)
        local = set()
    for s in order:
        if s in local:
            return s
    return "train" if "train" in spec.splits else spec.eval_split


def word_counts(texts: Iterable[str]) -> Counter:
    """Lower-cased word unigram counts (Unicode ``\\w+`` runs)."""
    c: Counter = Counter()
    for t in texts:
        c.update(w.lower() for w in _WORD.findall(t))
    return c


def subword_counts(texts: Iterable[str], tokenizer: Any) -> Counter:
    """Counts of the tokenizer's pieces over ``texts`` (no special tokens)."""
    c: Counter = Counter()
    for t in texts:
        c.update(tokenizer.tokenize(t))
    return c


def jaccard(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """|A ∩ B| / |A ∪ B| of the key sets; NaN when both are empty."""
    sa, sb = {k for k, v in a.items() if v > 0}, {k for k, v in b.items() if v > 0}
    union = sa | sb
    return len(sa & sb) / len(union) if union else math.nan


def _normalise(c: Mapping[str, float]) -> dict[str, float]:
    total = math.fsum(c.values())
    return {k: v / total for k, v in c.items()} if total > 0 else {}


def weighted_jaccard(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Sum of minima over sum of maxima of the two relative-frequency distributions."""
    pa, pb = _normalise(a), _normalise(b)
    keys = set(pa) | set(pb)
    if not keys:
        return math.nan
    # fsum: exactly rounded whatever the (hash-seeded) set order, so equal overlaps tie exactly in every process
    num = math.fsum(min(pa.get(k, 0.0), pb.get(k, 0.0)) for k in keys)
    den = math.fsum(max(pa.get(k, 0.0), pb.get(k, 0.0)) for k in keys)
    return num / den


def jensen_shannon(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count distributions."""
    from scipy.spatial.distance import jensenshannon

    keys = sorted(set(a) | set(b))
    if not keys:
        return math.nan
    p = np.array([a.get(k, 0.0) for k in keys], dtype=float)
    q = np.array([b.get(k, 0.0) for k in keys], dtype=float)
    if p.sum() == 0 or q.sum() == 0:
        return math.nan
    return float(jensenshannon(p, q, base=2) ** 2)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (NaN if either is zero)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return math.nan
    return float(a @ b / (na * nb))


# --------------------------------------------------------------------------- models


def load_encoder_for_analysis(name_or_path: str) -> tuple[Any, Any]:
    """Load an encoder and tokenizer with ``xstilts.models.load_encoder`` (eval mode)."""
    from xstilts.models import load_encoder

    model, tokenizer = load_encoder(str(name_or_path))
    model.eval()
    return model, tokenizer


def mean_embedding(
    texts: Sequence[str], model: Any, tokenizer: Any, *, batch_size: int = 32, max_length: int = 128
) -> np.ndarray:
    """Mean over ``texts`` of their mean-pooled last-layer embeddings (padding masked out)."""
    import torch

    from xstilts.models.heads import pool

    if not texts:
        raise ValueError("mean_embedding needs at least one text")
    total = None
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            pooled = pool(model(**enc).last_hidden_state, enc["attention_mask"], "mean")
            s = pooled.float().sum(0).cpu().numpy()
            total = s if total is None else total + s
    return total / len(texts)


def default_fisher_filter(name: str) -> bool:
    """Parameters in the Fisher task embedding: the encoder's, minus its (sparse) embedding tables."""
    return "embeddings" not in name


def empirical_fisher_diagonal(
    model: Any,
    batches: Iterable[dict[str, Any]],
    loss_fn: Callable[[Any, dict[str, Any]], Any],
    *,
    param_filter: Callable[[str], bool] = default_fisher_filter,
) -> np.ndarray:
    """Diagonal empirical Fisher: mean over batches of the squared gradient of ``loss_fn``.

    Pass batches of one example each to get the per-example empirical Fisher of Vu et al.
    (2020). ``model`` is the module whose ``named_parameters`` (filtered) form the embedding.
    """
    import torch

    params = [(n, p) for n, p in model.named_parameters() if param_filter(n)]
    if not params:
        raise ValueError("no parameters selected for the Fisher embedding")
    sums = [torch.zeros_like(p, dtype=torch.float32) for _, p in params]
    was_training = model.training
    model.eval()
    n = 0
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
            for s, g in zip(sums, grads):
                if g is not None:
                    s += g.detach().float() ** 2
            n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("no batches for the Fisher embedding")
    return torch.cat([s.flatten() for s in sums]).div_(n).cpu().numpy()


def fisher_task_embedding(
    model_dir: str | Path,
    task: str,
    *,
    examples: Sequence[Example] | None = None,
    max_examples: int = 100,
    max_length: int = 128,
    seed: int = 0,
    data_dir: str | Path | None = None,
    split: str | None = None,
    param_filter: Callable[[str], bool] = default_fisher_filter,
) -> np.ndarray:
    """TaskEmb of ``task`` from an xstilts model dir holding a head for it.

    Loads ``MultiTaskModel.load(model_dir, heads=[task])``, featurises ``examples`` (default:
    a deterministic sample of the task's English ``split``, by default its training split, else
    its evaluation split) with the task's format, and returns the diagonal empirical Fisher of
    the encoder parameters, one example at a time.
    """
    from xstilts.models import MultiTaskModel
    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.formats import get_format
    from xstilts.tasks.formats.base import FeaturizeOptions
    from xstilts.tasks.loading import load_examples

    spec = get_task(task)
    if examples is None:
        split = split or ("train" if "train" in spec.splits else spec.eval_split)
        examples = load_examples(spec, "en", split, data_dir=data_dir, max_examples=max_examples, seed=seed)
    fmt = get_format(spec.format)
    model, tokenizer = MultiTaskModel.load(model_dir, heads=[task])
    feats = fmt.featurize(list(examples)[:max_examples], tokenizer,
                          FeaturizeOptions(max_length=max_length), spec.label_list)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = (fmt.collate([f], pad) for f in feats)

    def loss_fn(m: Any, batch: dict[str, Any]) -> Any:
        return m(task, **batch)["loss"]

    return empirical_fisher_diagonal(model, batches, loss_fn,
                                     param_filter=lambda n: n.startswith("encoder.") and param_filter(n))


# --------------------------------------------------------------------------- cache


class SimilarityCache:
    """A JSON file of computed similarity values, keyed by measure and everything they depend on."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._data: dict[str, Any] = {}
        if self.path is not None and self.path.is_file():
            try:
                self._data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                log.warning("similarity cache %s is not valid JSON; starting a new one", self.path)

    @staticmethod
    def key(*parts: Any) -> str:
        return "|".join(str(p) for p in parts)

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def set(self, key: str, value: Any) -> None:
        self._data[key] = value

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True, allow_nan=True))
        os.replace(tmp, self.path)


def model_identity(name_or_path: str | Path) -> str:
    """A cache key part for a model: its name, plus a content stamp when it is a directory."""
    p = Path(str(name_or_path))
    if p.exists():
        stamp = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.rglob("*") if f.is_file())
        return f"{p.resolve()}#{hashlib.sha1(repr(stamp).encode()).hexdigest()[:12]}"
    return str(name_or_path)


# --------------------------------------------------------------------------- tables


def _cached(cache: SimilarityCache, key: str, compute: Callable[[], float]) -> float:
    hit = cache.get(key)
    if hit is not None:
        return float(hit)
    value = float(compute())
    cache.set(key, value)
    return value


def catalog_measures(a: TaskSpec | None, b: TaskSpec | None) -> dict[str, float]:
    """``same_format``, ``same_label_space``, ``same_domain`` of two catalog tasks (NaN when unknown)."""
    both = a is not None and b is not None
    comparable = both and a.domain and b.domain and "mixed" not in (a.domain, b.domain)
    return {
        "same_format": float(a.format == b.format) if both else math.nan,
        "same_label_space": float(bool(a.label_list) and a.label_list == b.label_list) if both else math.nan,
        "same_domain": float(a.domain == b.domain) if comparable else math.nan,
    }


def text_measures(ta: Sequence[str] | None, tb: Sequence[str] | None, tokenizer: Any | None) -> dict[str, float]:
    """Word and sub-word overlap / divergence of two text samples (NaN without texts or tokenizer)."""
    out = dict.fromkeys(("word_js", "subword_jaccard", "subword_weighted_jaccard", "subword_js"), math.nan)
    if not ta or not tb:
        return out
    out["word_js"] = jensen_shannon(word_counts(ta), word_counts(tb))
    if tokenizer is not None:
        sa, sb = subword_counts(ta, tokenizer), subword_counts(tb, tokenizer)
        out.update(subword_jaccard=jaccard(sa, sb), subword_weighted_jaccard=weighted_jaccard(sa, sb),
                   subword_js=jensen_shannon(sa, sb))
    return out


class _TextEmb:
    """TextEmb of task pairs: mean embeddings computed once per task, cosines cached."""

    def __init__(self, encoder: tuple[Any, Any], encoder_id: str, sample_id: str, cache: SimilarityCache,
                 texts: Mapping[str, Sequence[str]]):
        self.model, self.tokenizer = encoder
        self.key_parts = ("text_emb", encoder_id, sample_id)
        self.cache, self.texts = cache, texts
        self.emb: dict[str, np.ndarray] = {}

    def _embedding(self, task: str) -> np.ndarray:
        if task not in self.emb:
            self.emb[task] = mean_embedding(list(self.texts[task]), self.model, self.tokenizer)
        return self.emb[task]

    def __call__(self, inter: str, target: str) -> float:
        if not self.texts.get(inter) or not self.texts.get(target):
            return math.nan
        key = SimilarityCache.key(*self.key_parts, inter, target)
        return _cached(self.cache, key, lambda: cosine(self._embedding(inter), self._embedding(target)))


def task_similarity_table(
    pairs: Sequence[tuple[str, str]],
    texts: Mapping[str, Sequence[str]],
    *,
    tokenizer: Any | None = None,
    encoder: tuple[Any, Any] | None = None,
    encoder_id: str = "",
    fisher: Mapping[str, np.ndarray] | None = None,
    task_lookup: Callable[[str], TaskSpec | None] = find_task,
    cache: SimilarityCache | None = None,
    sample_id: str = "",
) -> pd.DataFrame:
    """Similarity measures for (intermediate, target) task ``pairs``, one row per pair.

    ``texts`` maps each task to its (English) input sample. ``tokenizer`` enables the
    sub-word measures, ``encoder`` = (model, tokenizer) enables ``text_emb``, ``fisher`` =
    {task: Fisher vector} enables ``task_emb``. Measures without their inputs are NaN.
    """
    text_emb = _TextEmb(encoder, encoder_id, sample_id, cache or SimilarityCache(None), texts) if encoder else None
    fisher = fisher or {}
    rows = []
    for inter, target in pairs:
        row: dict[str, Any] = {"intermediate": inter, "target": target,
                               **catalog_measures(task_lookup(inter), task_lookup(target)),
                               **text_measures(texts.get(inter), texts.get(target), tokenizer)}
        row["text_emb"] = text_emb(inter, target) if text_emb is not None else math.nan
        row["task_emb"] = cosine(fisher[inter], fisher[target]) if inter in fisher and target in fisher else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def language_similarity_table(
    languages: Sequence[str],
    parallel: Mapping[str, tuple[Sequence[str], Sequence[str]]],
    *,
    tokenizer: Any | None = None,
    references: Sequence[str] = ("en",),
    lookup: Callable[[str], Language | None] = find_language,
) -> pd.DataFrame:
    """Similarity of each language to English and to the intermediate data's languages.

    ``parallel`` maps a language to (its sentences, their English translations), e.g. from
    Tatoeba. ``subword_*`` compare the language's side with the English side (or, for a
    non-English reference, with that reference's own side); ``lexical_overlap`` compares
    word types with the English side. ``same_family``/``same_script`` are 1 when the
    language shares them with any reference language (NaN when metadata is missing).
    """
    refs = [lookup(r) for r in references]
    rows = []
    for code in languages:
        row: dict[str, Any] = {"language": code, **_shared_metadata(lookup(code), refs)}
        if code in parallel:
            src, eng = parallel[code]
            row["lexical_overlap"] = jaccard(word_counts(src), word_counts(eng))
            row.update(_subword_overlap(src, eng, parallel, references, tokenizer))
        else:
            row["lexical_overlap"] = row["subword_jaccard"] = row["subword_weighted_jaccard"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["language", "same_family", "same_script", "lexical_overlap",
                                       "subword_jaccard", "subword_weighted_jaccard"])


def _shared_metadata(lang: Language | None, refs: Sequence[Language | None]) -> dict[str, float]:
    """``same_family`` / ``same_script``: 1 if shared with any reference, NaN when any of them is unknown."""
    out = {}
    for attr in ("family", "script"):
        mine = getattr(lang, attr, None)
        theirs = [getattr(r, attr, None) for r in refs]
        known = mine is not None and all(t is not None for t in theirs)
        out[f"same_{attr}"] = float(any(mine == t for t in theirs)) if known else math.nan
    return out


def _subword_overlap(src: Sequence[str], eng: Sequence[str], parallel: Mapping[str, tuple[Sequence[str], Sequence[str]]],
                     references: Sequence[str], tokenizer: Any | None) -> dict[str, float]:
    """Best sub-word (weighted) Jaccard of a language's side with any reference's side."""
    if tokenizer is None:
        return {"subword_jaccard": math.nan, "subword_weighted_jaccard": math.nan}
    mine = subword_counts(src, tokenizer)
    ref_counts = [subword_counts(eng if r == "en" else parallel[r][0], tokenizer)
                  for r in references if r == "en" or r in parallel]
    return {"subword_jaccard": max((jaccard(mine, rc) for rc in ref_counts), default=math.nan),
            "subword_weighted_jaccard": max((weighted_jaccard(mine, rc) for rc in ref_counts), default=math.nan)}


def correlate_with_gains(
    points: pd.DataFrame,
    measures: Sequence[str],
    *,
    gain: str = "mean_gain",
    by: str | None = None,
    n_boot: int = 2_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Spearman and Kendall correlation (bootstrap CIs) of each measure with the gain.

    ``points`` has one row per observation (e.g. (setup, target) or (setup, target,
    language)) with the measure columns and ``gain``. With ``by`` (e.g. "family"), one row
    per (group, measure) as well as the overall rows (group "all"). Below
    :data:`MIN_PAIRS_FOR_CI` pairs the coefficients are given without a CI (NaN bounds).
    """
    rows = []
    groups: list[tuple[str, pd.DataFrame]] = [("all", points)]
    if by is not None and by in points.columns:
        groups += [(str(k), g) for k, g in points.groupby(points[by].fillna("unknown").astype(str), sort=True)]
    for name, g in groups:
        for m in measures:
            if m not in g.columns:
                continue
            x, y = g[m].to_numpy(float), g[gain].to_numpy(float)
            n_ok = int((np.isfinite(x) & np.isfinite(y)).sum())
            c = rank_correlation(x, y, n_boot=n_boot if n_ok >= MIN_PAIRS_FOR_CI else 0, seed=seed)
            rows.append({"group": name, "measure": m, **c.as_dict()})
    return pd.DataFrame(rows)
