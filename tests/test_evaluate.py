"""zero_shot_eval / rescore on tiny random-weight models: all languages in one call, outputs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xstilts.errors import XStiltsError
from xstilts.evaluate import RetrievalSettings, default_retrieval_layer, rescore, zero_shot_eval


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k])


def _tatoeba_dir(root: Path) -> Path:
    """A tiny synthetic Tatoeba folder (our own sentences): deu and fra present, nothing else."""
    d = root / "tatoeba"
    d.mkdir(parents=True)
    pairs = {
        "deu": (["Ich habe Hunger.", "Das Haus ist rot.", "Wo ist der Bahnhof?", "Guten Morgen!", "Ich lese ein Buch."]),
        "fra": (["J'ai faim.", "La maison est rouge.", "Où est la gare ?", "Bonjour !", "Je lis un livre."]),
    }
    eng = ["I am hungry.", "The house is red.", "Where is the station?", "Good morning!", "I am reading a book."]
    for code, src in pairs.items():
        (d / f"tatoeba.{code}-eng.{code}").write_text("\n".join(src) + "\n", encoding="utf-8")
        (d / f"tatoeba.{code}-eng.eng").write_text("\n".join(eng) + "\n", encoding="utf-8")
    return root


def test_default_layer_scales_xtreme_reference():
    # layers numbered as XTREME's --specific_layer (transformer layers only, from 0):
    # 7 of 12 = hidden_states[8], 13 of 24 = hidden_states[14] (issue 14 item 4)
    assert default_retrieval_layer(12) == 7  # XTREME --specific_layer 7 for 12-layer encoders
    assert default_retrieval_layer(24) == 13
    assert default_retrieval_layer(2) == 1


def test_retrieval_eval_all_languages_skips_missing_and_rescore(tiny_model_dir, tmp_path):
    data = _tatoeba_dir(tmp_path / "data")
    out = tmp_path / "out"
    rs = RetrievalSettings(both_directions=True, prefix="query: ")
    rep = zero_shot_eval(str(tiny_model_dir), "tatoeba", "de,fr,ja", data_dir=data, out_dir=out, batch_size=2, retrieval=rs)
    assert set(rep.per_language) == {"de", "fr"} and "ja" in rep.skipped
    assert rep.n_examples == {"de": 5, "fr": 5}
    for scores in rep.per_language.values():
        assert 0 <= scores["accuracy"] <= 100 and "accuracy_xx_to_en" in scores
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["settings"]["retrieval"]["layer"] == 1 and saved["settings"]["retrieval"]["prefix"] == "query: "
    assert saved["settings"]["retrieval"]["hidden_states_index"] == 2
    assert saved["settings"]["retrieval"]["direction"].startswith("english->xx")
    assert saved["average"]["accuracy"] == pytest.approx((rep.per_language["de"]["accuracy"] + rep.per_language["fr"]["accuracy"]) / 2)
    rows = [json.loads(line) for line in (out / "predictions" / "de.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and {"id", "prediction", "prediction_reverse"} <= set(rows[0])
    again = rescore(out)
    _same(again.per_language, rep.per_language)

    # a predictions file that misses an id
    (out / "predictions" / "de.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n")
    with pytest.raises(XStiltsError, match="missing for 2 of 5"):
        rescore(out)
    # predictions for a language with no gold data
    (out / "predictions" / "de.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (out / "predictions" / "ja.jsonl").write_text(json.dumps({"id": "x", "prediction": "x"}) + "\n")
    with pytest.raises(XStiltsError, match="language 'ja'.*no gold data"):
        rescore(out)


def test_retrieval_on_real_tatoeba_with_margin(tiny_model_dir, shared_data, tmp_path):
    rep = zero_shot_eval(str(tiny_model_dir), "tatoeba", ["deu", "sw"], data_dir=shared_data, max_examples=30,
                         retrieval=RetrievalSettings(margin="ratio", layer=1, pooling="cls"))
    assert set(rep.per_language) == {"de", "sw"} and rep.n_examples == {"de": 30, "sw": 30}
    assert rep.settings["retrieval"]["similarity"] == "margin-ratio" and rep.settings["max_examples"] == 30


@pytest.fixture(scope="module")
def pawsx_model_dir(tiny_model_dir, tmp_path_factory):
    from xstilts.models import HeadSpec, MultiTaskModel

    model, tok = MultiTaskModel.from_pretrained(str(tiny_model_dir))
    model.add_head(HeadSpec(task="pawsx", kind="classification", num_labels=2))
    d = tmp_path_factory.mktemp("pawsx-model") / "model"
    model.save(d, tokenizer=tok)
    return d


def test_classification_eval_with_head_and_rescore(pawsx_model_dir, shared_data, tmp_path):
    out = tmp_path / "out"
    rep = zero_shot_eval(pawsx_model_dir, "pawsx", "de,fr", split="dev", data_dir=shared_data, max_examples=24, seed=3,
                         out_dir=out, batch_size=8)
    assert set(rep.per_language) == {"de"} and "fr" in rep.skipped
    assert rep.settings["head"] == "pawsx" and rep.n_examples["de"] == 24
    preds = [json.loads(x) for x in (out / "predictions" / "de.jsonl").read_text().splitlines()]
    assert len(preds) == 24 and all(p["prediction"] in ("0", "1") for p in preds)
    assert rescore(out).per_language["de"]["accuracy"] == pytest.approx(rep.per_language["de"]["accuracy"])
    # the same subsample again: identical predictions (deterministic)
    rep2 = zero_shot_eval(pawsx_model_dir, "pawsx", "de", split="dev", data_dir=shared_data, max_examples=24, seed=3, batch_size=5)
    _same(rep2.per_language, rep.per_language)


def test_model_without_the_needed_head_is_a_clear_error(pawsx_model_dir, shared_data):
    with pytest.raises(XStiltsError, match="no tagging head for task 'panx'.*pawsx \\(classification\\)"):
        zero_shot_eval(pawsx_model_dir, "panx", "de", data_dir=shared_data, max_examples=4)


def test_head_lookup_by_task_then_train_task_never_another_task():
    """No silent fallback to "a head of the same kind" (issue 14): another task's head must be chosen."""
    import torch

    from xstilts.models import HeadSpec, MultiTaskModel

    class _Encoder(torch.nn.Module):
        config = type("C", (), {"hidden_size": 8, "hidden_dropout_prob": 0.0})()

        def forward(self, input_ids=None, attention_mask=None):  # pragma: no cover - not run
            raise AssertionError

    qa = MultiTaskModel(_Encoder(), [HeadSpec(task="squad_v1", kind="extractive_qa")])
    assert qa.head_for("xquad", "extractive_qa", also=["squad_v1"]).name == "squad_v1"
    other = MultiTaskModel(_Encoder(), [HeadSpec(task=n, kind="extractive_qa") for n in ("a", "b")])
    with pytest.raises(XStiltsError, match="no extractive_qa head for task 'xquad'.*head=NAME"):
        other.head_for("xquad", "extractive_qa", also=["squad_v1"])
    assert other.head_for("xquad", "extractive_qa", head="b").name == "b"


