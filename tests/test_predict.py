"""models.predict: the one inference loop (length-sorted batches, feature order, precision, sharding)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xstilts.errors import ConfigError, UnknownNameError, XStiltsError
from xstilts.models import HeadSpec, MultiTaskModel
from xstilts.models.predict import (
    CPU_STREAMS,
    CPU_STREAMS_ENV,
    SentenceEmbedding,
    cast_for_inference,
    cpu_streams,
    length_sorted_batches,
    sorted_batch_sizes,
    predict,
    resolve_device,
    truncated_encoder,
)
from xstilts.tasks.formats import FeaturizeOptions, get_format
from xstilts.tasks.types import (
    Answer,
    BitextExample,
    ClassificationExample,
    MultipleChoiceExample,
    QAExample,
    TaggingExample,
)

NLI = ["entailment", "neutral", "contradiction"]
NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
WORDS = "the quick brown fox jumps over a lazy dog near one quiet old river bank".split()


def _sentence(i: int) -> str:
    return " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(2 + (i * 5) % 9))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    m, tok = MultiTaskModel.from_pretrained(str(tiny_model_dir))
    m.add_head(HeadSpec(task="nli", kind="classification", num_labels=3))
    m.add_head(HeadSpec(task="ner", kind="tagging", num_labels=len(NER)))
    m.add_head(HeadSpec(task="qa", kind="extractive_qa"))
    m.add_head(HeadSpec(task="mc", kind="multiple_choice"))
    m.train()  # predict must switch dropout off itself and give the mode back
    return m, tok


def _features(name: str, tok) -> tuple[object, list[dict]]:
    fmt = get_format(name)
    n = 11
    if name == "classification":
        exs = [ClassificationExample(str(i), _sentence(i), _sentence(i + 1), NLI[i % 3]) for i in range(n)]
        return fmt, fmt.featurize(exs, tok, FeaturizeOptions(max_length=32), NLI)
    if name == "tagging":
        exs = [TaggingExample(str(i), _sentence(i).split(), ["O"] * len(_sentence(i).split())) for i in range(n)]
        return fmt, fmt.featurize(exs, tok, FeaturizeOptions(max_length=32), NER)
    if name == "extractive_qa":
        exs = []
        for i in range(n):
            ctx = " ".join(_sentence(i + k) for k in range(1 + i % 4))
            word = ctx.split()[-1]
            exs.append(QAExample(str(i), ctx, "which " + WORDS[i % len(WORDS)] + "?", [Answer(word, ctx.rindex(word))]))
        return fmt, fmt.featurize(exs, tok, FeaturizeOptions(max_length=24, doc_stride=8, max_query_length=8))
    if name == "multiple_choice":
        exs = [MultipleChoiceExample(str(i), _sentence(i), "why?", [_sentence(i + 2), _sentence(i + 4)], i % 2)
               for i in range(n)]
        return fmt, fmt.featurize(exs, tok, FeaturizeOptions(max_length=32))
    exs = [BitextExample(str(i), _sentence(i), _sentence(i + 7)) for i in range(n)]
    return fmt, fmt.featurize(exs, tok, FeaturizeOptions(max_length=32))


def _one_by_one(m, target, fmt, feats, pad_id) -> dict[str, list[np.ndarray]]:
    """The reference: a plain forward of each feature alone (no padding), in feature order."""
    out: dict[str, list[np.ndarray]] = {}
    m.eval()
    with torch.no_grad():
        for f in feats:
            batch = {k: v for k, v in fmt.collate([f], pad_id).items() if k not in ("labels", "start_positions", "end_positions")}
            if isinstance(target, SentenceEmbedding):
                res = {"embeddings": m.embed(batch["input_ids"], batch["attention_mask"], layer=target.layer,
                                             pooling=target.pooling)}
            else:
                res = {k: v for k, v in m(target, **batch).items() if k != "loss"}
            for k, v in res.items():
                out.setdefault(k, []).append(v[0].numpy())
    m.train()
    return out


@pytest.mark.parametrize("fmt_name,target", [
    ("classification", "nli"), ("tagging", "ner"), ("extractive_qa", "qa"), ("multiple_choice", "mc"),
    ("retrieval", SentenceEmbedding(layer=1, pooling="mean")), ("retrieval", SentenceEmbedding(layer=-1, pooling="cls")),
    ("retrieval", SentenceEmbedding()),
])
def test_predict_equals_a_plain_forward_per_feature_in_order(model, fmt_name, target):
    m, tok = model
    fmt, feats = _features(fmt_name, tok)
    lengths = [len(f["input_ids"]) if fmt_name != "multiple_choice" else max(map(len, f["input_ids"])) for f in feats]
    assert len(set(lengths)) > 2  # batches really are reordered by length
    got = predict(m, target, fmt, feats, batch_size=4, pad_token_id=tok.pad_token_id)
    ref = _one_by_one(m, target, fmt, feats, tok.pad_token_id)
    assert m.training  # the caller's mode is given back
    assert set(got) == set(ref)
    for key, rows in ref.items():
        assert got[key].shape[0] == len(feats) and got[key].dtype == np.float32
        for i, row in enumerate(rows):
            if row.ndim == 0:
                np.testing.assert_allclose(got[key][i], row, atol=1e-5)
            else:  # token-level rows are padded beyond the feature's length
                np.testing.assert_allclose(got[key][i][tuple(slice(0, s) for s in row.shape)], row, atol=1e-5)
                assert got[key][i].shape[0] >= row.shape[0]


def test_length_sorted_batches_are_stable_and_complete():
    feats = [{"input_ids": [0] * n} for n in (5, 2, 5, 1, 2)]
    assert length_sorted_batches(feats, 2) == [[3, 1], [4, 0], [2]]  # equal batches (a GPU's)
    # with a batch cost (the CPU's): sorted 1 2 2 5 5 as [1] [2 2] [5 5] pads 15 tokens, equal batches 19
    assert length_sorted_batches(feats, 2, 3) == [[3], [1, 4], [0, 2]]
    same = [{"input_ids": [0] * 3} for _ in range(5)]
    assert length_sorted_batches(same, 2, 3) == [[0, 1], [2, 3], [4]]  # ties keep feature order
    assert length_sorted_batches([], 2) == []
    with pytest.raises(XStiltsError, match="batch_size must be >= 1"):
        length_sorted_batches(feats, 0)


def _padded(lengths, sizes):
    total, start = 0, 0
    for size in sizes:
        total += lengths[start + size - 1] * size
        start += size
    return total


def test_sorted_batch_sizes_minimise_padding_plus_batch_cost():
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 40) for _ in range(rng.randint(1, 9)))
        bs, cost = rng.randint(1, 4), rng.choice([0, 3, 64])
        sizes = sorted_batch_sizes(lengths, bs, cost)
        assert sum(sizes) == len(lengths) and all(1 <= s <= bs for s in sizes)
        # brute force over every way to cut the sorted stream into batches of at most bs
        best = min(_padded(lengths, c) + cost * len(c)
                   for k in range(1, len(lengths) + 1) for c in itertools.product(range(1, bs + 1), repeat=k)
                   if sum(c) == len(lengths))
        assert _padded(lengths, sizes) + cost * len(sizes) == best
    # a huge batch cost: equal batches; a long tail: the outlier alone
    assert sorted_batch_sizes([1] * 7, 3, 10**6) == [3, 3, 1]
    assert sorted_batch_sizes([10, 10, 10, 300], 4, 64) == [3, 1]


def test_sorted_batch_sizes_fall_back_to_equal_batches_beyond_the_work_bound(monkeypatch):
    import xstilts.models.predict as P

    monkeypatch.setattr(P, "PARTITION_MAX_WORK", 10)
    assert sorted_batch_sizes([1, 1, 1, 1, 50], 2, 64) == [2, 2, 1]
    with pytest.raises(XStiltsError, match="batch_size must be >= 1"):
        sorted_batch_sizes([1], 0, 64)
    with pytest.raises(ValueError, match="ascending"):
        sorted_batch_sizes([3, 1], 2, 64)


def test_predict_cuts_by_batch_cost_on_the_cpu_only(monkeypatch):
    import xstilts.models.predict as P

    seen = []  # the batches each call would run (the forward passes themselves are not needed here)
    monkeypatch.setattr(P, "_run_batches", lambda model, target, step, batches, *a: seen.append(batches) or ({}, {}))
    for device in ("cpu", "meta"):  # meta stands in for a GPU, as in test_gpu_path
        out = P.predict(torch.nn.Linear(1, 1), "h", None, [{"input_ids": [0] * n} for n in (1, 5, 5, 5)],
                        batch_size=3, device=device)
        assert out == {}
    # CPU: [1] [5 5 5] (16 tokens + 2 batches) rather than [1 5 5] [5] (20); GPU: equal batches
    assert seen == [[[0], [1, 2, 3]], [[0, 1, 2], [3]]]


def test_batch_size_does_not_change_fp32_outputs_beyond_rounding(model):
    m, tok = model
    fmt, feats = _features("classification", tok)
    a = predict(m, "nli", fmt, feats, batch_size=1, pad_token_id=tok.pad_token_id)["logits"]
    b = predict(m, "nli", fmt, feats, batch_size=64, pad_token_id=tok.pad_token_id)["logits"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert predict(m, "nli", fmt, [], pad_token_id=tok.pad_token_id) == {}


def test_bf16_autocast_and_cast_model_are_close_to_fp32(model):
    m, tok = model
    fmt, feats = _features("classification", tok)
    ref = predict(m, "nli", fmt, feats, batch_size=4, pad_token_id=tok.pad_token_id)["logits"]
    auto = predict(m, "nli", fmt, feats, batch_size=4, pad_token_id=tok.pad_token_id, precision="bf16")["logits"]
    assert next(m.parameters()).dtype == torch.float32  # autocast leaves a fp32 model untouched
    cast = cast_for_inference(copy.deepcopy(m), "bf16")
    assert next(cast.parameters()).dtype == torch.bfloat16
    low = predict(cast, "nli", fmt, feats, batch_size=4, pad_token_id=tok.pad_token_id, precision="bf16")["logits"]
    scale = max(1.0, float(np.abs(ref).max()))
    for other in (auto, low):
        assert not np.array_equal(ref, other)  # really ran in bf16
        assert np.abs(ref - other).max() <= 0.05 * scale
    # embeddings are pooled in fp32 from bf16 hidden states
    rfmt, rfeats = _features("retrieval", tok)
    e32 = predict(m, SentenceEmbedding(layer=1), rfmt, rfeats, pad_token_id=tok.pad_token_id)["embeddings"]
    e16 = predict(cast, SentenceEmbedding(layer=1), rfmt, rfeats, pad_token_id=tok.pad_token_id, precision="bf16")["embeddings"]
    cos = (e32 * e16).sum(1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e16, axis=1)
    assert cos.min() > 0.999


def test_fp16_cast_keeps_the_modules_transformers_keeps_in_fp32(tmp_path):
    from tests.helpers import tiny_encoder_dir

    m, tok = MultiTaskModel.from_pretrained(str(tiny_encoder_dir(tmp_path / "mt5", kind="mt5")))
    ref = predict(m, SentenceEmbedding(), get_format("retrieval"), _features("retrieval", tok)[1],
                  pad_token_id=tok.pad_token_id)["embeddings"]
    cast_for_inference(m, "fp16")
    dtypes = {name: p.dtype for name, p in m.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if ".wo." in n)
    assert all(d == torch.float16 for n, d in dtypes.items() if ".wi." in n)
    low = predict(m, SentenceEmbedding(), get_format("retrieval"), _features("retrieval", tok)[1],
                  pad_token_id=tok.pad_token_id, precision="fp16")["embeddings"]
    assert np.isfinite(low).all() and np.abs(low - ref).max() <= 0.05 * max(1.0, float(np.abs(ref).max()))


def test_transform_sees_every_batch_on_the_device(model):
    m, tok = model
    fmt, feats = _features("classification", tok)
    seen = []

    def spy(batch):
        seen.append(batch["input_ids"].shape[0])
        return batch

    predict(m, "nli", fmt, feats, batch_size=4, pad_token_id=tok.pad_token_id, transform=spy)
    assert sorted(seen) == [3, 4, 4]  # on the CPU two streams run batches at once, longest first


@pytest.fixture
def two_threads():
    """torch on 2 intra-op threads for the test (what the streams split), the count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("fmt_name,target", [("tagging", "ner"), ("extractive_qa", "qa"),
                                             ("retrieval", SentenceEmbedding(layer=1))])
