"""Models in and out of the Hugging Face AutoModelFor* format (xstilts export, xstilts eval --model HF_DIR)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_encoder_dir, xlmr_tokenizer
from xstilts.errors import ModelLoadError, XStiltsError

PANX = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))


def _cli(*args: str):
    from typer.testing import CliRunner

    from xstilts.cli import app

    return CliRunner().invoke(app, list(args))


def _auto(kind: str):
    import transformers

    return getattr(transformers, {"tagging": "AutoModelForTokenClassification",
                                  "classification": "AutoModelForSequenceClassification",
                                  "multiple_choice": "AutoModelForMultipleChoice",
                                  "extractive_qa": "AutoModelForQuestionAnswering"}[kind])


def _trainer_model(encoder_dir: Path, out: Path, kind: str, labels: list[str] | None) -> Path:
    """A model trained a few steps by transformers.Trainer (tiny random weights) and saved with its tokenizer."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    tok = xlmr_tokenizer()
    kw = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
    model = _auto(kind).from_pretrained(str(encoder_dir), **kw)
    texts = [f"Maria Schmidt arbeitet seit {i} Jahren bei Siemens in München ." for i in range(16)]
    rows = []
    for i, text in enumerate(texts):
        enc = tok(text, truncation=True, max_length=32)
        n = len(enc["input_ids"])
        label = [(i + j) % len(labels) for j in range(n)] if kind == "tagging" else i % len(labels)
        rows.append({**enc, "labels": label})
    collator = (DataCollatorForTokenClassification if kind == "tagging" else DataCollatorWithPadding)(tok)
    args = TrainingArguments(output_dir=str(out / "trainer"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                             disable_tqdm=True, logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collator).train()
    saved = out / "hf-model"
    model.save_pretrained(saved)
    tok.save_pretrained(saved)
    return saved


# ---------------------------------------------------------------------- in: xstilts eval --model HF_DIR
def test_trainer_tagging_model_is_evaluated_with_its_own_labels(tiny_model_dir, shared_data, tmp_path):
    from transformers import AutoModelForTokenClassification

    from xstilts.models.hf_export import load_model

    order = ["B-LOC", "O", "I-LOC", "B-PER", "I-PER", "B-ORG", "I-ORG"]  # not the catalog's order
    hf_dir = _trainer_model(tiny_model_dir, tmp_path, "tagging", order)
    out = tmp_path / "eval"
    res = _cli("eval", "--model", str(hf_dir), "--task", "panx", "--languages", "en,de", "--max-examples", "8",
               "--data-dir", str(shared_data), "--out", str(out), "--batch-size", "4")
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_language"]) == {"en", "de"} and metrics["settings"]["head"] == "panx"
    # the head is the HF head, its label names config.id2label: same logits as transformers
    model, tok = load_model(hf_dir, head_name="panx")
    assert model.head_specs["panx"].labels == order
    hf = AutoModelForTokenClassification.from_pretrained(str(hf_dir)).eval()
    batch = tok(["Angela Merkel besuchte Paris ."], return_tensors="pt")
    with torch.no_grad():
        ours = model.eval()("panx", input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
        theirs = hf(**batch).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # a prediction file names labels from the model's own id2label
    row = json.loads((out / "predictions" / "en.jsonl").read_text().splitlines()[0])
    assert set(row["prediction"]) <= set(PANX)


def test_trainer_classification_model_and_label_set_refusal(tiny_model_dir, shared_data, tmp_path):
    from xstilts.evaluate import zero_shot_eval

    hf_dir = _trainer_model(tiny_model_dir, tmp_path / "ok", "classification", ["1", "0"])  # pawsx labels, reversed
    rep = zero_shot_eval(hf_dir, "pawsx", "de", data_dir=shared_data, max_examples=8, batch_size=4)
    assert 0 <= rep.per_language["de"]["accuracy"] <= 100 and rep.settings["head"] == "pawsx"

    generic = _trainer_model(tiny_model_dir, tmp_path / "generic", "classification", ["LABEL_0", "LABEL_1"])
    res = _cli("eval", "--model", str(generic), "--task", "pawsx", "--languages", "de", "--max-examples", "4",
               "--data-dir", str(shared_data), "--out", str(tmp_path / "bad"))
    assert res.exit_code == 2
    assert "predicts labels ['LABEL_0', 'LABEL_1']" in res.output and "'0', '1'" in res.output


@pytest.mark.parametrize("encoder", ["xlm-roberta", "bert"])
@pytest.mark.parametrize("kind", ["classification", "tagging", "multiple_choice", "extractive_qa"])
def test_every_head_kind_round_trips_exactly(tmp_path, encoder, kind):
    from xstilts.models.hf_export import hf_task_layout, load_model, to_hf_model

    enc = tiny_encoder_dir(tmp_path / "enc", kind=encoder)
    labels = ["a", "b", "c"] if kind in ("classification", "tagging") else None
    kw = {"id2label": dict(enumerate(labels))} if labels else {}
    hf = _auto(kind).from_pretrained(str(enc), **kw)
    hf.save_pretrained(tmp_path / "hf")
    xlmr_tokenizer().save_pretrained(tmp_path / "hf")
    assert hf_task_layout(tmp_path / "hf").kind == kind and hf_task_layout(enc) is None
    model, tok = load_model(tmp_path / "hf", head_name="t")
    assert model.head_specs["t"].kind == kind and model.head_specs["t"].labels == labels
    back, diff = to_hf_model(model, "t", tok)
    assert diff == 0.0 and type(back) is type(hf)
    for name, value in hf.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value, atol=0, rtol=0)


def test_a_head_that_computes_another_function_is_refused(tmp_path):
    from transformers import ElectraConfig, ElectraForSequenceClassification

    from xstilts.models.hf_export import load_model

    tok = xlmr_tokenizer()
    cfg = ElectraConfig(vocab_size=len(tok), embedding_size=32, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, pad_token_id=tok.pad_token_id,
                        id2label={0: "0", 1: "1"})
    torch.manual_seed(0)
    ElectraForSequenceClassification(cfg).save_pretrained(tmp_path / "electra")
    tok.save_pretrained(tmp_path / "electra")
    # same parameter names as RoBERTa's head (classifier.dense/out_proj), but GELU instead of tanh
    with pytest.raises(ModelLoadError, match="computes a different function"):
        load_model(tmp_path / "electra", head_name="pawsx")


# ---------------------------------------------------------------------- out: xstilts export
@pytest.fixture(scope="module")
def trained_stage(tmp_path_factory, tiny_model_dir, shared_data) -> Path:
    """A tiny panx stage trained by `xstilts train` (a few steps)."""
    out = tmp_path_factory.mktemp("stage") / "panx"
    res = _cli("train", "--model", str(tiny_model_dir), "--task", "panx", "--max-steps", "3", "--batch-size", "8",
               "--max-examples", "24", "--max-length", "32", "--data-dir", str(shared_data), "--out", str(out))
    assert res.exit_code == 0, res.output
    return out


def test_export_of_a_trained_stage_reloads_with_transformers_alone(trained_stage, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from xstilts.models import MultiTaskModel

    exported = tmp_path / "export"
    res = _cli("export", str(trained_stage), "--out", str(exported))
    assert res.exit_code == 0, res.output
    hf = AutoModelForTokenClassification.from_pretrained(str(exported)).eval()
    tok = AutoTokenizer.from_pretrained(str(exported))
    assert hf.config.id2label == dict(enumerate(PANX)) and hf.config.label2id["B-PER"] == 1
    model, _ = MultiTaskModel.load(trained_stage / "model")
    batch = tok(["Angela Merkel besuchte Paris .", "Der FC Bayern gewann in Dortmund ."], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        ours = model.eval()("panx", input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
        theirs = hf(**batch).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))
    card = (exported / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card and "## Training chain" in card
    assert "panx (en, train, at most 24 examples)" in card and "English dev: panx: f1" in card
    assert "## Provenance" in card and "transformers" in card


def test_export_errors_are_clear(trained_stage, tiny_model_dir, tmp_path):
    from xstilts.models import HeadSpec, MultiTaskModel
    from xstilts.models.hf_export import export_hf

    model, tok = MultiTaskModel.from_pretrained(str(tiny_model_dir))
    model.add_head(HeadSpec.for_labels("a", "classification", ["x", "y"]))
    model.add_head(HeadSpec.for_labels("b", "classification", ["x", "y"], pooling="mean"))
    model.save(tmp_path / "two", tokenizer=tok)
    with pytest.raises(XStiltsError, match="2 heads \\(a, b\\).*--head NAME"):
        export_hf(tmp_path / "two", tmp_path / "x")
    with pytest.raises(XStiltsError, match="pools with 'mean'"):
        export_hf(tmp_path / "two", tmp_path / "x", head="b")
    assert export_hf(tmp_path / "two", tmp_path / "x", head="a").labels == ["x", "y"]
    with pytest.raises(XStiltsError, match="neither an xstilts model directory"):
        export_hf(tmp_path, tmp_path / "y")
    # offline (the tests set HF_HUB_OFFLINE): --push-to-hub fails at once, before anything is written
    t0 = time.perf_counter()
    res = _cli("export", str(trained_stage), "--out", str(tmp_path / "pushed"), "--push-to-hub", "me/panx")
    assert res.exit_code == 2 and "cannot push to the hub repo 'me/panx'" in res.output
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "pushed").exists()
