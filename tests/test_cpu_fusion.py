"""models.cpu_fusion: bf16 CPU inference with the bias (+ GELU) fused into oneDNN's GEMM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from xstilts.models import HeadSpec, MultiTaskModel
from xstilts.models import cpu_fusion
from xstilts.models.cpu_fusion import fused_cpu_linears, fused_linear_available
from xstilts.models.predict import cast_for_inference, predict
from xstilts.tasks.formats import FeaturizeOptions, get_format
from xstilts.tasks.types import TaggingExample

NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
WORDS = "the quick brown fox jumps over a lazy dog near one quiet old river bank".split()

needs_fusion = pytest.mark.skipif(not fused_linear_available(), reason="this torch has no working oneDNN fused linear")


@pytest.fixture
def fresh_check():
    """The availability check is cached per process: tests that change the switch recompute it."""
    fused_linear_available.cache_clear()
    yield
    fused_linear_available.cache_clear()


@pytest.fixture(scope="module")
def bf16_model(tiny_model_dir):
    torch.manual_seed(0)
    m, tok = MultiTaskModel.from_pretrained(str(tiny_model_dir))
    m.add_head(HeadSpec(task="ner", kind="tagging", num_labels=len(NER)))
    return cast_for_inference(m.eval(), "bf16"), tok


def _batch(tok, n: int = 6):
    texts = [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(3 + i)) for i in range(n)]
    enc = tok(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _instance_forwards(model: nn.Module) -> int:
    return sum("forward" in vars(m) for m in model.modules())


@needs_fusion
def test_bf16_linears_fused_within_bf16_rounding_and_restored(bf16_model):
    m, tok = bf16_model
    batch = _batch(tok)
    layers = m.encoder.config.num_hidden_layers
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.inference_mode():
        ref = m("ner", **batch)["logits"].float()
        with fused_cpu_linears(m) as n:
            assert _instance_forwards(m) == n
            fused = m("ner", **batch)["logits"].float()
        after = m("ner", **batch)["logits"].float()
    # per layer: the feed-forward block (dense + GELU in one call), Q, K, V, attention output,
    # feed-forward output; plus the tagging head's linear layer(s)
    heads = sum(type(x) is nn.Linear for x in m.heads.modules())
    assert n == 6 * layers + heads
    assert _instance_forwards(m) == 0  # every patch removed
    assert torch.equal(after, ref)
    assert not torch.equal(fused, ref)  # the fused path really ran ...
    assert torch.allclose(fused, ref, atol=0.05, rtol=0.05)  # ... and agrees to bf16 rounding
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())


@needs_fusion
def test_gelu_fused_only_where_it_is_the_exact_erf_gelu(bf16_model):
    m, tok = bf16_model
    m = copy.deepcopy(m)
    inter = m.encoder.encoder.layer[0].intermediate
    inter.intermediate_act_fn = nn.GELU(approximate="tanh")  # not what oneDNN's "gelu" post-op computes
    with fused_cpu_linears(m):
        assert "forward" not in vars(inter)  # block left alone ...
        assert "forward" in vars(inter.dense)  # ... its linear fused without the activation
        assert "forward" in vars(m.encoder.encoder.layer[1].intermediate)


def test_fp32_model_is_never_patched(tiny_model_dir):
    m, tok = MultiTaskModel.from_pretrained(str(tiny_model_dir))
    m.add_head(HeadSpec(task="ner", kind="tagging", num_labels=len(NER)))
    with fused_cpu_linears(m.eval()) as n:
        assert n == 0 and _instance_forwards(m) == 0


def test_check_runs_inside_autocast(fresh_check):
    """A training run's bf16 dev evaluation calls predict under autocast: the first check happens there."""
    expected = fused_linear_available()
    fused_linear_available.cache_clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_linear_available() == expected


def test_switch_off_by_environment(monkeypatch, fresh_check, bf16_model):
    monkeypatch.setenv(cpu_fusion.ENV, "0")
    assert not fused_linear_available()
    with fused_cpu_linears(bf16_model[0]) as n:
        assert n == 0


def test_op_that_fails_its_check_leaves_everything_unfused(monkeypatch, fresh_check, bf16_model):
    def broken(*args, **kwargs):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(cpu_fusion, "_fused", broken)
    assert not fused_linear_available()
    with fused_cpu_linears(bf16_model[0]) as n:
        assert n == 0


def test_patches_removed_when_the_block_raises(bf16_model):
    m = bf16_model[0]
    with pytest.raises(ValueError), fused_cpu_linears(m):
        raise ValueError("stop")
    assert _instance_forwards(m) == 0


