"""The one retrieval decoder (RetrievalFormat.retrieve: Tatoeba and BUCC), zero_shot_eval's BUCC path
and rescore, featurisation keywords, and the error for an evaluation that scores no language."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xstilts.errors import DataNotFoundError, XStiltsError
from xstilts.evaluate import RetrievalSettings, rescore, zero_shot_eval
from xstilts.metrics import mine_bitext, nearest_neighbours, optimize_threshold
from xstilts.tasks.formats import get_format
from xstilts.tasks.formats.retrieval import Retrieval
from xstilts.tasks.types import BitextExample

RET = get_format("retrieval")


def _features(n: int) -> list[dict]:
    """Retrieval features in the format's order (source, target per example); no tokens needed to decode."""
    return [{"example_index": i, "side": side} for i in range(n) for side in ("source", "target")]


def _examples(n: int) -> list[BitextExample]:
    return [BitextExample(f"e{i}", f"src {i}", f"tgt {i}") for i in range(n)]


def _interleave(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    out = np.empty((2 * len(src), src.shape[1]), dtype=np.float32)
    out[0::2], out[1::2] = src, tgt
    return out


def test_tatoeba_decoder_both_directions_and_rows_round_trip():
    rng = np.random.default_rng(0)
    src, tgt = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    tgt[:3] = src[:3] + 0.01  # three clear pairs, three random
    exs = _examples(6)
    found = RET.retrieve(exs, _features(6), _interleave(src, tgt), "tatoeba", both_directions=True)
    fwd, bwd = nearest_neighbours(src, tgt), nearest_neighbours(tgt, src)
    assert found.predictions == {f"e{i}": f"e{j}" for i, j in enumerate(fwd)}
    assert found.reverse == {f"e{i}": f"e{j}" for i, j in enumerate(bwd)}
    scores = RET.score_retrieval(exs, found)
    assert scores["accuracy"] == pytest.approx(100 * np.mean(fwd == np.arange(6)))
    assert scores["accuracy_reverse"] == pytest.approx(100 * np.mean(bwd == np.arange(6)))
    assert scores["accuracy_both"] == pytest.approx((scores["accuracy"] + scores["accuracy_reverse"]) / 2)
    again = Retrieval.from_rows("tatoeba", json.loads(json.dumps(found.to_rows())))
    assert RET.score_retrieval(exs, again) == scores
    # decode (the Format contract) gives the same predictions, in either direction
    outputs = {"embeddings": _interleave(src, tgt)}
    assert RET.decode(exs, _features(6), outputs) == found.predictions
    assert RET.decode(exs, _features(6), outputs, direction="target_to_source") == found.reverse
    margin = RET.retrieve(exs, _features(6), _interleave(src, tgt), margin="ratio", k=2)
    assert margin.predictions == {f"e{i}": f"e{j}" for i, j in enumerate(nearest_neighbours(src, tgt, margin="ratio", k=2))}


def test_bucc_decoder_keeps_mined_pairs_above_the_oracle_threshold():
    rng = np.random.default_rng(1)
    src, tgt = rng.normal(size=(8, 6)), rng.normal(size=(8, 6))
    tgt[:5] = src[:5] + rng.normal(scale=0.05, size=(5, 6))
    exs = _examples(8)
    found = RET.retrieve(exs, _features(8), _interleave(src, tgt), "bucc", k=3)
    mined = mine_bitext(src, tgt, k=3, margin="ratio")
    threshold = optimize_threshold([((f"e{s}", f"e{t}"), sc) for s, t, sc in mined], {(e.id, e.id) for e in exs})
    kept = [(f"e{s}", f"e{t}", sc) for s, t, sc in mined if sc > threshold]
    assert found.threshold == pytest.approx(threshold)
    assert list(found.predictions.items()) == [(s, t) for s, t, _ in kept]  # best first
    assert {(f"e{i}", f"e{i}") for i in range(5)} <= set(found.predictions.items())
    scores = RET.score_retrieval(exs, found)
    assert set(scores) == {"f1", "precision", "recall"} and scores["recall"] == pytest.approx(
        100 * sum(s == t for s, t, _ in kept) / 8)
    rows = found.to_rows()
    assert set(rows[0]) == {"id", "prediction", "score"}
    assert RET.score(exs, Retrieval.from_rows("bucc", rows).predictions, "bucc") == scores


def test_decoder_errors_name_the_problem():
    exs = _examples(2)
    with pytest.raises(XStiltsError, match="do not match 4 features"):
        RET.retrieve(exs, _features(2), np.zeros((3, 4)))
    with pytest.raises(XStiltsError, match="1 of 2 examples have no target feature"):
        RET.retrieve(exs, _features(2)[:3], np.ones((3, 4)))
    with pytest.raises(XStiltsError, match="metric"):
        RET.retrieve(exs, _features(2), np.ones((4, 4)), "squad")


WORDS = ("Haus Baum Katze Hund Fluss Berg Stadt Brot Milch Regen Sonne Wolke Stein Vogel Blume Tisch Stuhl Buch "
         "Lampe Fenster").split()


def _bucc_dir(root: Path) -> Path:
    """A tiny BUCC-style JSON-lines split of our own word lists (every second pair identical text)."""
    d = root / "bucc2018"
    d.mkdir(parents=True)
    rows = []
    for i in range(16):
        source = " ".join(WORDS[(i + j * 7) % len(WORDS)] for j in range(2 + i % 3))
        target = source if i % 2 == 0 else " ".join(reversed(source.split())) + " und"
        rows.append({"id": f"de-{i:03d}", "source": source, "target": target})
    (d / "dev-de.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def test_bucc_eval_writes_mined_pairs_and_rescore_agrees(tiny_model_dir, tmp_path):
    data = _bucc_dir(tmp_path / "data")
    out = tmp_path / "out"
    rep = zero_shot_eval(str(tiny_model_dir), "bucc", "de", split="dev", data_dir=data, out_dir=out,
                         retrieval=RetrievalSettings(layer=0, k=2), batch_size=5)
    scores = rep.per_language["de"]
    assert set(scores) == {"f1", "precision", "recall"} and scores["f1"] > 0  # identical texts are found
    threshold = rep.settings["per_language"]["de"]["threshold"]
    rows = [json.loads(x) for x in (out / "predictions" / "de.jsonl").read_text().splitlines()]
    assert rows and all(r["score"] > threshold for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert rescore(out).per_language == rep.per_language


def test_every_language_skipped_is_a_data_not_found_error(tiny_model_dir, tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        zero_shot_eval(str(tiny_model_dir), "tatoeba", "de,fr", data_dir=empty, out_dir=tmp_path / "out")
    msg = str(err.value)
    assert str(empty) in msg and "tatoeba.deu-eng" in msg and "de, fr" in msg
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_qa_featurisation_keywords_are_honoured(tiny_model_dir, shared_data, tmp_path, monkeypatch):
    import xstilts.tasks.cache as cache
    from xstilts.models import HeadSpec, MultiTaskModel

    used = []
    real = cache.featurize_cached

    def spy(task, examples, tokenizer, options, **kw):
        used.append(options)
        return real(task, examples, tokenizer, options, **kw)

    monkeypatch.setattr(cache, "featurize_cached", spy)

    model, tok = MultiTaskModel.from_pretrained(str(tiny_model_dir))
    model.add_head(HeadSpec(task="squad_v1", kind="extractive_qa"))
    d = tmp_path / "model"
    model.save(d, tokenizer=tok)
    default = zero_shot_eval(d, "xquad", "de", data_dir=shared_data, max_examples=3)
    assert default.settings["featurize"]["max_length"] == 384
    rep = zero_shot_eval(d, "xquad", "de", data_dir=shared_data, max_examples=3, max_length=96, doc_stride=32,
                         max_query_length=24)
    assert {k: rep.settings["featurize"][k] for k in ("max_length", "doc_stride", "max_query_length")} == {
        "max_length": 96, "doc_stride": 32, "max_query_length": 24}
    assert [(o.max_length, o.doc_stride, o.max_query_length) for o in used] == [(384, 128, 64), (96, 32, 24)]
