"""Helpers for tests: the offline XLM-R tokenizer and tiny random-weight encoders."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def xlmr_tokenizer_file() -> Path:
    import semantra_multilingual

    return Path(semantra_multilingual.__file__).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"


@lru_cache(maxsize=1)
def xlmr_tokenizer():
    """A ``transformers`` fast tokenizer for XLM-R built from the offline tokenizer.json."""
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()))


def tiny_encoder_dir(directory: Path, *, kind: str = "xlm-roberta", hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random-weight encoder (XLM-R- or BERT- or mT5-shaped) with the XLM-R tokenizer."""
    import torch
    from transformers import AutoModel, BertConfig, MT5Config, MT5EncoderModel, XLMRobertaConfig

    torch.manual_seed(seed)
    tok = xlmr_tokenizer()
    common = dict(vocab_size=len(tok))
    if kind == "xlm-roberta":
        cfg = XLMRobertaConfig(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2,
                               intermediate_size=hidden_size * 2, max_position_embeddings=514, pad_token_id=tok.pad_token_id, **common)
        model = AutoModel.from_config(cfg)
    elif kind == "bert":
        cfg = BertConfig(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=hidden_size * 2, max_position_embeddings=512, pad_token_id=tok.pad_token_id, **common)
        model = AutoModel.from_config(cfg)
    elif kind == "mt5":
        cfg = MT5Config(d_model=hidden_size, d_ff=hidden_size * 2, d_kv=16, num_layers=layers, num_heads=2,
                        pad_token_id=tok.pad_token_id, **common)
        model = MT5EncoderModel(cfg)
    else:
        raise ValueError(kind)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def count_tokenizer_loads(monkeypatch) -> list[str]:
    """An empty in-memory tokenizer cache, and the sources of every ``AutoTokenizer.from_pretrained``
    after it (the list fills as they happen)."""
    from transformers import AutoTokenizer

    from xstilts.models import loading

    loads: list[str] = []
    real = AutoTokenizer.from_pretrained.__func__
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        classmethod(lambda c, *a, **k: loads.append(a[0]) or real(c, *a, **k)))
    monkeypatch.setattr(loading, "_TOKENIZERS", {})
    return loads
