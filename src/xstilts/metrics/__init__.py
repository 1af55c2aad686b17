"""Standalone scorers (no torch, no tasks), with parity to the official scripts; percentages 0-100."""

from xstilts.metrics.classification import accuracy
from xstilts.metrics.qa import MLQA_LANGUAGES, mlqa_scores, normalize_mlqa, normalize_squad, squad_scores, squad_v2_scores
from xstilts.metrics.retrieval import (
    DUPLICATES,
    MARGINS,
    average_precision_at_k,
    bucc_candidates,
    bucc_extract,
    bucc_f1,
    bucc_score,
    knn,
    knn_mean_similarity,
    l2_normalize,
    margin_scores,
    mean_average_precision_at_k,
    mean_reciprocal_rank,
    mine_bitext,
    nearest_neighbours,
    optimize_threshold,
    pair_pool_ranking,
    prf,
    rank_candidates,
    tatoeba_accuracy,
    tatoeba_predictions,
    tatoeba_scores,
)
from xstilts.metrics.tagging import get_entities, ner_scores, pos_scores

__all__ = [
    "accuracy", "squad_scores", "mlqa_scores", "squad_v2_scores", "normalize_squad", "normalize_mlqa", "MLQA_LANGUAGES",
    "ner_scores", "pos_scores", "get_entities",
    "tatoeba_accuracy", "bucc_f1", "mine_bitext", "margin_scores", "knn", "knn_mean_similarity", "nearest_neighbours",
    "l2_normalize", "optimize_threshold", "prf", "MARGINS",
    "tatoeba_scores", "tatoeba_predictions", "bucc_candidates", "bucc_extract", "bucc_score", "DUPLICATES",
    "average_precision_at_k", "mean_average_precision_at_k", "mean_reciprocal_rank", "rank_candidates", "pair_pool_ranking",
]