def test_cpu_streams_give_the_one_stream_outputs_exactly(model, monkeypatch, two_threads, fmt_name, target):
    """Two batches at once on one intra-op thread each: the same fp32 numbers as one batch at a
    time on every thread (each batch's kernels see the same shapes), torch's thread count restored."""
    m, tok = model
    fmt, feats = _features(fmt_name, tok)
    monkeypatch.setenv(CPU_STREAMS_ENV, "1")
    one = predict(m, target, fmt, feats, batch_size=2, pad_token_id=tok.pad_token_id)
    monkeypatch.setenv(CPU_STREAMS_ENV, "2")
    assert cpu_streams(torch.device("cpu"), 6) == 2
    two = predict(m, target, fmt, feats, batch_size=2, pad_token_id=tok.pad_token_id, progress=True)
    assert torch.get_num_threads() == 2
    assert set(one) == set(two)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])


def test_a_caller_inside_autocast_keeps_it_with_streams_on(model, monkeypatch, two_threads):
    """autocast is thread-local: a caller's autocast must reach every batch (one stream then)."""
    m, tok = model
    fmt, feats = _features("classification", tok)
    outs = {}
    for streams in ("1", "2"):
        monkeypatch.setenv(CPU_STREAMS_ENV, streams)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[streams] = predict(m, "nli", fmt, feats, batch_size=2, pad_token_id=tok.pad_token_id)["logits"]
    fp32 = predict(m, "nli", fmt, feats, batch_size=2, pad_token_id=tok.pad_token_id)["logits"]
    np.testing.assert_array_equal(outs["1"], outs["2"])
    assert not np.array_equal(outs["2"], fp32)  # bf16 numbers, not fp32 ones


