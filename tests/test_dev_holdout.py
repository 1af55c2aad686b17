"""A stage that trains on the split it is dev-evaluated on (issue 14, item 2: ANLI, CosmosQA,
CommonsenseQA offline train on ``split: dev``) never scores its dev evaluation, or picks its best
checkpoint, on its own training examples: a seeded slice of the split is held out first, before
the training examples are subsampled, and recorded.

Before this, seeded subsamples of one split nearly nested (``max_examples=64`` drew almost a
subset of ``max_examples=400`` with the same seed), so a dev draw sat inside the training draw.
jiant avoids the question by never training on a split it validates on; its dev evaluation uses
the first ``eval_subset_num`` examples of the validation split
(``jiant/proj/main/runner.py``, ``get_val_dataloader_dict(use_subset=True)``).

The data are tiny MNLI-layout files written in the test's tmp dir (``mnli/dev.jsonl``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from xstilts.tasks.loading import subsample
from xstilts.train import train_stage
from xstilts.train.config import DEFAULT_DEV_HOLDOUT, make_train_config, trains_on_dev_split
from xstilts.train.data import HELDOUT_FILE, hold_out_dev, load_task_data

WORDS = "house river green table window music paper stone cloud bread garden light horse city".split()
NLI = ["entailment", "neutral", "contradiction"]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    rng = random.Random(5)
    root = tmp_path / "data"
    (root / "mnli").mkdir(parents=True)
    for split, n in (("dev", 120), ("train", 40)):
        rows = []
        for i in range(n):
            label = rng.choice(NLI)
            words = rng.sample(WORDS, 4)
            words.insert(rng.randint(0, 4), label)
            rows.append({"id": f"{split}{i}", "text_a": " ".join(words), "text_b": " ".join(rng.sample(WORDS, 3)),
                         "label": label})
        (root / "mnli" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def config(data_dir: Path, **task: Any) -> Any:
    values: dict[str, Any] = {"model": "m", "data_dir": str(data_dir), "eval_max_examples": 16, "seed": 3,
                              "tasks": [{"task": "mnli", "split": "dev", **task}]}
    return make_train_config(values)


def ids(examples) -> set[str]:
    return {str(ex.id) for ex in examples}


def test_same_seed_subsamples_of_one_split_overlap_which_is_why_a_holdout_is_needed() -> None:
    population = list(range(1000))
    small, large = set(subsample(population, 64, seed=0)), set(subsample(population, 400, seed=0))
    assert len(small & large) > 60  # independent draws would share about 26


def test_dev_examples_never_overlap_training_examples(data_dir: Path) -> None:
    for cap in (None, 30, 80):
        cfg = config(data_dir, max_examples=cap)
        td = load_task_data(cfg.tasks[0], cfg, 0)
        # 120 examples, the default holdout (500) capped at half the split
        assert len(td.heldout_ids) == 60 and len(td.train) == min(cap or 60, 60)
        assert not ids(td.train) & set(td.heldout_ids)
        assert ids(td.dev) <= set(td.heldout_ids) and len(td.dev) == 16
    # the held-out slice is drawn before the training subsample: the same for every max_examples
    held = [load_task_data(c.tasks[0], c, 0).heldout_ids for c in (config(data_dir, max_examples=10),
                                                                   config(data_dir, max_examples=50))]
    assert held[0] == held[1]
    # another seed, another slice; a smaller holdout asked for explicitly
    other = make_train_config({**config(data_dir).model_dump(), "seed": 4})
    assert load_task_data(other.tasks[0], other, 0).heldout_ids != held[0]
    small = config(data_dir, dev_holdout=10)
    assert len(load_task_data(small.tasks[0], small, 0).heldout_ids) == 10


def test_a_task_trained_on_its_train_split_reads_its_dev_split(data_dir: Path) -> None:
    cfg = make_train_config({"model": "m", "data_dir": str(data_dir), "eval_max_examples": 16,
                             "tasks": [{"task": "mnli"}]})
    td = load_task_data(cfg.tasks[0], cfg, 0)
    assert td.heldout_ids is None and len(td.train) == 40
    assert all(str(ex.id).startswith("dev") for ex in td.dev)
    assert not trains_on_dev_split(cfg.tasks[0])
    # German dev training data do not overlap the English dev evaluation
    assert not trains_on_dev_split(make_train_config({"model": "m", "tasks": [
        {"task": "xnli", "languages": ["de"], "split": "dev"}]}).tasks[0])


def test_hold_out_is_seeded_disjoint_and_keeps_order() -> None:
    examples = list(range(50))
    pool, held = hold_out_dev(examples, 10, seed=1, what="t/dev")
    assert len(held) == 10 and sorted(pool + held) == examples
    assert pool == sorted(pool) and held == sorted(held)
    assert hold_out_dev(examples, 10, seed=1, what="t/dev") == (pool, held)
    assert hold_out_dev(examples, 100, seed=1, what="t/dev")[1].__len__() == 25


def test_holding_out_is_part_of_the_stage_identity(data_dir: Path) -> None:
    on_dev = config(data_dir)
    assert on_dev.identity()["tasks"][0]["dev_holdout"] == DEFAULT_DEV_HOLDOUT
    assert config(data_dir, dev_holdout=10).hash() != on_dev.hash()
    on_train = make_train_config({"model": "m", "tasks": [{"task": "mnli"}]})
    assert "dev_holdout" not in on_train.identity()["tasks"][0]
    # a held-out size for a task that trains on another split changes nothing
    assert make_train_config({"model": "m", "tasks": [{"task": "mnli", "dev_holdout": 7}]}).hash() == on_train.hash()


def test_stage_records_the_held_out_examples(tiny_model_dir, data_dir: Path, tmp_path: Path) -> None:
    cfg = make_train_config({"model": str(tiny_model_dir), "data_dir": str(data_dir), "eval_max_examples": 16,
                             "tasks": [{"task": "mnli", "split": "dev", "max_examples": 24}], "max_steps": 2,
                             "batch_size": 8, "max_length": 32, "progress": False})
    out = tmp_path / "stage"
    result = train_stage(cfg, out)
    held = json.loads((out / HELDOUT_FILE).read_text())
    assert held["mnli"]["n"] == 60 and len(held["mnli"]["ids"]) == 60
    assert json.loads((out / "DONE").read_text())["dev_holdout"] == {"mnli": 60}
    assert set(result.dev_metrics["mnli"]) >= {"accuracy"}
    td = load_task_data(cfg.tasks[0], cfg, 0)
    assert held["mnli"]["ids"] == td.heldout_ids and not ids(td.train) & set(td.heldout_ids)


def test_a_spec_sets_the_holdout_of_a_task_trained_on_dev(tmp_path: Path) -> None:
    from xstilts.experiments import parse_spec, plan_stages

    spec = parse_spec({"models": ["e5-small"], "targets": [{"task": "panx", "languages": ["de"]}],
                       "intermediate": {"baseline": None, "cosmos": {"task": "cosmosqa", "split": "dev",
                                                                     "dev_holdout": 300}},
                       "output_dir": str(tmp_path / "o")}, tmp_path / "s.yaml")
    (stage,) = plan_stages(spec).of_kind("intermediate")
    assert stage.settings["tasks"][0]["dev_holdout"] == 300