@needs_fusion
def test_predict_bf16_on_cpu_runs_fused_and_matches_unfused(monkeypatch, fresh_check, bf16_model):
    m, tok = bf16_model
    fmt = get_format("tagging")
    exs = [TaggingExample(str(i), WORDS[i % 5: i % 5 + 3 + i % 7], ["O"] * (3 + i % 7)) for i in range(13)]
    feats = fmt.featurize(exs, tok, FeaturizeOptions(max_length=32), NER)
    assert fused_linear_available()  # the check's own calls happen before the counter is installed
    params = {id(p) for p in m.parameters()}
    calls = []
    real = cpu_fusion._fused
    monkeypatch.setattr(cpu_fusion, "_fused", lambda x, w, *a: calls.append(id(w) in params) or real(x, w, *a))
    fused = predict(m, "ner", fmt, feats, batch_size=4, pad_token_id=tok.pad_token_id, precision="bf16")["logits"]
    assert calls and all(calls)  # predict ran the model's own layers through the fused op
    monkeypatch.setenv(cpu_fusion.ENV, "0")
    fused_linear_available.cache_clear()
    plain = predict(m, "ner", fmt, feats, batch_size=4, pad_token_id=tok.pad_token_id, precision="bf16")["logits"]
    real_tokens = plain > -1e3  # OUTPUT_PAD beyond each feature's length, identical on both
    assert np.array_equal(real_tokens, fused > -1e3)
    np.testing.assert_allclose(fused[real_tokens], plain[real_tokens], atol=0.05, rtol=0.05)


class ToyIntermediate(nn.Module):
    """The shape of a transformers feed-forward block: dense, then an erf GELU."""

    def __init__(self, extra_norm: bool = False):
        super().__init__()
        self.dense = nn.Linear(64, 96)
        self.intermediate_act_fn = nn.GELU()
        if extra_norm:  # RoBERTa-PreLayerNorm's block runs a LayerNorm before dense
            self.LayerNorm = nn.LayerNorm(64)

    def forward(self, x):
        if hasattr(self, "LayerNorm"):
            x = self.LayerNorm(x)
        return self.intermediate_act_fn(self.dense(x))


class Toy(nn.Module):
    def __init__(self, extra_norm: bool = False):
        super().__init__()
        self.intermediate = ToyIntermediate(extra_norm)
        self.out = nn.Linear(96, 32)
        self.no_bias = nn.Linear(32, 16, bias=False)

    def forward(self, x):
        return self.no_bias(self.out(self.intermediate(x)))


def _toy(extra_norm: bool = False) -> Toy:
    torch.manual_seed(0)
    toy = Toy(extra_norm)
    with torch.no_grad():  # order-1 activations, so a missing GELU or bias shows
        for lin in (toy.intermediate.dense, toy.out, toy.no_bias):
            lin.weight.normal_(0, 1 / lin.in_features ** 0.5)
            if lin.bias is not None:
                lin.bias.normal_(0, 1)
    return toy


@needs_fusion
def test_fused_modules_as_accurate_as_unfused_bf16():
    """Against an fp32 reference, the fused block (dense + GELU) and linear layer are as close as
    the unfused bf16 ones: a dropped GELU or bias would be off by order 1."""
    ref_model = _toy()
    x = torch.randn(4, 7, 64)
    with torch.inference_mode():
        ref_block = ref_model.intermediate(x)
        ref_out = ref_model.out(ref_block)
        low = copy.deepcopy(ref_model).bfloat16()
        xb = x.bfloat16()
        plain_block, plain_out = low.intermediate(xb).float(), low.out(ref_block.bfloat16()).float()
        with fused_cpu_linears(low) as n:
            assert n == 2  # the block and `out`; `no_bias` has nothing to fuse
            assert "forward" not in vars(low.no_bias) and "forward" not in vars(low.intermediate.dense)
            fused_block, fused_out = low.intermediate(xb).float(), low.out(ref_block.bfloat16()).float()
    for fused, plain, ref in ((fused_block, plain_block, ref_block), (fused_out, plain_out, ref_out)):
        assert (fused - ref).abs().max() <= 2 * (plain - ref).abs().max() + 1e-2


@needs_fusion
def test_block_with_other_children_or_hooks_is_not_fused_as_a_block():
    with torch.inference_mode():
        norm = _toy(extra_norm=True).bfloat16()
        with fused_cpu_linears(norm):
            assert "forward" not in vars(norm.intermediate)  # its own forward keeps the LayerNorm ...
            assert "forward" in vars(norm.intermediate.dense)  # ... and calls the fused linear
        hooked = _toy().bfloat16()
        seen = []
        hooked.intermediate.dense.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
        x = torch.randn(2, 3, 64).bfloat16()
        with fused_cpu_linears(hooked):
            assert "forward" not in vars(hooked.intermediate)
            hooked(x)
        assert seen == [torch.Size([2, 3, 96])]  # the hook still ran


@needs_fusion
def test_patched_layers_run_their_own_forward_with_gradients_or_another_dtype():
    toy = _toy().bfloat16()
    x = torch.randn(2, 3, 64).bfloat16()
    expected = toy(x)
    with fused_cpu_linears(toy) as n:
        assert n == 2
        with torch.enable_grad():
            assert torch.equal(toy(x), expected)  # gradients wanted: the unfused path
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            # an fp32 input under autocast: nn.Linear's own forward casts it (the fused op would raise)
            assert torch.equal(toy(x.float()), expected)
