"""The one retrieval decoder (RetrievalFormat.retrieve: Tatoeba and BUCC), zero_shot_eval's BUCC path
and rescore, featurisation keywords, and the error for an evaluation that scores no language."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xstilts.errors import DataNotFoundError, XStiltsError
from xstilts.evaluate import RetrievalSettings, rescore, zero_shot_eval
from xstilts.metrics import nearest_neighbours
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
    # XTREME's direction (utils_retrieve.py similarity_search): English (target) queries, non-English indexed
    fwd, bwd = nearest_neighbours(tgt, src), nearest_neighbours(src, tgt)
    assert found.predictions == {f"e{i}": f"e{j}" for i, j in enumerate(fwd)}
    assert found.reverse == {f"e{i}": f"e{j}" for i, j in enumerate(bwd)}
    scores = RET.score_retrieval(exs, found)
    assert scores["accuracy"] == pytest.approx(100 * np.mean(fwd == np.arange(6)))
    assert scores["accuracy_xx_to_en"] == pytest.approx(100 * np.mean(bwd == np.arange(6)))
    again = Retrieval.from_rows("tatoeba", json.loads(json.dumps(found.to_rows())))
    assert RET.score_retrieval(exs, again) == scores
    # decode (the Format contract) gives the same predictions, in either direction
    outputs = {"embeddings": _interleave(src, tgt)}
    assert RET.decode(exs, _features(6), outputs) == found.predictions
    assert RET.decode(exs, _features(6), outputs, direction="source_to_target") == found.reverse
    margin = RET.retrieve(exs, _features(6), _interleave(src, tgt), margin="ratio", k=2)
    assert margin.predictions == {f"e{i}": f"e{j}" for i, j in enumerate(nearest_neighbours(tgt, src, margin="ratio", k=2))}


def test_bucc_is_refused_on_translation_pairs():
    """Mining among gold pairs has no distractors (issue 14 item 5): the pair decoder refuses BUCC."""
    from xstilts.errors import ConfigError

    exs = _examples(4)
    with pytest.raises(ConfigError, match="official BUCC 2018 layout"):
        RET.retrieve(exs, _features(4), np.ones((8, 3)), "bucc")


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


def _bucc_part(d: Path, part: str, shift: int) -> None:
    """One part of a tiny BUCC corpus in the official layout (de-en.<part>.de / .en / .gold) from our
    own word lists: 8 translated pairs (every second one identical text) among 16 German and 12
    English sentences (the rest are distractors)."""
    de, en, gold = [], [], []
    for i in range(16):
        de.append(" ".join(WORDS[(i * 3 + j * 7 + shift) % len(WORDS)] for j in range(2 + i % 3)))
    for i in range(12):
        if i < 8:
            text = de[i] if i % 2 == 0 else " ".join(reversed(de[i].split())) + " und"
            gold.append((f"de-{part}-{i:03d}", f"en-{part}-{i:03d}"))
        else:
            text = " ".join(WORDS[(i * 5 + j + shift) % len(WORDS)] for j in range(3)) + " the"
        en.append(text)
    (d / f"de-en.{part}.de").write_text("".join(f"de-{part}-{i:03d}\t{t}\n" for i, t in enumerate(de)), encoding="utf-8")
    (d / f"de-en.{part}.en").write_text("".join(f"en-{part}-{i:03d}\t{t}\n" for i, t in enumerate(en)), encoding="utf-8")
    (d / f"de-en.{part}.gold").write_text("".join(f"{s}\t{t}\n" for s, t in gold), encoding="utf-8")


def _bucc_dir(root: Path) -> Path:
    d = root / "bucc2018" / "de-en"
    d.mkdir(parents=True)
    _bucc_part(d, "sample", 0)
    _bucc_part(d, "training", 3)
    return root


def test_bucc_eval_writes_mined_pairs_and_rescore_agrees(tiny_model_dir, tmp_path):
    data = _bucc_dir(tmp_path / "data")
    out = tmp_path / "out"
    rs = RetrievalSettings(layer=0, k=2)
    rep = zero_shot_eval(str(tiny_model_dir), "bucc", "de", data_dir=data, out_dir=out, retrieval=rs, batch_size=5)
    scores = rep.per_language["de"]
    assert set(scores) == {"f1", "precision", "recall", "f1_oracle"} and scores["f1_oracle"] > 0
    record = rep.settings["per_language"]["de"]
    assert record["threshold_source"] == "dev" and record["comparable"] is True
    assert record["corpus"] == "de-en.training" and record["sentences"] == {"xx": 16, "en": 12}
    rows = [json.loads(x) for x in (out / "predictions" / "de.jsonl").read_text().splitlines()]
    assert all(r["score"] >= record["threshold"] for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    again = rescore(out).per_language["de"]
    assert {k: again[k] for k in ("f1", "precision", "recall")} == pytest.approx(
        {k: scores[k] for k in ("f1", "precision", "recall")})
    # scoring the dev part itself: the threshold is an oracle, and says so
    dev = zero_shot_eval(str(tiny_model_dir), "bucc", "de", split="dev", data_dir=data, retrieval=rs, batch_size=5)
    assert dev.settings["per_language"]["de"]["threshold_source"] == "oracle"
    assert dev.settings["per_language"]["de"]["comparable"] is False
    assert dev.per_language["de"]["f1"] == dev.per_language["de"]["f1_oracle"]


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
