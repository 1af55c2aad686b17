"""The MLM auxiliary task starts from the checkpoint's pretrained LM head (issue 14, item 10).

Reference behaviour: jiant's ``from_transformers_with_mlm`` load mode
(``jiant/proj/main/modeling/model_setup.py``, ``load_lm_heads_from_transformers_weights``) loads
the transformers checkpoint's LM head weights into its MLM task model and ties the decoder to the
encoder's word embeddings. Here: a tiny random XLM-R (and BERT) saved with
``AutoModelForMaskedLM``; the head built for the MLM auxiliary must reproduce that model's MLM
logits exactly, and a head is freshly initialised (with a warning) only where the checkpoint has
none.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import xlmr_tokenizer
from xstilts.models import load_encoder
from xstilts.train import make_train_config, train_stage
from xstilts.train.lm_head import pretrained_lm_head_state
from xstilts.train.mlm import MLMHead, build_mlm_head


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))


def _save_mlm_model(directory: Path, kind: str = "xlm-roberta", seed: int = 0) -> Path:
    """A tiny random masked-LM checkpoint (encoder + LM head) with the XLM-R tokenizer."""
    from transformers import AutoModelForMaskedLM, BertConfig, XLMRobertaConfig

    torch.manual_seed(seed)
    tok = xlmr_tokenizer()
    shape = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 pad_token_id=tok.pad_token_id)
    cfg = XLMRobertaConfig(max_position_embeddings=514, **shape) if kind == "xlm-roberta" else \
        BertConfig(max_position_embeddings=512, **shape)
    model = AutoModelForMaskedLM.from_config(cfg)
    with torch.no_grad():  # make the head's weights far from any fresh initialisation
        for name, p in model.named_parameters():
            if "lm_head" in name or "cls.predictions" in name:
                p.normal_(0.0, 0.5)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> Path:
    return _save_mlm_model(tmp_path_factory.mktemp("tiny-xlmr-mlm"))


def _reference_logits(directory: Path, text: str) -> tuple[torch.Tensor, dict]:
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(directory).eval()
    batch = xlmr_tokenizer()([text], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits, batch


def _head_logits(directory: Path, batch: dict, source: str | None) -> tuple[torch.Tensor, torch.nn.Module, Any]:
    encoder, _ = load_encoder(str(directory))
    encoder.eval()
    head = build_mlm_head(encoder, source).eval()
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return head(hidden), head, encoder


def mlm_dir_for(kind: str, tmp_path: Path) -> Path:
    return _save_mlm_model(tmp_path / kind, kind=kind)


@pytest.mark.parametrize("kind", ["xlm-roberta", "bert"])
def test_the_pretrained_lm_head_reproduces_the_checkpoints_mlm_logits(kind: str, tmp_path: Path) -> None:
    directory = mlm_dir_for(kind, tmp_path)
    want, batch = _reference_logits(directory, "the river runs by the green house")
    got, head, encoder = _head_logits(directory, batch, str(directory))
    assert isinstance(head, MLMHead)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the decoder is the encoder's input embedding matrix, not a copy
    assert head.embeddings.weight is encoder.get_input_embeddings().weight


def test_a_checkpoint_without_lm_head_gets_a_new_one_and_says_so(tiny_model_dir, mlm_dir: Path, caplog) -> None:
    assert pretrained_lm_head_state(str(tiny_model_dir)) is None  # saved with AutoModel: no head
    want, batch = _reference_logits(mlm_dir, "a green table")
    with caplog.at_level(logging.WARNING, logger="xstilts.train.mlm"):
        _, head, _ = _head_logits(tiny_model_dir, batch, str(tiny_model_dir))
    assert "no pretrained LM head" in caplog.text and str(tiny_model_dir) in caplog.text
    assert isinstance(head, MLMHead) and torch.count_nonzero(head.bias) == 0  # fresh: zero bias


def test_an_xstilts_model_dir_takes_the_lm_head_of_its_base_model(mlm_dir: Path, tmp_path: Path) -> None:
    from xstilts.models import MultiTaskModel

    model, tok = MultiTaskModel.from_pretrained(str(mlm_dir))
    saved = tmp_path / "stage-model"
    model.save(saved, tokenizer=tok)
    assert json.loads((saved / "xstilts_model.json").read_text())["base_model"] == str(mlm_dir)
    found = pretrained_lm_head_state(str(saved))
    assert found is not None and found[1] == str(mlm_dir)
    reference = pretrained_lm_head_state(str(mlm_dir))
    assert reference is not None
    assert all(torch.equal(found[0][k], reference[0][k]) for k in reference[0])


def test_an_mlm_stage_starts_from_the_pretrained_head(mlm_dir: Path, tmp_path: Path, caplog) -> None:
    text = tmp_path / "wiki.de.txt"
    text.write_text("".join(f"das Haus am Fluss ist grün {i}\n" for i in range(40)))
    cfg = make_train_config({"model": str(mlm_dir), "mlm": {"files": [str(text)], "probability": 1.0},
                             "max_steps": 1, "batch_size": 4, "max_length": 32, "progress": False})
    with caplog.at_level(logging.INFO, logger="xstilts.train.mlm"):
        train_stage(cfg, tmp_path / "stage")
    assert f"the pretrained LM head of {mlm_dir}" in caplog.text
    assert "new LM head" not in caplog.text
