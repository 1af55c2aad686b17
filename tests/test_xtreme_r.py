"""XTREME-R: LAReQA / Mewsli-X scored by mAP@20, and the official task groups.

Expected numbers are worked out by hand from google-research/xtreme
(third_party/utils_lareqa.py, third_party/utils_mewslix.py, evaluate.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from xstilts.evaluate.xtreme import BENCHMARK_GROUPS, task_metric, xtreme_scores
from xstilts.metrics import average_precision_at_k, mean_average_precision_at_k, mean_reciprocal_rank


def test_average_precision_at_k_as_lareqa():
    # utils_lareqa.average_precision_at_k: hits at ranks 1 (item 5) and 3 (item 2); the second
    # 5 at rank 4 is a repeat and does not count; divisor min(#relevant, k) = 2:
    # (1/1 + 2/3) / 2 = 0.8333. With k=2 only rank 1 hits: (1/1) / min(2, 2) = 0.5.
    assert average_precision_at_k({2, 5}, [5, 1, 2, 5, 3], k=20) == pytest.approx(5 / 6)
    assert average_precision_at_k({2, 5}, [5, 1, 2, 5, 3], k=2) == pytest.approx(0.5)


def test_map_at_20_from_embeddings():
    # utils_lareqa.mean_avg_prec_at_k (dot products of L2-normalised encodings, as the
    # retrieval models' normalised CLS outputs):
    #   q0 = (1, 0): ranking c0 (.995), c1 (.874), c3 (.486), c2 (0); relevant {c1} -> AP 1/2
    #   q1 = (0, 1): ranking c2 (1), c3 (.874), c1 (.486), c0 (.0995); relevant {c2, c3} -> (1 + 2/2) / 2 = 1
    # mAP@20 = 75.0; mAP@1: q0 0, q1 1 / min(2, 1) = 1 -> 50.0
    q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    c = np.array([[1, 0.1], [0.9, 0.5], [0, 1], [0.5, 0.9]], dtype=np.float32)
    assert mean_average_precision_at_k(q, c, [{1}, {2, 3}], k=20) == pytest.approx(75.0)
    assert mean_average_precision_at_k(q, c, [{1}, {2, 3}], k=1) == pytest.approx(50.0)


def test_mewsli_x_map20_is_mrr_at_20():
    # utils_mewslix.evaluate / mean_reciprocal_rank: m1 gold at rank 2 -> 1/2, m2 rank 1 -> 1,
    # m3 without predictions -> 0; mean 0.5 -> 50.0 ("map@20" in evaluate.py mewslix_map20).
    gold = {"m1": "Q1", "m2": "Q2", "m3": "Q3"}
    preds = {"m1": ["Q5", "Q1"], "m2": ["Q2"]}
    assert mean_reciprocal_rank(gold, preds, k=20) == pytest.approx(50.0)
    assert mean_reciprocal_rank(gold, preds, k=1) == pytest.approx(100 / 3)


def test_xtreme_r_task_groups_follow_evaluate_py():
    # evaluate.py XTREME_R_GROUP2TASK: retrieval = tatoeba + mewslix; multi_choice = xcopa;
    # classification = xnli + xcopa. A task's metric falls back to map@20 (avg_metric).
    groups = BENCHMARK_GROUPS["xtreme-r"]
    assert groups["retrieval"] == ["tatoeba", "mewsli_x"]
    assert groups["multiple_choice"] == ["xcopa"]
    assert groups["classification"] == ["xnli", "xcopa"]
    assert task_metric("mewsli_x", {"map@20": 41.5}) == 41.5
    res = xtreme_scores({"tatoeba": {"accuracy": 80.0}, "mewsli-x": {"map@20": 40.0}, "xcopa": {"accuracy": 60.0}},
                        "xtreme-r")
    assert res["groups"]["retrieval"] == pytest.approx(60.0)
    assert res["groups"]["multiple_choice"] == pytest.approx(60.0)
    assert "classification" not in res["groups"]


def test_pair_pool_ranking_shares_candidates_and_scores_as_mrr():
    # Three mentions, two distinct entities (rows 0 and 2 describe the same entity "E1"):
    # the pool is {row 0, row 1}; mention 2's relevant candidate is row 0.
    # Cosine rankings: m0 (1, 0): E1 (1, 0) then E2 (0, 1) -> rank 1; m1 (.6, .8): E2 (.8) then
    # E1 (.6) -> rank 1; m2 (0, 1): E2 then E1 -> rank 2. MRR@20 = (1 + 1 + 1/2) / 3 = 83.33,
    # which is mAP@20 with one relevant candidate (xtreme utils_mewslix.evaluate).
    from xstilts.metrics import pair_pool_ranking

    queries = np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
    targets = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)
    ranked, canonical = pair_pool_ranking(queries, targets, ["E1", "E2", "E1"], k=20)
    assert canonical == [0, 1, 0]
    assert ranked.tolist() == [[0, 1], [1, 0], [1, 0]]
    preds = {str(q): [str(r) for r in row] for q, row in enumerate(ranked)}
    gold = {str(q): str(c) for q, c in enumerate(canonical)}
    assert mean_reciprocal_rank(gold, preds, k=20) == pytest.approx(250 / 3)
    assert mean_average_precision_at_k(queries, targets[[0, 1]], [{0}, {1}, {0}], k=20) == pytest.approx(250 / 3)


def test_retrieval_format_map20_decodes_scores_and_round_trips():
    # The same three mentions as above through the retrieval format (catalog metric map@20):
    # predictions are ranked example ids, gold is the first example with the query's target.
    import json

    from xstilts.tasks.formats import get_format
    from xstilts.tasks.formats.retrieval import Retrieval
    from xstilts.tasks.types import BitextExample

    ret = get_format("retrieval")
    exs = [BitextExample("m0", "a", "E1"), BitextExample("m1", "b", "E2"), BitextExample("m2", "c", "E1")]
    queries = np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
    targets = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)
    emb = np.empty((6, 2), dtype=np.float32)
    emb[0::2], emb[1::2] = queries, targets
    feats = [{"example_index": i, "side": side} for i in range(3) for side in ("source", "target")]
    found = ret.retrieve(exs, feats, emb, "map@20")
    assert found.predictions == {"m0": ["m0", "m1"], "m1": ["m1", "m0"], "m2": ["m1", "m0"]}
    scores = ret.score_retrieval(exs, found)
    assert scores == {"map@20": pytest.approx(250 / 3)}
    again = Retrieval.from_rows("map@20", json.loads(json.dumps(found.to_rows())))
    assert ret.score_retrieval(exs, again) == scores
