"""A format registered from outside the package trains and evaluates end to end.

The toy format below lives in this test module, not in ``xstilts.tasks.formats``: one
``Format`` subclass, one ``Head`` subclass and a catalog entry registered programmatically
are all it takes for ``train_stage`` and ``zero_shot_eval`` (and the generic
``jsonl_<format>`` reader) to handle it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xstilts.errors import ConfigError, UnknownNameError
from xstilts.evaluate import rescore, zero_shot_eval
from xstilts.models import Head, HeadSpec, head_kinds, pool, register_head, unregister_head
from xstilts.tasks.catalog import get_task, register_task, unregister_task
from xstilts.tasks.formats import (
    FORMAT_NAMES,
    Format,
    format_names,
    get_format,
    register_format,
    unregister_format,
)
from xstilts.tasks.readers import READERS, read_jsonl
from xstilts.train import make_train_config, train_stage

WORDS = "house river green table window music paper stone cloud bread garden light".split()


@dataclass
class FlagExample:
    """A sentence and whether it contains the word "alarm"."""

    id: str
    text: str
    flag: bool | None = None


class FlagFormat(Format):
    """Binary flag per sentence, one logit per feature (its own head kind)."""

    name: ClassVar[str] = "toy_flag"
    head_kind: ClassVar[str | None] = "toy_logit"
    metrics: ClassVar[tuple[str, ...]] = ("flag_accuracy",)
    json_fields: ClassVar[dict[str, str]] = {"id": "id", "text": "text", "flag": "flag"}

    def example_from_json(self, record: Any, label_list: Sequence[str] | None = None) -> FlagExample:
        flag = record.opt("flag")
        if flag is not None and not isinstance(flag, bool):
            raise record.error(f"'flag' should be true or false, got {flag!r}")
        return FlagExample(id=record.id, text=record.require("text", str), flag=flag)

    def is_labelled(self, example: FlagExample) -> bool:
        return example.flag is not None

    def featurize(self, examples, tokenizer, options, label_list=None) -> list[dict[str, Any]]:
        enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=options.max_length)
        labelled = any(ex.flag is not None for ex in examples)
        features = []
        for i, ex in enumerate(examples):
            feat = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "example_index": i}
            if labelled:
                feat["labels"] = -100 if ex.flag is None else int(ex.flag)
            features.append(feat)
        return features

    def collate(self, features, pad_token_id: int) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.tensor([list(f["input_ids"]) + [pad_token_id] * (width - len(f["input_ids"]))
                                       for f in features]),
            "attention_mask": torch.tensor([list(f["attention_mask"]) + [0] * (width - len(f["attention_mask"]))
                                            for f in features]),
        }
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features])
        return batch

    def decode(self, examples, features, outputs, label_list=None, **options) -> dict[str, bool]:
        logits = np.asarray(outputs["flag_logit"]).reshape(-1)
        indices = [int(f["example_index"]) for f in features]
        return {examples[idx].id: bool(logits[i] > 0) for i, idx in enumerate(indices)}

    def score(self, examples, predictions, metric, language=None) -> dict[str, float]:
        right = [predictions[ex.id] == ex.flag for ex in examples]
        return {"accuracy": 100.0 * sum(right) / len(right)}


class FlagHead(Head):
    """Mean-pooled state -> one logit; binary cross-entropy."""

    kind: ClassVar[str] = "toy_logit"

    def __init__(self, spec: HeadSpec, hidden: int, dropout: float):
        super().__init__(spec, hidden, dropout)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None, batch: Any) -> dict[str, Tensor]:
        return {"flag_logit": self.proj(pool(hidden, attention_mask, "mean")).squeeze(-1)}

    def loss(self, outputs: dict[str, Tensor], batch: Any) -> Tensor | None:
        labels = batch.get("labels")
        if labels is None:
            return None
        return F.binary_cross_entropy_with_logits(outputs["flag_logit"].float(), labels.float())


def _write_split(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
        flag = rng.random() < 0.5
        if flag:
            words.insert(rng.randint(0, len(words)), "alarm")
        rows.append({"id": f"s{seed}-{i}", "text": " ".join(words), "flag": flag})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy format, head and task registered (and removed afterwards); its data dir."""
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    _write_split(data / "toy" / "train.en.jsonl", 160, 0)
    for seed, lang in enumerate(("en", "de"), start=1):
        _write_split(data / "toy" / f"dev.{lang}.jsonl", 40, seed)
    register_format(FlagFormat)
    register_head(FlagHead)
    spec = register_task({
        "name": "toy_flags", "format": "toy_flag", "role": "both", "languages": ["en", "de"],
        "splits": ["train", "dev"], "eval_split": "dev", "metric": "flag_accuracy", "primary_metric": "accuracy",
        "local": {"reader": "jsonl_toy_flag", "paths": {"train": "toy/train.{lang}.jsonl", "dev": "toy/dev.{lang}.jsonl"}},
    })
    yield spec, data
    unregister_task("toy_flags")
    unregister_head("toy_logit")
    unregister_format("toy_flag")