def test_cpu_streams_setting_and_errors(model, monkeypatch, two_threads):
    m, tok = model
    fmt, feats = _features("classification", tok)
    cpu = torch.device("cpu")
    monkeypatch.delenv(CPU_STREAMS_ENV, raising=False)
    assert cpu_streams(cpu, 10) == CPU_STREAMS == 2
    assert cpu_streams(cpu, 1) == 1  # one batch: nothing to run beside it
    assert cpu_streams(torch.device("meta"), 10) == 1  # accelerators run one batch at a time
    monkeypatch.setenv(CPU_STREAMS_ENV, "8")
    assert cpu_streams(cpu, 10) == 2  # at most one stream per thread
    torch.set_num_threads(1)
    assert cpu_streams(cpu, 10) == 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(CPU_STREAMS_ENV, bad)
        with pytest.raises(ConfigError, match=f"{CPU_STREAMS_ENV} must be a whole number >= 1"):
            cpu_streams(cpu, 10)
    # a batch that fails in a stream: the error reaches the caller, the thread count comes back
    torch.set_num_threads(2)
    monkeypatch.setenv(CPU_STREAMS_ENV, "2")

    def boom(batch):
        if batch["input_ids"].shape[0] == 3:
            raise RuntimeError("bad batch")
        return batch

    with pytest.raises(RuntimeError, match="bad batch"):
        predict(m, "nli", fmt, feats, batch_size=4, pad_token_id=tok.pad_token_id, transform=boom)
    assert torch.get_num_threads() == 2


