"""Heads and MultiTaskModel on tiny random-weight encoders (XLM-R, BERT, mT5 shaped)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from xstilts.errors import CheckpointError, ConfigError, UnknownNameError
from xstilts.models import HeadSpec, MultiTaskModel, load_encoder

B, L = 3, 9


def _batch(vocab: int = 1000, b: int = B, length: int = L, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, length), generator=g)
    ids[:, 0] = 0  # <s>
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, -3:] = 0  # one padded row
    ids[0, -3:] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    encoder, tokenizer = load_encoder(str(tiny_model_dir))
    return encoder, tokenizer


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from tests.helpers import tiny_encoder_dir

    return {kind: tiny_encoder_dir(tmp_path_factory.mktemp(f"tiny-{kind}"), kind=kind) for kind in ("bert", "mt5")}


def _model(tiny, *specs: HeadSpec) -> MultiTaskModel:
    encoder = copy.deepcopy(tiny[0])  # a fresh copy: loading (the tokenizer above all) is the slow part
    return MultiTaskModel(encoder, list(specs), base_model="tiny")


def test_load_encoder_drops_pooler(tiny):
    encoder, tokenizer = tiny
    assert getattr(encoder, "pooler", None) is None
    assert len(tokenizer) == 250002


def test_classification_shapes_loss_and_backward(tiny):
    model = _model(tiny, HeadSpec("nli", "classification", num_labels=3))
    batch = _batch() | {"labels": torch.tensor([0, 2, 1])}
    out = model("nli", **batch)
    assert out["logits"].shape == (B, 3)
    assert torch.allclose(out["loss"], F.cross_entropy(out["logits"], batch["labels"]))
    out["loss"].backward()
    assert model.heads["nli"].out_proj.weight.grad is not None
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    # no labels -> no loss
    assert "loss" not in model("nli", **_batch())


def test_cls_and_mean_pooling_differ_and_mean_ignores_padding(tiny):
    model = _model(tiny, HeadSpec("a", "classification", pooling="mean"), HeadSpec("b", "classification"))
    model.eval()
    model.heads["b"].load_state_dict(model.heads["a"].state_dict())
    batch = _batch()
    with torch.no_grad():
        a, b = model("a", **batch)["logits"], model("b", **batch)["logits"]
        assert not torch.allclose(a, b)
        # changing a padded token must not change the mean-pooled logits of that row
        batch2 = {k: v.clone() for k, v in batch.items()}
        batch2["input_ids"][0, -1] = 77
        a2 = model("a", **batch2)["logits"]
    assert torch.allclose(a[0], a2[0], atol=1e-5)


def test_multiple_choice_flattens_choices(tiny):
    model = _model(tiny, HeadSpec("copa", "multiple_choice"))
    C = 4
    flat = _batch(b=B * C)
    batch = {k: v.view(B, C, L) for k, v in flat.items()} | {"labels": torch.tensor([3, 0, 1])}
    out = model("copa", **batch)
    assert out["logits"].shape == (B, C)
    assert torch.allclose(out["loss"], F.cross_entropy(out["logits"], batch["labels"]))
    out["loss"].backward()
    with pytest.raises(ConfigError, match=r"\[B, C, L\]"):
        model("copa", **_batch())


def test_extractive_qa_logits_and_loss(tiny):
    model = _model(tiny, HeadSpec("squad", "extractive_qa"))
    starts, ends = torch.tensor([0, 2, 4]), torch.tensor([0, 3, 6])  # row 0: no answer -> CLS
    out = model("squad", **_batch(), start_positions=starts, end_positions=ends)
    assert out["start_logits"].shape == out["end_logits"].shape == (B, L)
    expected = (F.cross_entropy(out["start_logits"], starts) + F.cross_entropy(out["end_logits"], ends)) / 2
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    # positions beyond the window are ignored, not an error
    far = model("squad", **_batch(), start_positions=torch.tensor([100, 2, 4]), end_positions=torch.tensor([100, 3, 6]))
    assert torch.isfinite(far["loss"])


def test_tagging_ignores_minus_100(tiny):
    model = _model(tiny, HeadSpec("ner", "tagging", num_labels=7))
    labels = torch.randint(0, 7, (B, L))
    labels[:, 0] = -100
    labels[0, -3:] = -100
    out = model("ner", **_batch(), labels=labels)
    assert out["logits"].shape == (B, L, 7)
    keep = labels != -100
    assert torch.allclose(out["loss"], F.cross_entropy(out["logits"][keep], labels[keep]))
    out["loss"].backward()


def test_heads_learn_a_fixed_batch(tiny):
    """A few optimiser steps on one batch: the loss of every head drops clearly."""
    torch.manual_seed(0)
    model = _model(tiny, HeadSpec("cls", "classification", num_labels=3), HeadSpec("tag", "tagging", num_labels=4))
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)  # 8M rows: keep the test fast
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = _batch()
    targets = {"cls": {"labels": torch.tensor([0, 1, 2])}, "tag": {"labels": torch.randint(0, 4, (B, L))}}
    first = {t: model(t, **batch, **targets[t])["loss"].item() for t in targets}
    for _ in range(40):
        for task, lab in targets.items():
            opt.zero_grad()
            model(task, **batch, **lab)["loss"].backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        last = {t: model(t, **batch, **targets[t])["loss"].item() for t in targets}
    for task in targets:
        assert last[task] < 0.6 * first[task], (task, first[task], last[task])


def test_bad_specs_and_names(tiny):
    with pytest.raises(UnknownNameError, match="extractive_qa"):
        HeadSpec("x", "regression")
    with pytest.raises(UnknownNameError):
        HeadSpec("x", "classification", pooling="max")
    model = _model(tiny, HeadSpec("a", "classification"))
    with pytest.raises(ConfigError, match="already has a head"):
        model.add_head(HeadSpec("a", "tagging"))
    with pytest.raises(UnknownNameError, match="unknown head 'b'"):
        model("b", **_batch())


def test_embed_layers_and_pooling(tiny):
    model = _model(tiny).eval()
    batch = _batch()
    with torch.no_grad():
        last = model.embed(**batch)
        explicit = model.embed(**batch, layer=2)
        neg = model.embed(**batch, layer=-1)
        first_layer = model.embed(**batch, layer=1)
        cls = model.embed(**batch, pooling="cls")
        hidden = model.encoder(**batch).last_hidden_state
    assert last.shape == (B, 32)
    assert torch.allclose(last, explicit, atol=1e-5) and torch.allclose(last, neg, atol=1e-5)
    assert not torch.allclose(last, first_layer)
    assert torch.allclose(cls, hidden[:, 0], atol=1e-5)
    with pytest.raises(ConfigError, match="out of range"):
        model.embed(**batch, layer=3)


def test_save_load_round_trip(tiny, tmp_path):
    tok = tiny[1]
    specs = [HeadSpec("nli", "classification", num_labels=3, pooling="mean"), HeadSpec("qa", "extractive_qa"),
             HeadSpec("ner", "tagging", num_labels=5)]
    model = _model(tiny, *specs).eval()
    out_dir = tmp_path / "ckpt" / "model"
    model.save(out_dir, tokenizer=tok)
    assert {p.name for p in out_dir.iterdir()} == {"encoder", "heads.safetensors", "xstilts_model.json"}
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    meta = json.loads((out_dir / "xstilts_model.json").read_text())
    assert meta["base_model"] == "tiny" and [h["task"] for h in meta["heads"]] == ["nli", "qa", "ner"]

    loaded, tok2 = MultiTaskModel.load(out_dir)
    loaded.eval()
    assert loaded.head_specs == model.head_specs and len(tok2) == len(tok)
    batch = _batch()
    with torch.no_grad():
        for task in ("nli", "qa", "ner"):
            a, b = model(task, **batch), loaded(task, **batch)
            for key in a:
                assert torch.equal(a[key], b[key]), (task, key)

    with pytest.raises(CheckpointError, match="saved heads"):
        MultiTaskModel.load(out_dir, heads=["pos"])
    only, _ = MultiTaskModel.load(out_dir, heads=["ner"])
    assert list(only.heads) == ["ner"]

    # saving again over the same directory replaces it (encoder only this time); load without heads
    model.save(out_dir, with_heads=False, tokenizer=tok)
    assert not (out_dir / "heads.safetensors").exists()
    assert json.loads((out_dir / "xstilts_model.json").read_text())["heads"] == []
    none, _ = MultiTaskModel.from_pretrained(out_dir, heads=True)
    assert len(none.heads) == 0
    with torch.no_grad():
        assert torch.equal(none.embed(**batch), model.embed(**batch))


def test_load_plain_hf_dir_and_not_a_model_dir(tiny_model_dir, tmp_path):
    model, tok = MultiTaskModel.load(tiny_model_dir)
    assert len(model.heads) == 0 and len(tok) == 250002
    with pytest.raises(CheckpointError, match="not a model directory"):
        MultiTaskModel.load(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        MultiTaskModel.load(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "xstilts_model.json").write_text("{not json")
    (bad / "encoder").mkdir()
    (bad / "encoder" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="xstilts_model.json"):
        MultiTaskModel.load(bad)


def test_bert_encoder_gets_token_type_ids(tiny_dirs):
    encoder, _ = load_encoder(str(tiny_dirs["bert"]))
    model = MultiTaskModel(encoder, [HeadSpec("pawsx", "classification")]).eval()
    batch = _batch()
    tt = torch.zeros_like(batch["input_ids"])
    tt[:, 5:] = 1
    with torch.no_grad():
        a = model("pawsx", **batch)["logits"]
        b = model("pawsx", **batch, token_type_ids=tt)["logits"]
    assert not torch.allclose(a, b)  # segment ids reach the encoder


def test_mt5_encoder_heads_and_embed(tiny_dirs, tmp_path):
    encoder, tok = load_encoder(str(tiny_dirs["mt5"]))
    assert type(encoder).__name__ == "MT5EncoderModel"
    specs = [HeadSpec("xnli", "classification", num_labels=3), HeadSpec("copa", "multiple_choice", pooling="mean"),
             HeadSpec("qa", "extractive_qa"), HeadSpec("pos", "tagging", num_labels=4)]
    model = MultiTaskModel(encoder, specs)
    assert model.hidden_size == encoder.config.d_model == 32
    batch = _batch() | {"token_type_ids": torch.zeros(B, L, dtype=torch.long)}  # must be dropped for mT5
    out = model("xnli", **batch, labels=torch.tensor([0, 1, 2]))
    assert out["logits"].shape == (B, 3)
    out["loss"].backward()
    mc = {k: v.unsqueeze(1).expand(B, 2, L) for k, v in _batch().items()}
    assert model("copa", **mc)["logits"].shape == (B, 2)
    assert model("qa", **batch)["start_logits"].shape == (B, L)
    assert model("pos", **batch)["logits"].shape == (B, L, 4)
    model.eval()
    with torch.no_grad():
        emb = model.embed(**_batch(), layer=1)
    assert emb.shape == (B, 32)
    model.save(tmp_path / "m", tokenizer=tok)
    loaded, _ = MultiTaskModel.load(tmp_path / "m")
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded("pos", **batch)["logits"], model("pos", **batch)["logits"])