def test_registered_format_is_known_everywhere(toy):
    spec, data = toy
    assert "toy_flag" in format_names() and "toy_flag" not in FORMAT_NAMES  # built-ins stay five
    assert "toy_logit" in head_kinds()
    assert get_task("toy-flags") is spec and spec.trainable
    assert "jsonl_toy_flag" in READERS
    examples = read_jsonl(data / "toy" / "dev.de.jsonl", format="toy_flag")
    assert len(examples) == 40 and isinstance(examples[0], FlagExample)
    assert get_format("toy_flag").is_labelled(examples[0])


def test_registration_errors_name_what_is_wrong(toy, tmp_path):
    class Other(FlagFormat):
        pass

    with pytest.raises(ConfigError, match="already registered"):
        register_format(Other)
    with pytest.raises(ConfigError, match="already in the catalog"):
        register_task(get_task("toy_flags"))
    with pytest.raises(ConfigError, match="metric"):
        register_task({**get_task("toy_flags").model_dump(), "name": "toy_bad", "metric": "accuracy"})
    with pytest.raises(ConfigError, match="unknown format"):
        register_task({**get_task("toy_flags").model_dump(), "name": "toy_bad", "format": "nope"})
    with pytest.raises(UnknownNameError, match="head kind"):
        HeadSpec("x", "no_such_kind")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "flag": "yes"}\n', encoding="utf-8")
    with pytest.raises(Exception, match=r"bad.jsonl, line 1: 'flag' should be true or false"):
        read_jsonl(bad, format="toy_flag")


def test_toy_format_trains_and_evaluates_end_to_end(toy, tiny_model_dir, tmp_path):
    spec, data = toy
    cfg = make_train_config({"model": str(tiny_model_dir), "tasks": [{"task": "toy_flags"}], "data_dir": str(data),
                             "learning_rate": 2e-3, "batch_size": 16, "num_epochs": 2, "max_length": 32,
                             "warmup_ratio": 0.1, "progress": False, "seed": 0, "log_every": 1})
    result = train_stage(cfg, tmp_path / "stage")
    assert set(result.dev_metrics["toy_flags"]) == {"accuracy"}
    meta = json.loads((result.model_dir / "xstilts_model.json").read_text())
    assert [(h["task"], h["kind"]) for h in meta["heads"]] == [("toy_flags", "toy_logit")]

    out = tmp_path / "eval"
    report = zero_shot_eval(result.model_dir, "toy_flags", data_dir=data, out_dir=out, batch_size=8)
    assert set(report.per_language) == {"en", "de"} and report.settings["head"] == "toy_flags"
    assert all(0.0 <= s["accuracy"] <= 100.0 for s in report.per_language.values())
    rows = [json.loads(line) for line in (out / "predictions" / "de.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(isinstance(r["prediction"], bool) for r in rows)
    assert rescore(out).per_language == report.per_language
