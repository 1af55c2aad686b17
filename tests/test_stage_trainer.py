"""The stage trainer's dev evaluation is the zero-shot evaluation's inference loop; compact
vocabulary training is exact (no side effect on the random stream of dropout).

The data are tiny local files written in the test's tmp dir in the catalog's own layouts
(``mnli/*.jsonl``, ``panx/*-en.tsv``, ``squad/*-v1.1.json``), read through the catalog.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_support import stage_config, synthetic
from xstilts.evaluate import zero_shot_eval
from xstilts.train import train_stage
from xstilts.train.engine import StageTrainer

WORDS = "house river green table window music paper stone cloud bread garden light horse city".split()
NAMES = ["Anna", "Pedro", "Yuki", "Omar"]
NLI = ["entailment", "neutral", "contradiction"]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))


def _write_mnli(path: Path, n: int, rng: random.Random) -> None:
    rows = []
    for i in range(n):
        label = rng.choice(NLI)
        words = rng.sample(WORDS, 4)
        words.insert(rng.randint(0, 4), label)
        rows.append({"id": f"m{i}", "text_a": " ".join(words), "text_b": " ".join(rng.sample(WORDS, 3)), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_panx(path: Path, n: int, rng: random.Random) -> None:
    blocks = []
    for _ in range(n):
        tokens = rng.sample(WORDS, rng.randint(3, 6))
        tokens.insert(rng.randint(0, len(tokens)), rng.choice(NAMES))
        blocks.append("\n".join(f"{t}\t{'B-PER' if t in NAMES else 'O'}" for t in tokens))
    path.write_text("\n\n".join(blocks) + "\n")


def _write_squad(path: Path, n: int, rng: random.Random, prefix: str) -> None:
    paragraphs = []
    for i in range(n):
        name = rng.choice(NAMES)
        before = " ".join(rng.sample(WORDS, rng.randint(1, 5)))
        context = f"{before} {name} " + " ".join(rng.sample(WORDS, rng.randint(1, 5)))
        paragraphs.append({"context": context, "qas": [{"id": f"{prefix}{i}", "question": "who is it?",
                                                        "answers": [{"text": name, "answer_start": len(before) + 1}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))


@pytest.fixture
def local_data(tmp_path) -> Path:
    rng = random.Random(0)
    root = tmp_path / "data"
    for d in ("mnli", "panx", "squad"):
        (root / d).mkdir(parents=True)
    _write_mnli(root / "mnli" / "train.jsonl", 64, rng)
    _write_mnli(root / "mnli" / "dev.jsonl", 37, rng)
    _write_panx(root / "panx" / "train-en.tsv", 64, rng)
    _write_panx(root / "panx" / "dev-en.tsv", 29, rng)
    _write_squad(root / "squad" / "train-v1.1.json", 64, rng, "tq")
    _write_squad(root / "squad" / "dev-v1.1.json", 31, rng, "dq")
    return root


TASKS = ("mnli", "panx_en", "squad_v1")


def test_dev_evaluation_and_zero_shot_eval_agree(tiny_model_dir, tmp_path, local_data):
    """Same model, same data: the training engine's dev predictions and scores are exactly
    zero_shot_eval's (one inference loop; compact-vocabulary remapping included)."""
    common = {"data_dir": str(local_data), "eval_batch_size": 8, "max_length": 48, "doc_stride": 16}
    cfg = stage_config(tiny_model_dir, tasks=[{"task": t} for t in TASKS], max_steps=6, **common)
    result = train_stage(cfg, tmp_path / "stage")

    # the engine's dev evaluation, on the trained model (heads loaded, compact vocabulary on)
    again = stage_config(result.model_dir, tasks=[{"task": t} for t in TASKS], init_heads=True, max_steps=1, **common)
    trainer = StageTrainer(again, tmp_path / "probe")
    trainer.setup()
    assert trainer.compact is not None
    engine_preds = trainer.dev_predictions()

    for task in TASKS:
        report = zero_shot_eval(result.model_dir, task, languages=["en"], split="dev", data_dir=local_data,
                                batch_size=8, max_length=48, out_dir=tmp_path / "eval" / task)
        rows = [json.loads(x) for x in (tmp_path / "eval" / task / "predictions" / "en.jsonl").read_text().splitlines()]
        zero_shot_preds = {r["id"]: r["prediction"] for r in rows}
        assert len(zero_shot_preds) == len(engine_preds[task]) > 0
        assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in engine_preds[task].items()} == zero_shot_preds, task
        assert report.per_language["en"] == result.dev_metrics[task], task


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = dict(load_file(str(model_dir / "encoder" / "model.safetensors")))
    out.update({f"heads.{k}": v for k, v in load_file(str(model_dir / "heads.safetensors")).items()})
    return out


def test_compact_vocabulary_is_exact_with_dropout(tiny_model_dir, tmp_path):
    """20 steps with dropout (the tiny XLM-R has hidden and attention dropout 0.1): compact
    vocabulary on and off give the same weights. Building the compact embedding used to draw
    from the global RNG, shifting every later dropout mask (differences ~1e-2)."""
    assert json.loads((tiny_model_dir / "config.json").read_text())["hidden_dropout_prob"] > 0
    runs = {}
    for compact in (True, False):
        cfg = stage_config(tiny_model_dir, max_steps=20, compact_vocab=compact, weight_decay=0.1)
        runs[compact] = _weights(train_stage(cfg, tmp_path / f"compact-{compact}", task_data=synthetic("copycls")).model_dir)
    assert runs[True].keys() == runs[False].keys()
    for key in runs[True]:
        torch.testing.assert_close(runs[True][key], runs[False][key], rtol=0, atol=1e-6, msg=key)
