"""Heads store their label names; evaluation maps predictions by name (issue 14, item 1).

The same trained classifier gives the same accuracy whatever the order of the task's
label_list; a head with other labels, or the head of another task, is refused with an error
naming the head, both label sets and how to choose one; a label-count mismatch fails early
naming the head and the task. Model directories saved before heads stored their labels
still load and take the label list of the head's task from the catalog.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import pytest

from xstilts.errors import ConfigError, XStiltsError
from xstilts.evaluate import zero_shot_eval
from xstilts.models import HeadSpec, MultiTaskModel, load_encoder
from xstilts.tasks.catalog import register_task, unregister_task
from xstilts.train import make_train_config, train_stage

LABELS = ["yes", "no", "maybe"]
FILLER = "house river green table window music paper stone cloud bread garden light".split()


def _write(path: Path, n: int, seed: int) -> None:
    """Three classes; the label word appears in text_a (learnable by a tiny model)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = rng.choice(LABELS)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        words.insert(rng.randint(0, len(words)), label)
        rows.append({"id": f"{seed}-{i}", "text_a": " ".join(words), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _entry(name: str, labels: list[str]) -> dict:
    return {"name": name, "format": "classification", "role": "both", "languages": ["en", "de"],
            "splits": ["train", "dev"], "eval_split": "dev", "metric": "accuracy", "primary_metric": "accuracy",
            "label_list": labels,
            "local": {"reader": "jsonl_classification",
                      "paths": {"train": "lbl/train.{lang}.jsonl", "dev": "lbl/dev.{lang}.jsonl"}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A tiny classifier trained on task 'lbl_nli' (labels yes/no/maybe), and its data dir."""
    root = tmp_path_factory.mktemp("labels")
    mp = pytest.MonkeyPatch()
    mp.setenv("XSTILTS_HOME", str(root / "home"))
    data = root / "data"
    _write(data / "lbl" / "train.en.jsonl", 240, 0)
    _write(data / "lbl" / "dev.en.jsonl", 60, 1)
    _write(data / "lbl" / "dev.de.jsonl", 60, 2)
    register_task(_entry("lbl_nli", LABELS))
    cfg = make_train_config({"model": str(tiny_model_dir), "tasks": [{"task": "lbl_nli"}], "data_dir": str(data),
                             "learning_rate": 2e-3, "batch_size": 16, "num_epochs": 2, "max_length": 32,
                             "warmup_ratio": 0.1, "progress": False, "seed": 0, "log_every": 1})
    result = train_stage(cfg, root / "stage")
    yield result.model_dir, data
    for name in ("lbl_nli", "lbl_other", "lbl_wrong"):
        try:
            unregister_task(name)
        except XStiltsError:
            pass
    mp.undo()


def _eval(model_dir: Path, data: Path, task: str = "lbl_nli", **kw):
    return zero_shot_eval(model_dir, task, data_dir=data, batch_size=16, **kw)


@pytest.fixture(scope="module")
def reference(trained):
    """Per-language scores of the trained model on its own task, label list in training order."""
    return _eval(*trained).per_language


def test_the_head_stores_its_label_names(trained):
    model_dir, _ = trained
    meta = json.loads((model_dir / "xstilts_model.json").read_text())
    assert meta["heads"][0]["task"] == "lbl_nli" and meta["heads"][0]["labels"] == LABELS
    model, _ = MultiTaskModel.load(model_dir)
    assert model.head_specs["lbl_nli"].labels == LABELS


def test_accuracy_does_not_depend_on_the_order_of_the_label_list(trained, reference):
    model_dir, data = trained
    assert reference["en"]["accuracy"] > 34.0  # learnt something: chance is 33 %
    try:
        for order in (LABELS[::-1], LABELS[1:] + LABELS[:1]):  # a swap of the ends and a rotation
            register_task(_entry("lbl_nli", list(order)), replace=True)
            assert _eval(model_dir, data).per_language == reference, order
    finally:
        register_task(_entry("lbl_nli", LABELS), replace=True)


def test_a_head_with_other_labels_is_refused(trained):
    model_dir, data = trained
    register_task(_entry("lbl_wrong", ["yes", "no", "unsure"]))
    with pytest.raises(XStiltsError) as err:
        _eval(model_dir, data, "lbl_wrong", head="lbl_nli")
    msg = str(err.value)
    assert "'lbl_nli'" in msg and str(LABELS) in msg and "['yes', 'no', 'unsure']" in msg and "head=" in msg


def test_the_head_of_another_task_is_refused_unless_chosen(trained, reference):
    model_dir, data = trained
    register_task(_entry("lbl_other", LABELS))
    with pytest.raises(XStiltsError, match=r"no classification head for task 'lbl_other'.*lbl_nli \(classification.*head=NAME"):
        _eval(model_dir, data, "lbl_other")
    chosen = _eval(model_dir, data, "lbl_other", head="lbl_nli")
    assert chosen.settings["head"] == "lbl_nli"
    assert chosen.per_language == reference


def test_an_old_model_dir_without_label_names_takes_its_tasks_labels(trained, reference, tmp_path):
    model_dir, data = trained
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    meta = json.loads((old / "xstilts_model.json").read_text())
    for head in meta["heads"]:
        del head["labels"]
    (old / "xstilts_model.json").write_text(json.dumps(meta))
    model, _ = MultiTaskModel.load(old)
    assert model.head_specs["lbl_nli"].labels is None
    assert _eval(old, data).per_language == reference


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return load_encoder(str(tiny_model_dir))[0]


def test_head_for_maps_by_name_and_fails_early_on_a_count_mismatch(encoder):
    model = MultiTaskModel(copy.deepcopy(encoder), [HeadSpec.for_labels("nli", "classification", LABELS),
                                                    HeadSpec("legacy", "classification", num_labels=3)])
    choice = model.head_for("nli", "classification", ["maybe", "yes", "no"])
    assert choice.name == "nli" and choice.labels == LABELS  # decode with the head's own order
    assert model.head_for("xnli", "classification", LABELS, also=["nli"]).name == "nli"  # the training task
    with pytest.raises(XStiltsError, match=r"head 'legacy' has 3 labels but task 'two' has 2"):
        model.head_for("two", "classification", ["a", "b"], head="legacy")
    assert model.head_for("legacy", "classification", ["a", "b", "c"]).labels == ["a", "b", "c"]  # by position
    assert model.head_for("legacy", "classification", ["c", "b", "a"],
                          known_labels=lambda name: ["a", "b", "c"]).labels == ["a", "b", "c"]
    with pytest.raises(XStiltsError, match=r"'nli' is a classification head, but task 'nli' needs a tagging head"):
        model.head_for("nli", "tagging", LABELS)


def test_training_refuses_a_carried_over_head_with_other_labels(encoder):
    model = MultiTaskModel(copy.deepcopy(encoder), [HeadSpec.for_labels("nli", "classification", LABELS)])
    with pytest.raises(ConfigError, match=r"head 'nli' is a classification head with 3 labels; task 'nli' needs .* 2"):
        model.ensure_head(HeadSpec.for_labels("nli", "classification", ["yes", "no"]))
    with pytest.raises(ConfigError, match=r"trained with labels \['yes', 'no', 'maybe'\]"):
        model.ensure_head(HeadSpec.for_labels("nli", "classification", ["no", "yes", "maybe"]))
    assert model.ensure_head(HeadSpec.for_labels("nli", "classification", LABELS)).labels == LABELS
    legacy = MultiTaskModel(copy.deepcopy(encoder), [HeadSpec("old", "classification", num_labels=3)])
    assert legacy.ensure_head(HeadSpec.for_labels("old", "classification", LABELS)).labels == LABELS
    with pytest.raises(ConfigError, match="must be 2 distinct names"):
        HeadSpec("x", "classification", labels=["a", "a"])


def test_a_target_trained_on_another_task_names_its_head_in_the_eval_stage(tmp_path):
    """The planner tells evaluation which head to take when a target trains on a task that is
    neither the target nor its catalog train_task; otherwise the stage settings (and ids) are
    as before, and the head is found by name."""
    from xstilts.experiments import parse_spec, plan_stages

    spec = {"models": ["e5-small"], "intermediate": {"baseline": None}, "seeds": [0],
            "targets": [{"task": "xnli", "languages": ["de"], "train": {"task": "anli", "split": "dev"}},
                        {"task": "xquad", "languages": ["de"]}],
            "output_dir": str(tmp_path), "data_dir": str(tmp_path)}
    plan = plan_stages(parse_spec(spec, tmp_path / "s.yaml"))
    evals = {s.settings["task"]: s.settings for s in plan.of_kind("eval")}
    assert "head" not in evals["xquad"]  # trained on squad_v1, its train_task: found by name
    assert evals["xnli"]["head"] == "anli"  # same labels as xnli, so evaluation accepts it