class _FakeAccelerator:
    """Two 'processes' simulated in one: each call to predict is one rank; gather concatenates."""

    def __init__(self, rank: int, world: int, store: dict):
        self.process_index, self.num_processes, self.store = rank, world, store
        self.device = torch.device("cpu")
        self.is_main_process = rank == 0

    def pad_across_processes(self, tensor, dim=0, pad_index=0):
        return tensor  # the test pads nothing: gather below concatenates ragged arrays itself

    def gather(self, tensor):
        self.store.setdefault(self.process_index, []).append(tensor)
        return tensor


def test_sharded_predict_covers_every_feature_once(model):
    """Each rank runs every world-th batch; the union of what ranks gather is every feature once."""
    m, tok = model
    fmt, feats = _features("classification", tok)
    ref = predict(m, "nli", fmt, feats, batch_size=2, pad_token_id=tok.pad_token_id)["logits"]
    store: dict = {}
    parts = [predict(m, "nli", fmt, feats, batch_size=2, pad_token_id=tok.pad_token_id,
                     accelerator=_FakeAccelerator(r, 3, store))["logits"] for r in range(3)]
    seen = np.concatenate([store[r][0].numpy() for r in range(3)])  # the gathered indices of each rank
    assert sorted(seen.tolist()) == list(range(len(feats)))
    merged = np.full_like(ref, np.nan)
    for r in range(3):
        idx = store[r][0].numpy()
        merged[idx] = parts[r][idx]
    np.testing.assert_allclose(merged, ref, atol=1e-5)
    # more processes than batches: the idle rank reruns a batch marked to be dropped
    store = {}
    predict(m, "nli", fmt, feats[:2], batch_size=2, pad_token_id=tok.pad_token_id, accelerator=_FakeAccelerator(1, 2, store))
    assert (store[1][0].numpy() < 0).all()


