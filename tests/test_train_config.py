"""Train layer without a model: config validation, samplers, data order, MLM masking, checkpoint helpers."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from xstilts.errors import CheckpointError, ConfigError
from xstilts.train import checkpoint as ckpt
from xstilts.train.config import SamplerConfig, load_train_config, make_train_config
from xstilts.train.data import mix_extra
from xstilts.train.mlm import mask_tokens
from xstilts.train.sampling import MLM_TASK, BatchStream, StreamState, TaskSampler, batch_order, shard_batch, task_probabilities


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "stage.yaml"
    f.write_text("model: m\ntasks: [{task: xnli}]\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(f)
    assert e.value.key == "learning_rat" and "stage.yaml" in str(e.value)


def test_nested_bad_values_name_the_key():
    with pytest.raises(ConfigError) as e:
        make_train_config({"model": "m", "tasks": [{"task": "a", "extra_ratio": -1}]})
    assert e.value.key == "tasks.0.extra_ratio"
    with pytest.raises(ConfigError) as e:
        make_train_config({"model": "m", "tasks": [{"task": "a"}], "precision": "fp8"})
    assert e.value.key == "precision"
    with pytest.raises(ConfigError, match="at least one entry"):
        make_train_config({"model": "m"})
    with pytest.raises(ConfigError, match="caps names task"):
        make_train_config({"model": "m", "tasks": [{"task": "a"}], "sampler": {"caps": {"b": 3}}})


def test_yaml_overrides_and_hash(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("model: m\ntasks: [{task: a}, {task: b}]\nsampler: {kind: temperature, temperature: 3}\n")
    c = load_train_config(f, {"max_steps": 7, "seed": None})
    assert c.max_steps == 7 and c.sampler.temperature == 3 and c.seed == 0
    same_weights = c.model_copy(update={"save_every": 5, "keep_last": 9})
    assert same_weights.hash() == c.hash()
    assert c.model_copy(update={"learning_rate": 1e-3}).hash() != c.hash()


def test_sampler_probabilities():
    sizes = {"a": 900, "b": 100}
    p = task_probabilities(sizes, SamplerConfig(kind="proportional"))
    assert p == pytest.approx({"a": 0.9, "b": 0.1})
    p = task_probabilities(sizes, SamplerConfig(kind="temperature", temperature=2.0))
    assert p["a"] == pytest.approx(30 / 40)
    assert task_probabilities(sizes, SamplerConfig(kind="uniform")) == {"a": 0.5, "b": 0.5}
    p = task_probabilities(sizes, SamplerConfig(kind="proportional", caps=100))
    assert p == pytest.approx({"a": 0.5, "b": 0.5})
    p = task_probabilities(sizes, SamplerConfig(kind="proportional", caps={"a": 300}))
    assert p == pytest.approx({"a": 0.75, "b": 0.25})


def test_task_sampler_is_pure_and_follows_probabilities():
    s = TaskSampler({"a": 0.75, "b": 0.25}, seed=3, mlm_probability=0.2)
    draws = [s.task_at(i) for i in range(4000)]
    assert draws == [TaskSampler({"a": 0.75, "b": 0.25}, seed=3, mlm_probability=0.2).task_at(i) for i in range(4000)]
    c = Counter(draws)
    assert c[MLM_TASK] / 4000 == pytest.approx(0.2, abs=0.03)
    assert c["a"] / (c["a"] + c["b"]) == pytest.approx(0.75, abs=0.03)
    assert [s.task_at(i) for i in range(50)] != [TaskSampler({"a": 0.75, "b": 0.25}, seed=4, mlm_probability=0.2).task_at(i)
                                                 for i in range(50)]


def test_batch_order_pure_complete_and_grouped():
    lengths = [(i * 37) % 101 for i in range(1000)]
    b1 = batch_order(lengths, 16, seed=1, epoch=0)
    assert b1 == batch_order(lengths, 16, seed=1, epoch=0)
    assert b1 != batch_order(lengths, 16, seed=1, epoch=1)
    assert sorted(i for b in b1 for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in b1) / len(b1)
    random_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b)
                        for b in batch_order(lengths, 16, 1, 0, group_by_length=False)) / len(b1)
    assert spread < random_spread / 4  # length grouping leaves little padding


def test_stream_resumes_exactly():
    lengths = list(range(50))
    full = BatchStream(lengths, 8, seed=0, stream=0)
    seq = [full.next() for _ in range(20)]  # crosses epochs (7 batches per epoch)
    part = BatchStream(lengths, 8, seed=0, stream=0)
    first = [part.next() for _ in range(9)]
    resumed = BatchStream(lengths, 8, seed=0, stream=0, state=StreamState(**part.state.to_dict()))
    assert first + [resumed.next() for _ in range(11)] == seq


def test_shard_batch_covers_batch():
    b = list(range(10))
    shards = [shard_batch(b, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == b
    assert shard_batch([5], 1, 2) == [5]  # too small: padded by repetition


def test_mask_tokens_bert_style():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 40))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    masked, labels = mask_tokens(ids, special, mask_token_id=4, vocab_size=1000, generator=g, mask_prob=0.15)
    chosen = labels != -100
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.02)
    assert not chosen[:, 0].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert (masked[chosen] == 4).float().mean().item() == pytest.approx(0.8, abs=0.05)
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_mix_extra_ratio():
    base, extra = list(range(100)), [f"x{i}" for i in range(30)]
    mixed = mix_extra(base, extra, 0.2, seed=0)
    assert len(mixed) == 120 and mixed[:100] == base and len(set(mixed[100:])) == 20
    assert len(mix_extra(base, extra, 0.5, seed=0)) == 150  # cycles when extra is smaller


def test_checkpoint_listing_and_pruning(tmp_path):
    for n in (2, 4, 6):
        d = tmp_path / f"step-{n}"
        (d / "model").mkdir(parents=True)
        ckpt.write_json_atomic(d / ckpt.STATE_FILE, {"step": n, "config_hash": "h"})
    (tmp_path / ".tmp-step-8").mkdir()
    ckpt.clean_temporaries(tmp_path)
    assert not (tmp_path / ".tmp-step-8").exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-2", "step-4", "step-6"]
    with pytest.raises(CheckpointError, match="another config"):
        ckpt.read_state(tmp_path / "step-6", "other")
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-4", "step-6"]
    # an incomplete step-N (e.g. killed while pruning) is skipped, not fatal (issue 18)
    (tmp_path / "step-9").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-4", "step-6"]
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        ckpt.read_state(tmp_path / "step-9")


def test_cli_reports_bad_key_without_traceback(tmp_path):
    from typer.testing import CliRunner

    from xstilts.cli import app

    f = tmp_path / "stage.yaml"
    f.write_text("model: m\ntasks: [{task: xnli, languagez: [en]}]\n")
    res = CliRunner().invoke(app, ["train", str(f), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "tasks.0.languagez" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "--model and --task" in res.output


def test_stage_config_yaml_is_read_strictly(tmp_path):
    f = tmp_path / "stage.yaml"
    f.write_text("model: m\ntasks: [{task: xnli}]\nmax_steps: 3\nmax_steps: 4\n")
    with pytest.raises(ConfigError, match=r"stage\.yaml.*'max_steps'.*lines 3 and 4"):
        load_train_config(f)
    f.write_bytes(b"model: m\ntasks: [{task: xnli}]\n# \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8.*byte offset 33 \(line 3, column 3"):
        load_train_config(f)
