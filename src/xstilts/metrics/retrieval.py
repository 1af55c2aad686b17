"""Sentence-retrieval scores: Tatoeba accuracy and BUCC 2018 bitext-mining F1.

Similarities are cosine (embeddings are L2-normalised here unless told they already are).
k-nearest-neighbour search uses ``faiss`` (an optional extra, imported lazily) and falls back
to numpy (exact, same result) when it is not installed.

Margin-based scoring follows Artetxe & Schwenk (2019), as LASER's ``mine_bitexts.py`` and
XTREME's ``third_party/utils_retrieve.py`` do::

    score(x, y) = margin(cos(x, y), (mean_k cos(x, NN_k(x in Y)) + mean_k cos(y, NN_k(y in X))) / 2)

with ``margin`` one of ``ratio`` (a / b, the default), ``distance`` (a - b) or ``absolute`` (a).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Sequence

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


def tatoeba_accuracy(src_emb: np.ndarray, tgt_emb: np.ndarray, *, margin: str | None = None, k: int = 4,
                     normalize: bool = True) -> float:
    """Tatoeba accuracy (0-100): row ``i`` of ``src_emb`` is right iff its nearest row of ``tgt_emb`` is ``i``.

    XTREME's direction is source = non-English sentence, target = its English pool. For the
    other direction call with the arguments swapped. ``margin`` switches cosine for margin scoring.
    """
    src_emb = _check_2d(src_emb, "tatoeba_accuracy src_emb")
    tgt_emb = _check_2d(tgt_emb, "tatoeba_accuracy tgt_emb")
    if src_emb.shape[0] != tgt_emb.shape[0]:
        raise XStiltsError(f"tatoeba_accuracy: {src_emb.shape[0]} source vs {tgt_emb.shape[0]} target sentences; they must be parallel")
    pred = nearest_neighbours(src_emb, tgt_emb, margin=margin, k=k, normalize=normalize)
    return 100.0 * float(np.mean(pred == np.arange(src_emb.shape[0])))


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


def prf(predicted: Iterable[Hashable], gold: Iterable[Hashable]) -> dict[str, float]:
    """Precision / recall / F1 (percentages) of a predicted set of pairs against the gold set."""
    pred_set, gold_set = set(predicted), set(gold)
    correct = len(pred_set & gold_set)
    if correct == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    p, r = correct / len(pred_set), correct / len(gold_set)
    return {"f1": 100.0 * 2 * p * r / (p + r), "precision": 100.0 * p, "recall": 100.0 * r}


def optimize_threshold(candidates: Sequence[tuple[Hashable, float]], gold: set) -> float:
    """The score threshold maximising F1 of ``{pair: score > threshold}`` against ``gold``.

    As LASER/XTREME ``bucc_optimize``: candidates sorted by score, the threshold is set midway
    between the score of the best cut and the next one.
    """
    items = sorted(candidates, key=lambda c: -c[1])
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


def bucc_f1(src_emb: np.ndarray, tgt_emb: np.ndarray, src_ids: Sequence[str], tgt_ids: Sequence[str],
            gold_pairs: Iterable[tuple[str, str]], *, threshold: float | None = None, k: int = 4,
            margin: str = "ratio", normalize: bool = True) -> dict[str, float]:
    """BUCC 2018 F1 / precision / recall (percentages) and the threshold used.

    Candidates come from :func:`mine_bitext` (margin scoring, "max" retrieval). With
    ``threshold=None`` the threshold is chosen, as XTREME's ``bucc_eval`` does, to maximise F1
    against the gold pairs *of the split being scored* (an oracle threshold: XTREME reports
    BUCC this way); pass the threshold tuned on another split to score without it.
    """
    if len(src_ids) != len(src_emb) or len(tgt_ids) != len(tgt_emb):
        raise XStiltsError("bucc_f1: the id lists must be aligned with the embedding rows")
    gold = {(str(s), str(t)) for s, t in gold_pairs}
    if not gold:
        raise XStiltsError("bucc_f1: no gold pairs")
    mined = [((src_ids[s], tgt_ids[t]), score) for s, t, score in mine_bitext(src_emb, tgt_emb, k=k, margin=margin, normalize=normalize)]
    if threshold is None:
        threshold = optimize_threshold(mined, gold)
    predicted = [pair for pair, score in mined if score > threshold]
    out = prf(predicted, gold)
    out["threshold"] = float(threshold)
    return out
