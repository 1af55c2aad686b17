"""Sentence-retrieval scores: Tatoeba accuracy, BUCC 2018 bitext-mining F1, mAP@k / MRR@k.

Similarities are cosine (embeddings are L2-normalised here unless told they already are).
k-nearest-neighbour search uses ``faiss`` (an optional extra, imported lazily) and falls back
to numpy (exact, same result) when it is not installed.

Tatoeba direction. XTREME (google-research/xtreme ``third_party/utils_retrieve.py``,
``similarity_search``, called from ``third_party/evaluate_retrieval.py``) indexes the
*non-English* sentences and queries the index with the *English* ones: prediction ``i`` is
the non-English row nearest to English row ``i``. :func:`tatoeba_scores` reports that
direction as ``accuracy`` and the other one (every non-English sentence looks for its English
translation) as ``accuracy_xx_to_en``. jiant (``jiant/tasks/evaluate/core.py``,
``TatoebaEvaluationScheme``) does the same as XTREME.

Margin-based scoring follows Artetxe & Schwenk (2019), as LASER's ``mine_bitexts.py`` and
XTREME's ``third_party/utils_retrieve.py`` do::

    score(x, y) = margin(cos(x, y), (mean_k cos(x, NN_k(x in Y)) + mean_k cos(y, NN_k(y in X))) / 2)

with ``margin`` one of ``ratio`` (a / b, the default), ``distance`` (a - b) or ``absolute`` (a).

BUCC 2018 follows ``utils_retrieve.py`` (``mine_bitext`` with ``retrieval="max"``,
``bucc_optimize``, ``bucc_extract``, ``bucc_eval``): identical sentences are embedded once,
candidates come from the k nearest neighbours in both directions, a pair is *kept when its
score is >= the threshold*, and the threshold is the F1-optimal cut on a split with gold
pairs (XTREME and jiant tune it on the dev = "sample" split and apply it to the test split;
tuned on the scored split itself it is an *oracle*). A sentence text that occurs under several
ids stands for all of them (jiant ``jiant/tasks/lib/bucc2018.py``, ``create_ids_map``:
``duplicates="all_ids"``) or for none (XTREME/LASER ``read_sent2id`` drops repeated
sentences: ``duplicates="drop"``).

mAP@k follows XTREME's ``third_party/utils_lareqa.py`` (``average_precision_at_k``: the
divisor is ``min(#relevant, k)``, a repeated prediction counts once); for Mewsli-X, with one
gold entity per mention, it equals the mean reciprocal rank within the top k
(``third_party/utils_mewslix.py``, ``evaluate`` with ``k=20``, reported as ``map@20``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence

import numpy as np

from xstilts.errors import UnknownNameError, XStiltsError

logger = logging.getLogger(__name__)

MARGINS = ("ratio", "distance", "absolute")
_faiss_note_logged = False


def _faiss():
    global _faiss_note_logged
    try:
        import faiss  # type: ignore[import-not-found]

        return faiss
    except ImportError:
        if not _faiss_note_logged:
            logger.info("faiss is not installed; using exact numpy k-NN search (same results, slower on large sets)")
            _faiss_note_logged = True
        return None


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _check_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise XStiltsError(f"{name}: expected a non-empty 2-D embedding matrix, got shape {x.shape}")
    return x


def knn(x: np.ndarray, y: np.ndarray, k: int, *, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x`` the ``k`` most cosine-similar rows of ``y``: (similarities, indices), best first."""
    x = _check_2d(x, "knn x")
    y = _check_2d(y, "knn y")
    if x.shape[1] != y.shape[1]:
        raise XStiltsError(f"knn: embedding sizes differ ({x.shape[1]} vs {y.shape[1]})")
    if normalize:
        x, y = l2_normalize(x), l2_normalize(y)
    k = min(k, y.shape[0])
    faiss = _faiss()
    if faiss is not None:
        index = faiss.IndexFlatIP(y.shape[1])
        index.add(np.ascontiguousarray(y))
        sims, idx = index.search(np.ascontiguousarray(x), k)
        return sims, idx
    sims_all = x @ y.T
    idx = np.argpartition(-sims_all, kth=k - 1, axis=1)[:, :k]
    part = np.take_along_axis(sims_all, idx, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(idx, order, axis=1)


def knn_mean_similarity(x: np.ndarray, y: np.ndarray, k: int = 4, *, normalize: bool = True) -> np.ndarray:
    """Mean cosine similarity of each row of ``x`` to its ``k`` nearest neighbours in ``y``."""
    sims, _ = knn(x, y, k, normalize=normalize)
    return sims.mean(axis=1)


def _apply_margin(a: np.ndarray, b: np.ndarray, margin: str) -> np.ndarray:
    if margin == "ratio":
        return a / b
    if margin == "distance":
        return a - b
    if margin == "absolute":
        return a
    raise UnknownNameError("margin", margin, MARGINS)


def _margin_inputs(x: np.ndarray, y: np.ndarray, margin: str, normalize: bool, x_name: str,
                   y_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked (and, when asked, L2-normalised) embedding matrices for a margin-based scorer."""
    if margin not in MARGINS:
        raise UnknownNameError("margin", margin, MARGINS)
    x, y = _check_2d(x, x_name), _check_2d(y, y_name)
    return (l2_normalize(x), l2_normalize(y)) if normalize else (x, y)


def margin_scores(x: np.ndarray, y: np.ndarray, *, k: int = 4, margin: str = "ratio", normalize: bool = True) -> np.ndarray:
    """Full ``[len(x), len(y)]`` matrix of margin-based scores (see module docstring)."""
    x, y = _margin_inputs(x, y, margin, normalize, "margin_scores x", "margin_scores y")
    fwd = knn_mean_similarity(x, y, k, normalize=False)
    bwd = knn_mean_similarity(y, x, k, normalize=False)
    return _apply_margin(x @ y.T, (fwd[:, None] + bwd[None, :]) / 2, margin)


def nearest_neighbours(src_emb: np.ndarray, tgt_emb: np.ndarray, *, margin: str | None = None, k: int = 4,
                       normalize: bool = True) -> np.ndarray:
    """Index of the best target for every source row, by cosine (``margin=None``) or margin score."""
    if margin is None:
        _, idx = knn(src_emb, tgt_emb, 1, normalize=normalize)
        return idx[:, 0]
    return margin_scores(src_emb, tgt_emb, k=k, margin=margin, normalize=normalize).argmax(axis=1)


def _parallel(a: np.ndarray, b: np.ndarray, what: str, a_name: str, b_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as 2-D float arrays with one row per translation pair; XStiltsError otherwise."""
    a = _check_2d(a, f"{what} {a_name} embeddings")
    b = _check_2d(b, f"{what} {b_name} embeddings")
    if a.shape[0] != b.shape[0]:
        raise XStiltsError(f"{what}: {a.shape[0]} {a_name} vs {b.shape[0]} {b_name} sentences; they must be parallel")
    return a, b


def tatoeba_accuracy(query_emb: np.ndarray, index_emb: np.ndarray, *, margin: str | None = None, k: int = 4,
                     normalize: bool = True) -> float:
    """Accuracy (0-100) of one retrieval direction: query row ``i`` is right iff its nearest index row is ``i``.

    XTREME's Tatoeba number is ``tatoeba_accuracy(en_emb, xx_emb)`` (English queries, the
    non-English sentences indexed); :func:`tatoeba_scores` computes both directions.
    ``margin`` switches cosine for margin scoring.
    """
    query_emb, index_emb = _parallel(query_emb, index_emb, "tatoeba_accuracy", "query", "index")
    pred = nearest_neighbours(query_emb, index_emb, margin=margin, k=k, normalize=normalize)
    return 100.0 * float(np.mean(pred == np.arange(query_emb.shape[0])))


def tatoeba_predictions(xx_emb: np.ndarray, en_emb: np.ndarray, *, margin: str | None = None, k: int = 4,
                        normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(en_to_xx, xx_to_en)``: for every English row the nearest non-English row (XTREME's direction),
    and for every non-English row the nearest English row. Row ``i`` of both sides is a translation pair."""
    xx_emb, en_emb = _parallel(xx_emb, en_emb, "tatoeba", "non-English", "English")
    if margin is not None:  # the margin matrix of one direction is the other's transpose: compute it once
        scores = margin_scores(xx_emb, en_emb, k=k, margin=margin, normalize=normalize)
        return scores.argmax(axis=0), scores.argmax(axis=1)
    en_to_xx = nearest_neighbours(en_emb, xx_emb, k=k, normalize=normalize)
    xx_to_en = nearest_neighbours(xx_emb, en_emb, k=k, normalize=normalize)
    return en_to_xx, xx_to_en


def tatoeba_scores(xx_emb: np.ndarray, en_emb: np.ndarray, *, margin: str | None = None, k: int = 4,
                   normalize: bool = True) -> dict[str, float]:
    """Tatoeba accuracy (0-100) in both directions.

    ``accuracy``: XTREME's (English query, nearest non-English sentence; ``similarity_search``
    in ``third_party/utils_retrieve.py``). ``accuracy_xx_to_en``: the other direction.
    """
    en_to_xx, xx_to_en = tatoeba_predictions(xx_emb, en_emb, margin=margin, k=k, normalize=normalize)
    gold = np.arange(len(en_to_xx))
    return {"accuracy": 100.0 * float(np.mean(en_to_xx == gold)),
            "accuracy_xx_to_en": 100.0 * float(np.mean(xx_to_en == gold))}


def mine_bitext(src_emb: np.ndarray, tgt_emb: np.ndarray, *, k: int = 4, margin: str = "ratio",
                normalize: bool = True) -> list[tuple[int, int, float]]:
    """Candidate pairs ``(src_index, tgt_index, score)`` by LASER's "max" retrieval.

    Each source takes its best-scoring target among its ``k`` nearest neighbours and each
    target its best source; the union is visited by decreasing score, keeping a pair only
    when neither side was used by a better pair. Sorted by decreasing score.
    """
    x, y = _margin_inputs(src_emb, tgt_emb, margin, normalize, "mine_bitext src_emb", "mine_bitext tgt_emb")
    x2y_sim, x2y_idx = knn(x, y, k, normalize=False)
    y2x_sim, y2x_idx = knn(y, x, k, normalize=False)
    x2y_mean, y2x_mean = x2y_sim.mean(axis=1), y2x_sim.mean(axis=1)
    fwd = _apply_margin(x2y_sim, (x2y_mean[:, None] + y2x_mean[x2y_idx]) / 2, margin)
    bwd = _apply_margin(y2x_sim, (y2x_mean[:, None] + x2y_mean[y2x_idx]) / 2, margin)
    fwd_best = x2y_idx[np.arange(len(x)), fwd.argmax(axis=1)]
    bwd_best = y2x_idx[np.arange(len(y)), bwd.argmax(axis=1)]
    src = np.concatenate([np.arange(len(x)), bwd_best])
    tgt = np.concatenate([fwd_best, np.arange(len(y))])
    scores = np.concatenate([fwd.max(axis=1), bwd.max(axis=1)])
    seen_src: set[int] = set()
    seen_tgt: set[int] = set()
    out: list[tuple[int, int, float]] = []
    for i in np.argsort(-scores, kind="stable"):
        s, t = int(src[i]), int(tgt[i])
        if s not in seen_src and t not in seen_tgt:
            seen_src.add(s)
            seen_tgt.add(t)
            out.append((s, t, float(scores[i])))
    return out


# ---------------------------------------------------------------------- BUCC 2018
DUPLICATES = ("all_ids", "drop")
Pair = tuple[str, str]


def _unify(keys: Sequence[Hashable]) -> tuple[list[int], list[list[int]]]:
    """First row of every distinct key, and the rows of each distinct key (first-seen order)."""
    position: dict[Hashable, int] = {}
    groups: list[list[int]] = []
    for row, key in enumerate(keys):
        if key not in position:
            position[key] = len(groups)
            groups.append([])
        groups[position[key]].append(row)
    return [g[0] for g in groups], groups


def _check_ids(emb: np.ndarray, ids: Sequence[str], texts: Sequence[str] | None, side: str) -> Sequence[Hashable]:
    if len(ids) != len(emb):
        raise XStiltsError(f"bucc: {len(ids)} {side} ids for {len(emb)} {side} embedding rows; they must be aligned")
    if texts is None:
        return range(len(ids))
    if len(texts) != len(ids):
        raise XStiltsError(f"bucc: {len(texts)} {side} texts for {len(ids)} {side} ids; they must be aligned")
    return texts


def bucc_candidates(src_emb: np.ndarray, tgt_emb: np.ndarray, src_ids: Sequence[str], tgt_ids: Sequence[str],
                    src_texts: Sequence[str] | None = None, tgt_texts: Sequence[str] | None = None, *, k: int = 4,
                    margin: str = "ratio", normalize: bool = True, duplicates: str = "all_ids",
                    min_score: float = 0.0) -> dict[Pair, float]:
    """Scored candidate id pairs ``{(src_id, tgt_id): score}`` mined from two whole corpora.

    Identical texts (when ``*_texts`` are given) are embedded once, as XTREME's
    ``text_load_unify`` / ``unique_embeddings`` do; :func:`mine_bitext` proposes one pair per
    sentence ("max" retrieval), and pairs scoring ``<= min_score`` are dropped (XTREME's
    ``mine_bitext`` writes only ``score > threshold=0``). A text under several ids maps to
    all of them (``duplicates="all_ids"``, jiant) or its pairs are dropped (``"drop"``,
    XTREME/LASER). An id pair proposed twice keeps its best score.
    """
    if duplicates not in DUPLICATES:
        raise UnknownNameError("bucc duplicates rule", duplicates, DUPLICATES)
    src_emb = _check_2d(src_emb, "bucc src_emb")
    tgt_emb = _check_2d(tgt_emb, "bucc tgt_emb")
    src_first, src_groups = _unify(_check_ids(src_emb, src_ids, src_texts, "source"))
    tgt_first, tgt_groups = _unify(_check_ids(tgt_emb, tgt_ids, tgt_texts, "target"))
    mined = mine_bitext(src_emb[src_first], tgt_emb[tgt_first], k=k, margin=margin, normalize=normalize)
    out: dict[Pair, float] = {}
    for s, t, score in mined:
        if score <= min_score:
            continue
        s_rows, t_rows = src_groups[s], tgt_groups[t]
        if duplicates == "drop" and (len(s_rows) > 1 or len(t_rows) > 1):
            continue
        for i in s_rows:
            for j in t_rows:
                pair = (str(src_ids[i]), str(tgt_ids[j]))
                out[pair] = max(score, out.get(pair, score))
    return out


def _candidate_items(candidates: Mapping[Pair, float] | Iterable[tuple[Pair, float]]) -> list[tuple[Pair, float]]:
    items = list(candidates.items()) if isinstance(candidates, Mapping) else list(candidates)
    return sorted(items, key=lambda c: -c[1])


def optimize_threshold(candidates: Mapping[Pair, float] | Iterable[tuple[Hashable, float]], gold: set) -> float:
    """The score threshold maximising F1 of ``{pair: score >= threshold}`` against ``gold``.

    As XTREME's ``bucc_optimize``: candidates sorted by decreasing score, the threshold is set
    midway between the score of the best cut and the next one (just below the last score when
    the best cut keeps every candidate, where the reference would index past its list).
    """
    items = _candidate_items(candidates)
    best_f1, threshold, correct = 0.0, 0.0, 0
    for i, (pair, score) in enumerate(items):
        correct += pair in gold
        if correct:
            p, r = correct / (i + 1), correct / len(gold)
            f1 = 2 * p * r / (p + r)
            if f1 > best_f1:
                best_f1 = f1
                nxt = items[i + 1][1] if i + 1 < len(items) else score - 1e-6
                threshold = (score + nxt) / 2
    return threshold


def bucc_extract(candidates: Mapping[Pair, float] | Iterable[tuple[Pair, float]], threshold: float) -> set[Pair]:
    """The pairs kept at ``threshold``: score ``>=`` threshold, as XTREME's and jiant's ``bucc_extract``."""
    return {pair for pair, score in _candidate_items(candidates) if score >= threshold}


def prf(predicted: Iterable[Hashable], gold: Iterable[Hashable]) -> dict[str, float]:
    """Precision / recall / F1 (percentages) of a predicted set of pairs against the gold set."""
    pred_set, gold_set = set(predicted), set(gold)
    correct = len(pred_set & gold_set)
    if correct == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    p, r = correct / len(pred_set), correct / len(gold_set)
    return {"f1": 100.0 * 2 * p * r / (p + r), "precision": 100.0 * p, "recall": 100.0 * r}


def bucc_score(candidates: Mapping[Pair, float], gold: Iterable[tuple[str, str]],
               threshold: float | None = None) -> dict[str, float]:
    """F1 / precision / recall (percentages) of the candidates kept at ``threshold``, and the threshold.

    ``threshold=None`` tunes it on ``gold`` itself (:func:`optimize_threshold`): an *oracle*
    number when ``gold`` belongs to the split being scored. XTREME's ``bucc_eval``.
    """
    gold_set = {(str(s), str(t)) for s, t in gold}
    if not gold_set:
        raise XStiltsError("bucc: no gold pairs to score against")
    if threshold is None:
        threshold = optimize_threshold(candidates, gold_set)
    out = prf(bucc_extract(candidates, threshold), gold_set)
    out["threshold"] = float(threshold)
    return out


def bucc_f1(src_emb: np.ndarray, tgt_emb: np.ndarray, src_ids: Sequence[str], tgt_ids: Sequence[str],
            gold_pairs: Iterable[tuple[str, str]], *, threshold: float | None = None, k: int = 4,
            margin: str = "ratio", normalize: bool = True, src_texts: Sequence[str] | None = None,
            tgt_texts: Sequence[str] | None = None, duplicates: str = "all_ids") -> dict[str, float]:
    """BUCC 2018 F1 / precision / recall (percentages) and the threshold used, from embeddings.

    :func:`bucc_candidates` then :func:`bucc_score`. ``threshold=None`` is an oracle threshold
    (tuned on these gold pairs); pass the one tuned on the dev ("sample") split to score a test
    split as XTREME and jiant do (:mod:`xstilts.tasks.bucc` runs that protocol).
    """
    cands = bucc_candidates(src_emb, tgt_emb, src_ids, tgt_ids, src_texts, tgt_texts, k=k, margin=margin,
                            normalize=normalize, duplicates=duplicates)
    return bucc_score(cands, gold_pairs, threshold)


# ---------------------------------------------------------------------- ranked retrieval (XTREME-R)
def average_precision_at_k(relevant: Collection[Hashable], ranked: Sequence[Hashable], k: int | None = None) -> float:
    """AP@k in [0, 1] of one ranked list, as XTREME's ``utils_lareqa.average_precision_at_k``.

    Precision is summed at each rank (within the top ``k``) holding a relevant item not seen
    higher up, and divided by ``min(len(relevant), k)`` (``len(relevant)`` when ``k`` is None).
    """
    if not relevant:
        raise XStiltsError("average_precision_at_k: a query needs at least one relevant candidate")
    ranked = list(ranked[:k]) if k else list(ranked)
    hits, total, seen = 0, 0.0, set()
    for i, item in enumerate(ranked):
        if item in relevant and item not in seen:
            hits += 1
            total += hits / (i + 1)
        seen.add(item)
    return total / (min(len(relevant), k) if k else len(relevant))


def rank_candidates(query_emb: np.ndarray, cand_emb: np.ndarray, k: int, *, normalize: bool = True) -> np.ndarray:
    """Indices ``[Q, min(k, C)]`` of each query's top-``k`` candidates by cosine (dot product when
    ``normalize=False``), best first."""
    query_emb = _check_2d(query_emb, "rank_candidates query_emb")
    cand_emb = _check_2d(cand_emb, "rank_candidates cand_emb")
    if normalize:
        query_emb, cand_emb = l2_normalize(query_emb), l2_normalize(cand_emb)
    return knn(query_emb, cand_emb, k, normalize=False)[1]


def mean_average_precision_at_k(query_emb: np.ndarray, cand_emb: np.ndarray, relevant: Sequence[Collection[int]],
                                *, k: int = 20, normalize: bool = True) -> float:
    """mAP@k (0-100) of retrieving, for query ``q``, the candidate rows ``relevant[q]`` from ``cand_emb``.

    LAReQA's metric (XTREME ``utils_lareqa.mean_avg_prec_at_k`` with ``k=20``, over a pool of
    candidates in every language); with one relevant candidate per query it is Mewsli-X's
    ``map@20`` (MRR within the top 20, ``utils_mewslix.evaluate``).
    """
    if len(relevant) != len(query_emb):
        raise XStiltsError(f"mean_average_precision_at_k: {len(relevant)} relevance sets for {len(query_emb)} queries")
    ranked = rank_candidates(query_emb, cand_emb, k, normalize=normalize)
    return 100.0 * float(np.mean([average_precision_at_k(set(rel), list(row), k) for rel, row in zip(relevant, ranked)]))


def mean_reciprocal_rank(gold: Mapping[str, str], predictions: Mapping[str, Sequence[str]], k: int = 20) -> float:
    """MRR@k (0-100) of ranked predictions ``{example id: [entity ids]}`` against one gold id per example.

    As XTREME's ``utils_mewslix.evaluate`` (reported as ``map@20``): only the first ``k``
    predictions count, and an example without predictions scores 0.
    """
    if not gold:
        raise XStiltsError("mean_reciprocal_rank: no gold examples")
    total = 0.0
    for ex_id, entity in gold.items():
        for rank, pred in enumerate(list(predictions.get(ex_id, []))[:k], start=1):
            if pred == entity:
                total += 1.0 / rank
                break
    return 100.0 * total / len(gold)


def pair_pool_ranking(query_emb: np.ndarray, target_emb: np.ndarray, target_keys: Sequence[Hashable], *, k: int = 20,
                      normalize: bool = True) -> tuple[np.ndarray, list[int]]:
    """Rank a pool of distinct targets for every query of a list of (query, target) pairs.

    Targets are deduplicated by ``target_keys`` (several mentions of one entity, or questions
    on one paragraph, share a candidate). Returns the top-``k`` candidates of each query as
    target rows (the first row of each distinct target), ``[Q, min(k, pool)]``, and for every
    row the first row of its own target (its relevant candidate). Scored with
    :func:`mean_reciprocal_rank` this is mAP@k with one relevant candidate per query.
    """
    target_emb = _check_2d(target_emb, "pair_pool_ranking target_emb")
    if len(target_keys) != len(target_emb):
        raise XStiltsError(f"pair_pool_ranking: {len(target_keys)} target keys for {len(target_emb)} target rows")
    first, groups = _unify(target_keys)
    canonical = [0] * len(target_keys)
    for g, rows in enumerate(groups):
        for r in rows:
            canonical[r] = first[g]
    ranked = rank_candidates(query_emb, target_emb[first], k, normalize=normalize)
    return np.asarray(first, dtype=np.int64)[ranked], canonical