def test_tagging_qa_and_multiple_choice_heads_end_to_end(tiny_model_dir, shared_data, tmp_path):
    from xstilts.models import HeadSpec, MultiTaskModel
    from xstilts.tasks.catalog import get_task

    model, tok = MultiTaskModel.from_pretrained(str(tiny_model_dir))
    model.add_head(HeadSpec(task="panx", kind="tagging", num_labels=len(get_task("panx").label_list)))
    model.add_head(HeadSpec(task="squad_v1", kind="extractive_qa"))  # xquad's train_task
    model.add_head(HeadSpec(task="xcopa", kind="multiple_choice", num_labels=1))  # the task's own head
    d = tmp_path / "model"
    model.save(d, tokenizer=tok)
    for task, lang, keys in [("panx", "de", {"f1", "precision", "recall"}), ("xquad", "zh", {"exact_match", "f1"}),
                             ("xcopa", "et", {"accuracy"})]:
        out = tmp_path / task
        rep = zero_shot_eval(d, task, lang, data_dir=shared_data, max_examples=6, out_dir=out, batch_size=4)
        assert set(rep.per_language[lang]) == keys and rep.n_examples[lang] == 6
        _same(rescore(out).per_language, rep.per_language)


def test_cli_eval_prints_table_and_writes_outputs(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from xstilts.cli import app

    data = _tatoeba_dir(tmp_path / "data")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--task", "tatoeba", "--languages", "de,fr",
                                   "--layer", "1", "--pooling", "cls", "--out", str(out), "--data-dir", str(data)])
    assert res.exit_code == 0, res.output
    assert "average" in res.output and "metrics.json" in res.output
    assert json.loads((out / "metrics.json").read_text())["settings"]["retrieval"]["pooling"] == "cls"
    bad = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--task", "tatoeba", "--pooling", "max",
                                   "--data-dir", str(data), "--out", str(out)])
    assert bad.exit_code == 2 and "pooling" in bad.output


def test_bf16_eval_is_recorded_and_close_to_fp32(pawsx_model_dir, shared_data, tmp_path):
    """bf16 evaluation casts the model once; its logits differ from fp32 by rounding only (see
    tests/test_predict.py for the loop itself)."""
    rep = zero_shot_eval(pawsx_model_dir, "pawsx", "de", split="dev", data_dir=shared_data, max_examples=16,
                         precision="bf16", device="cpu", out_dir=tmp_path / "bf16")
    assert rep.settings["precision"] == "bf16" and rep.settings["device"] == "cpu"
    assert json.loads((tmp_path / "bf16" / "metrics.json").read_text())["settings"]["precision"] == "bf16"
    ref = zero_shot_eval(pawsx_model_dir, "pawsx", "de", split="dev", data_dir=shared_data, max_examples=16,
                         device="cpu")
    assert abs(rep.per_language["de"]["accuracy"] - ref.per_language["de"]["accuracy"]) <= 100 / 16 * 2


def test_bad_precision_or_device_is_a_clear_error(pawsx_model_dir, shared_data):
    with pytest.raises(XStiltsError, match="fp16 needs a CUDA device; on CPU use fp32"):
        zero_shot_eval(pawsx_model_dir, "pawsx", "de", split="dev", data_dir=shared_data, max_examples=4,
                       precision="fp16", device="cpu")
    with pytest.raises(XStiltsError, match="precision must be one of fp32, bf16, fp16, got 'int8'"):
        zero_shot_eval(pawsx_model_dir, "pawsx", "de", split="dev", data_dir=shared_data, max_examples=4, precision="int8")
    with pytest.raises(XStiltsError, match="unknown device 'gpu0'"):
        zero_shot_eval(pawsx_model_dir, "pawsx", "de", split="dev", data_dir=shared_data, max_examples=4, device="gpu0")
