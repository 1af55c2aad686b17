"""Evaluation speed without changing results: one length-sorted stream across languages
(``predict_groups``), one model load per ``zero_shot_eval`` call, a cheap tokenizer
fingerprint that ignores the tokenizer's call state, and the MLQA punctuation table built on
first use (not at import)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_predict import NER, _features, model  # noqa: F401,F811 - model: the shared module fixture
from xstilts.models import HeadSpec, MultiTaskModel
from xstilts.models.predict import SentenceEmbedding, feature_length, predict, predict_groups




@pytest.mark.parametrize("fmt_name,target", [
    ("classification", "nli"), ("tagging", "ner"), ("extractive_qa", "qa"), ("multiple_choice", "mc"),
    ("retrieval", SentenceEmbedding(layer=1, pooling="mean")),
])
def test_one_stream_across_groups_equals_one_predict_per_group(model, fmt_name, target):
    m, tok = model
    fmt, feats = _features(fmt_name, tok)
    groups = [feats[:4], feats[4:5], [], feats[5:]]  # uneven groups, an empty one
    together = predict_groups(m, target, fmt, groups, batch_size=3, pad_token_id=tok.pad_token_id)
    assert len(together) == len(groups) and together[2] == {}
    for group, got in zip(groups, together):
        if not group:
            continue
        ref = predict(m, target, fmt, group, batch_size=3, pad_token_id=tok.pad_token_id)
        assert set(got) == set(ref)
        for key in ref:
            assert got[key].shape == ref[key].shape, key  # token-level outputs: the group's own width
            if got[key].ndim > 2 or (got[key].ndim == 2 and fmt_name in ("tagging", "extractive_qa")):
                for i, f in enumerate(group):  # positions beyond a feature's length are padding: never read
                    n = feature_length(f)
                    np.testing.assert_allclose(got[key][i, :n], ref[key][i, :n], atol=1e-5)
            else:
                np.testing.assert_allclose(got[key], ref[key], atol=1e-5)


def _tiny_panx(tiny_model_dir, tmp_path):
    """PAN-X test files for de/fr/es under tmp_path/data and a tiny tagging model in tmp_path/model."""
    data = tmp_path / "data" / "panx"
    data.mkdir(parents=True)
    for lang in ("de", "fr", "es"):
        (data / f"test-{lang}.tsv").write_text("\n\n".join(f"Anna\tB-PER\nlives\tO\nhere{i}\tO" for i in range(5)) + "\n")
    from xstilts.tasks.catalog import get_task

    m, tok = MultiTaskModel.from_pretrained(str(tiny_model_dir))
    m.add_head(HeadSpec(task="panx", kind="tagging", num_labels=len(get_task("panx").label_list)))
    m.save(tmp_path / "model", tokenizer=tok)


def test_zero_shot_eval_loads_the_model_and_tokenizer_once(tiny_model_dir, tmp_path, monkeypatch):
    """One encoder and one tokenizer load per call, however many languages."""
    from transformers import AutoModel, AutoTokenizer

    from xstilts.evaluate import zero_shot_eval

    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))
    _tiny_panx(tiny_model_dir, tmp_path)
    counts = {"model": 0, "tokenizer": 0}
    for cls, key in ((AutoModel, "model"), (AutoTokenizer, "tokenizer")):
        real = cls.from_pretrained.__func__

        def counting(c, *a, _real=real, _key=key, **k):
            counts[_key] += 1
            return _real(c, *a, **k)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(counting))
    from xstilts.models import loading

    real_cls = loading._model_class
    monkeypatch.setattr(loading, "_model_class", lambda cfg: _counted(real_cls(cfg), counts))
    rep = zero_shot_eval(tmp_path / "model", "panx", languages="de,fr,es", data_dir=tmp_path / "data", split="test")
    assert sorted(rep.per_language) == ["de", "es", "fr"]
    assert counts == {"model": 1, "tokenizer": 1}


def _counted(cls, counts):
    class Counted(cls):  # type: ignore[misc, valid-type]
        @classmethod
        def from_pretrained(c, *a, **k):
            counts["model"] += 1
            return cls.from_pretrained(*a, **k)

    return Counted


def test_tokenizer_fingerprint_ignores_the_call_state_and_is_cheap():
    import time

    from tests.helpers import xlmr_tokenizer
    from xstilts.tasks.cache import _vocab_hash

    tok = xlmr_tokenizer()
    t0 = time.perf_counter()
    fresh = _vocab_hash(tok)
    seconds = time.perf_counter() - t0
    tok(["a b c", "d"], truncation=True, max_length=3, padding="max_length")  # records truncation + padding
    assert tok.backend_tokenizer.truncation is not None and tok.backend_tokenizer.padding is not None
    assert _vocab_hash(tok) == fresh
    tok.add_tokens(["<xstilts-new>"])
    assert _vocab_hash(tok) != fresh
    assert seconds < 1.5  # hashing the serialised backend, not parsing and re-dumping its JSON


def test_mlqa_punctuation_is_built_on_first_use_not_at_import():
    code = ("import xstilts.metrics.qa as q; assert q.mlqa_punctuation.cache_info().currsize == 0; "
            "assert '«' in q.MLQA_PUNCT and q.mlqa_punctuation.cache_info().currsize == 1; "
            "assert q.normalize_mlqa('Hello, «world»!', 'en') == 'hello world'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_groups_of_a_cast_model_run_without_autocast(model):
    """bf16 inference of a model cast once runs as it is (no per-call weight re-cast)."""
    import copy

    from xstilts.models.predict import _precision_context, cast_for_inference

    m, tok = model
    cast = cast_for_inference(copy.deepcopy(m), "bf16")
    assert isinstance(_precision_context(cast, "bf16", torch.device("cpu")), type(__import__("contextlib").nullcontext()))
    fmt, feats = _features("tagging", tok)
    out = predict_groups(cast, "ner", fmt, [feats[:3], feats[3:]], precision="bf16", pad_token_id=tok.pad_token_id)
    assert out[0]["logits"].dtype == np.float32 and out[0]["logits"].shape[-1] == len(NER)


def _counted_tokenizer_loads(monkeypatch) -> list[str]:
    """An empty tokenizer cache, and the sources of every ``AutoTokenizer.from_pretrained`` after it
    (no on-disk snapshots: these tests count the loads the in-memory cache saves)."""
    from tests.helpers import count_tokenizer_loads
    from xstilts.models import loading

    monkeypatch.setenv(loading.TOKENIZER_SNAPSHOTS_ENV, "0")
    return count_tokenizer_loads(monkeypatch)


def test_a_directory_tokenizer_is_loaded_once_and_copied(tiny_model_dir, monkeypatch):
    """Loading the same model directory again copies the tokenizer loaded first (each caller its
    own object, the same ids) instead of rebuilding it from its JSON."""
    from xstilts.models import loading

    loads = _counted_tokenizer_loads(monkeypatch)
    _, first = loading.load_encoder(str(tiny_model_dir))
    _, second = loading.load_encoder(str(tiny_model_dir))
    assert len(loads) == 1 and first is not second
    assert first("a tiny test").input_ids == second("a tiny test").input_ids
    second.add_tokens(["<only-in-second>"])
    assert len(first) != len(second)  # copies: one caller's change is not another's


def test_evaluation_shares_the_backend_of_a_tokenizer_loaded_before(tiny_model_dir, monkeypatch):
    """Inside ``shared_tokenizer_backends`` (zero-shot evaluation) a second load shares the first
    one's backend and vocabulary (no ~2 s copy of XLM-R's); outside it, a caller gets its own
    backend. A sharer that changes the backend in place does not leak into later loads."""
    from xstilts.models import loading
    from xstilts.tasks.cache import tokenizer_fingerprint

    loads = _counted_tokenizer_loads(monkeypatch)
    _, own = loading.load_encoder(str(tiny_model_dir))
    with loading.shared_tokenizer_backends():
        _, a = loading.load_encoder(str(tiny_model_dir))
        _, b = loading.load_encoder(str(tiny_model_dir))
    _, own2 = loading.load_encoder(str(tiny_model_dir))
    assert len(loads) == 1 and a is not b
    assert a.backend_tokenizer is b.backend_tokenizer
    assert own.backend_tokenizer is not a.backend_tokenizer and own2.backend_tokenizer is not a.backend_tokenizer
    assert a("a tiny test").input_ids == own("a tiny test").input_ids == own2("a tiny test").input_ids
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b) == tokenizer_fingerprint(own)
    a.add_tokens(["<changed-by-a-sharer>"])  # against the contract: the cache notices and reloads
    _, after = loading.load_encoder(str(tiny_model_dir))
    assert len(loads) == 2 and len(after) == len(own)


def test_zero_shot_eval_loads_its_tokenizer_sharing_the_backend(tiny_model_dir, tmp_path, monkeypatch):
    from xstilts.evaluate import zero_shot_eval
    from xstilts.models import loading

    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))
    _tiny_panx(tiny_model_dir, tmp_path)
    shares = []
    real = loading._copy_tokenizer
    monkeypatch.setattr(loading, "_copy_tokenizer", lambda tok, share: shares.append(share) or real(tok, share))
    reports = [zero_shot_eval(tmp_path / "model", "panx", languages="de,fr", data_dir=tmp_path / "data", split="test")
               for _ in range(2)]
    assert shares == [True, True]
    assert reports[0].per_language == reports[1].per_language


@pytest.mark.parametrize("preset", [None, "256"])
def test_importing_xstilts_bounds_onednn_primitive_cache_unless_the_user_chose(preset):
    """bf16 sorted streams meet a new shape per batch; the default 1024-entry oneDNN cache then
    grows by GBs (XQuAD 300/lang: 5.4 GB vs 2.8 GB). ``import xstilts`` sets 16, a user's value wins."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if preset is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = preset
    code = "import os, xstilts; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True).stdout
    assert out.strip() == (preset or "16")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about_once(native, monkeypatch, caplog):
    """Without AVX512-BF16/AMX torch emulates bf16, several times slower than fp32: say so, once."""
    from xstilts.models import predict as pr

    pr.cpu_has_bf16_instructions.cache_clear()
    pr._warn_bf16_emulated.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    try:
        with caplog.at_level("WARNING", logger="xstilts.models.predict"):
            pr.resolve_device("cpu", "fp32")
            pr.resolve_device("cpu", "bf16")
            pr.resolve_device("cpu", "bf16")
    finally:
        pr.cpu_has_bf16_instructions.cache_clear()
        pr._warn_bf16_emulated.cache_clear()
    warned = [r.getMessage() for r in caplog.records if "no bf16 instructions" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
    if not native:
        assert "Use precision fp32" in warned[0]
