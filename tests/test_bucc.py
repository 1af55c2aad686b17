"""BUCC 2018: the official file layout and the dev-threshold protocol, on small fixtures built here.

Fixtures are written in the official layout (xx-en.<part>.xx / .en: id<TAB>sentence;
.gold: xx_id<TAB>en_id) inside the test's tmp dir. Sentences are embedded by a stub that
maps each text to a 2-D unit vector at a chosen angle, so every score is a cosine
(``k=1``, ``margin="absolute"``) and the expected numbers can be worked out by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xstilts.errors import ConfigError, DataError, DataNotFoundError
from xstilts.tasks.bucc import BuccCorpus, bucc_file, evaluate_bucc, read_bucc2018, require_corpora
from xstilts.tasks.types import BitextExample

# text -> angle (degrees); German side "dN", English side "eN"
DEV = {"d1": 0, "d2": 90, "d3": 180, "e1": 10, "e2": 105, "e3": 200}
TEST = {"d1": 0, "d2": 90, "d3": 180, "e1": 12, "e2": 108, "e3": 190}


def _write_part(root: Path, part: str, angles: dict[str, float], gold: list[tuple[str, str]] | None) -> Path:
    d = root / "bucc2018" / "de-en"
    d.mkdir(parents=True, exist_ok=True)
    de = [k for k in angles if k.startswith("d")]
    en = [k for k in angles if k.startswith("e")]
    (d / f"de-en.{part}.de").write_text("".join(f"de-{part}-{k}\t{part} {k}\n" for k in de), encoding="utf-8")
    (d / f"de-en.{part}.en").write_text("".join(f"en-{part}-{k}\t{part} {k}\n" for k in en), encoding="utf-8")
    if gold is not None:
        (d / f"de-en.{part}.gold").write_text("".join(f"de-{part}-{s}\ten-{part}-{t}\n" for s, t in gold),
                                              encoding="utf-8")
    return d / f"de-en.{part}.de"


def _embed(angles_by_part: dict[str, dict[str, float]]):
    def embed(texts: list[str]) -> np.ndarray:
        rad = np.radians([angles_by_part[t.split()[0]][t.split()[1]] for t in texts])
        return np.stack([np.cos(rad), np.sin(rad)], axis=1)

    return embed


@pytest.fixture()
def corpora(tmp_path: Path) -> tuple[BuccCorpus, BuccCorpus]:
    _write_part(tmp_path, "sample", DEV, [("d1", "e1"), ("d2", "e2")])
    _write_part(tmp_path, "training", TEST, [("d1", "e1"), ("d2", "e2")])
    dev = read_bucc2018(bucc_file(tmp_path, "de", "dev"), language="de")[0]
    test = read_bucc2018(bucc_file(tmp_path, "de", "test"), language="de")[0]
    return dev, test


def test_reader_reads_the_official_layout(corpora):
    dev, test = corpora
    assert dev.id == "de-en.sample" and test.id == "de-en.training" and test.part == "training"
    assert dev.source_ids == ["de-sample-d1", "de-sample-d2", "de-sample-d3"]
    assert dev.target == ["sample e1", "sample e2", "sample e3"]
    assert dev.gold == {("de-sample-d1", "en-sample-e1"), ("de-sample-d2", "en-sample-e2")}
    assert len(dev.files) == 3


def test_dev_threshold_is_applied_to_test_and_oracle_is_labelled(corpora):
    # Candidates (xtreme third_party/utils_retrieve.py mine_bitext, retrieval='max'; k=1 and the
    # absolute margin make each score a cosine):
    #   dev:  d1-e1 cos 10 = .98481 (gold), d2-e2 cos 15 = .96593 (gold), d3-e3 cos 20 = .93969
    #         bucc_optimize: best cut after two -> threshold (.96593 + .93969) / 2 = .95281
    #   test: d3-e3 cos 10 = .98481 (distractor), d1-e1 cos 12 = .97815 (gold), d2-e2 cos 18 = .95106 (gold)
    #         at the dev threshold (>= .95281): d3-e3, d1-e1 -> P 1/2, R 1/2, F1 50.0
    #         oracle (tuned on test): keep all three -> P 2/3, R 1, F1 80.0
    # As jiant jiant/scripts/benchmarks/xtreme/xtreme_submission.py
    # generate_and_write_preds_for_bucc2018: best-threshold of val, bucc_extract on test.
    dev, test = corpora
    embed = _embed({"sample": DEV, "training": TEST})
    res = evaluate_bucc(test, embed, dev_corpus=dev, k=1, margin="absolute")
    expected_th = (np.cos(np.radians(15)) + np.cos(np.radians(20))) / 2
    assert res.threshold == pytest.approx(expected_th, abs=1e-6)
    assert res.threshold_source == "dev" and res.settings()["comparable"] is True
    assert res.scores["f1"] == pytest.approx(50.0)
    assert res.scores["f1_oracle"] == pytest.approx(80.0)
    assert [(s, t) for s, t, _ in res.predicted] == [("de-training-d3", "en-training-e3"),
                                                    ("de-training-d1", "en-training-e1")]
    oracle = evaluate_bucc(test, embed, k=1, margin="absolute")
    assert oracle.threshold_source == "oracle" and oracle.settings()["threshold_oracle"] is True
    assert oracle.scores["f1"] == pytest.approx(80.0) and oracle.settings()["comparable"] is False


def test_distractors_lower_the_f1_of_the_same_pairs(corpora):
    # Mining among the gold pairs only (what the hub's bucc18 configs allow) scores the
    # test corpus's two gold pairs perfectly; the distractor d3-e3 makes it 80.0 (oracle).
    dev, test = corpora
    embed = _embed({"sample": DEV, "training": TEST})
    pairs_only = BuccCorpus(id="pairs", language="de", part="training", source_ids=test.source_ids[:2],
                            source=test.source[:2], target_ids=test.target_ids[:2], target=test.target[:2],
                            gold=test.gold)
    assert evaluate_bucc(pairs_only, embed, k=1, margin="absolute").scores["f1"] == pytest.approx(100.0)
    assert evaluate_bucc(test, embed, k=1, margin="absolute").scores["f1"] == pytest.approx(80.0)


def test_gold_pairs_only_are_refused():
    with pytest.raises(ConfigError, match="official BUCC 2018 layout"):
        require_corpora("bucc", [BitextExample(id="0", source="Hallo", target="Hello")])


def test_reader_errors_name_the_file_and_line(tmp_path: Path):
    path = _write_part(tmp_path, "sample", DEV, None)
    corpus = read_bucc2018(path)[0]
    assert corpus.gold is None
    with pytest.raises(DataNotFoundError, match="no gold file"):
        evaluate_bucc(corpus, _embed({"sample": DEV}))
    path.write_text("de-1\tHallo\nno tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        read_bucc2018(path)
    with pytest.raises(DataError, match="xx-en.<part>.xx"):
        read_bucc2018(tmp_path / "bucc2018" / "de-en" / "de-en.sample.en")
    _write_part(tmp_path, "sample", DEV, [("d1", "e9")])
    with pytest.raises(DataError, match="missing from the sentence files"):
        read_bucc2018(path)