def test_errors_name_what_is_wrong(model):
    m, tok = model
    fmt, feats = _features("retrieval", tok)
    with pytest.raises(UnknownNameError, match="head"):
        predict(m, "nope", fmt, feats, pad_token_id=tok.pad_token_id)
    with pytest.raises(ConfigError, match="layer 5 out of range for a 2-layer encoder"):
        predict(m, SentenceEmbedding(layer=5), fmt, feats, pad_token_id=tok.pad_token_id)
    with pytest.raises(ConfigError, match="pooling"):
        predict(m, SentenceEmbedding(pooling="max"), fmt, feats, pad_token_id=tok.pad_token_id)
    with pytest.raises(XStiltsError, match="precision must be one of fp32, bf16, fp16, got 'int8'"):
        predict(m, "nli", fmt, feats, pad_token_id=tok.pad_token_id, precision="int8")
    with pytest.raises(XStiltsError, match="fp16 needs a CUDA device"):
        resolve_device("cpu", "fp16")
    with pytest.raises(XStiltsError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_truncated_encoder_equals_hidden_state_of_that_layer(model):
    m, tok = model
    m.eval()
    enc = tok(["a short one", "a somewhat longer sentence here"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = m.embed(enc["input_ids"], enc["attention_mask"], layer=1)
        with truncated_encoder(m.encoder, 1) as applied:
            fast = m.embed(enc["input_ids"], enc["attention_mask"], layer=None)
    m.train()
    assert applied
    torch.testing.assert_close(ref, fast)
    assert len(m.encoder.encoder.layer) == 2  # restored


# --------------------------------------------------------------------------- real 2-process run (gloo)
REPO = Path(__file__).resolve().parents[1]


def _ddp_model(model_dir: Path):
    torch.manual_seed(0)  # the same head weights in every process and in the test
    m, tok = MultiTaskModel.from_pretrained(str(model_dir))
    m.add_head(HeadSpec(task="nli", kind="classification", num_labels=3))
    m.add_head(HeadSpec(task="ner", kind="tagging", num_labels=len(NER)))
    return m, tok


def _ddp_outputs(m, tok, accelerator=None) -> dict[str, np.ndarray]:
    out = {}
    for fmt_name, target in (("classification", "nli"), ("tagging", "ner")):
        fmt, feats = _features(fmt_name, tok)
        res = predict(m, target, fmt, feats, batch_size=4, pad_token_id=tok.pad_token_id, accelerator=accelerator)
        out.update({f"{target}.{k}": v for k, v in res.items()})
    return out


def _ddp_worker(model_dir: Path, out_dir: Path) -> None:
    """Run under torchrun: every rank predicts (3 batches over 2 ranks: uneven shards) and saves what it got."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    m, tok = _ddp_model(model_dir)
    np.savez(out_dir / f"rank-{acc.process_index}.npz", **_ddp_outputs(m, tok, acc))
    from xstilts.distributed import release_process_group

    release_process_group()  # as xstilts' entry points do (else gloo may abort the exit)


@pytest.mark.slow
def test_two_process_predict_gives_every_rank_the_one_process_outputs(tiny_model_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "tests.test_predict", str(tiny_model_dir), str(tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m, tok = _ddp_model(tiny_model_dir)
    ref = _ddp_outputs(m, tok)
    for rank in range(2):
        got = np.load(tmp_path / f"rank-{rank}.npz")
        assert set(got.files) == set(ref)
        for key, want in ref.items():
            assert got[key].shape == want.shape, key
            np.testing.assert_allclose(got[key], want, atol=1e-5, err_msg=key)


if __name__ == "__main__":
    _ddp_worker(Path(sys.argv[1]), Path(sys.argv[2]))
