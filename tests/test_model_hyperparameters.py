"""Per-model hyperparameters (``models[i].hyperparameters.{intermediate,target}``): validated
where they are written, applied on top of the spec's hyperparameters (spec-wide < per-task <
per-model), and reaching only that model's stage ids. Plans only: nothing is trained."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from xstilts.errors import ConfigError
from xstilts.experiments import parse_spec, plan_stages
from xstilts.experiments.plan import Plan

TINY = {"name": "tiny", "name_or_path": "e5-small"}


def _spec(**model_hp: Any) -> dict[str, Any]:
    """Two models (``base`` plain, ``m5`` with ``model_hp``), the baseline and ANLI, PAN-X-de."""
    m5: dict[str, Any] = {"name": "m5", "name_or_path": "google/mt5-small"}
    if model_hp:
        m5["hyperparameters"] = model_hp
    return {
        "models": [{"name": "base", "name_or_path": "e5-small"}, m5],
        "intermediate": {"baseline": None, "anli": "anli"},
        "targets": [{"task": "panx", "languages": ["de"]}],
        "seeds": [0],
        "hyperparameters": {
            "intermediate": {"learning_rate": 1e-5, "num_epochs": 3, "warmup_ratio": 0.2},
            "target": {"learning_rate": 1e-5, "num_epochs": 2},
            "tasks": {"anli": {"intermediate": {"learning_rate": 2e-5, "num_epochs": 2}},
                      "panx": {"target": {"learning_rate": 3e-5, "max_length": 96}}},
        },
    }


def _plan(data: dict[str, Any]) -> Plan:
    return plan_stages(parse_spec(copy.deepcopy(data), "spec.yaml"))


def _train_settings(plan: Plan, model: str, kind: str) -> dict[str, Any]:
    (stage,) = [s for s in plan.stages.values() if s.kind == kind and s.model == model]
    return stage.settings


def _ids(plan: Plan, model: str) -> dict[tuple[str, str, str | None], str]:
    """Stage ids of ``model`` by (kind, setup, target)."""
    return {(s.kind, s.setup, s.target): s.id for s in plan.stages.values() if s.model == model}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("hp", "key", "message"), [
    ({"target": {"learnin_rate": 1e-4}}, "models[1].hyperparameters.target.learnin_rate",
     "Did you mean 'learning_rate'"),
    ({"eval": {"batch_size": 8}}, "models[1].hyperparameters.eval", "allowed keys here: intermediate, target"),
    ({"intermediate": {"seed": 3}}, "models[1].hyperparameters.intermediate", "'seed' is set by the plan"),
    ({"target": {"pooling": "max"}}, "models[1].hyperparameters.target.pooling", "'cls' or 'mean'"),
    ({"target": {"learning_rate": -1.0}}, "models[1].hyperparameters.target.learning_rate", "greater than 0"),
])
def test_bad_model_hyperparameters_are_refused_naming_the_key(hp: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(_spec(**hp), "spec.yaml")
    text = str(info.value)
    assert f"'{key}'" in text and message in text and "spec.yaml" in text


def test_a_model_without_hyperparameters_has_none_and_a_string_model_still_loads() -> None:
    spec = parse_spec({**_spec(), "models": ["e5-small", TINY]}, "spec.yaml")
    for model in spec.models:
        assert model.hyperparameters.intermediate.overrides() == {}
        assert model.hyperparameters.target.overrides() == {}
    assert spec.models[0].name == spec.models[0].name_or_path == "e5-small"


# --------------------------------------------------------------------------- precedence


def test_model_settings_beat_the_spec_and_its_task_settings_and_fill_in_the_rest() -> None:
    plan = _plan(_spec(intermediate={"learning_rate": 1e-4, "pooling": "mean"},
                       target={"learning_rate": 3e-4, "pooling": "mean"}))
    # the model's learning rate wins over the spec-wide and the per-task one; the task's epochs
    # and max length, which the model does not set, still apply; the spec's warm-up too
    inter = _train_settings(plan, "m5", "intermediate")
    assert [inter[k] for k in ("learning_rate", "num_epochs", "warmup_ratio", "pooling")] == [1e-4, 2, 0.2, "mean"]
    for target in [s.settings for s in plan.stages.values() if s.kind == "target" and s.model == "m5"]:
        assert [target[k] for k in ("learning_rate", "max_length", "num_epochs", "pooling")] == [3e-4, 96, 2, "mean"]
    # the other model keeps spec < task
    base = _train_settings(plan, "base", "intermediate")
    assert (base["learning_rate"], base["num_epochs"], base["pooling"]) == (2e-5, 2, "cls")
    for target in [s.settings for s in plan.stages.values() if s.kind == "target" and s.model == "base"]:
        assert (target["learning_rate"], target["max_length"], target["pooling"]) == (3e-5, 96, "cls")


def test_a_model_setting_reaches_only_its_stage_kind() -> None:
    plan = _plan(_spec(intermediate={"learning_rate": 1e-4}))
    assert _train_settings(plan, "m5", "intermediate")["learning_rate"] == 1e-4
    targets = [s.settings for s in plan.stages.values() if s.kind == "target" and s.model == "m5"]
    assert len(targets) == 2 and all(t["learning_rate"] == 3e-5 for t in targets)  # the task's, as for base


def test_train_overrides_without_a_model_are_the_spec_and_task_settings() -> None:
    spec = parse_spec(_spec(intermediate={"learning_rate": 1e-4}), "spec.yaml")
    expected = {"learning_rate": 2e-5, "num_epochs": 2, "warmup_ratio": 0.2}
    assert spec.train_overrides("intermediate", ["anli"]) == expected
    assert spec.train_overrides("intermediate", ["anli"], spec.models[1])["learning_rate"] == 1e-4
    assert spec.train_overrides("intermediate", ["anli"], spec.models[0])["learning_rate"] == 2e-5


# --------------------------------------------------------------------------- stage ids


def test_a_model_override_changes_only_that_models_stage_ids() -> None:
    before = _plan(_spec())
    after = _plan(_spec(intermediate={"learning_rate": 1e-4}))
    assert _ids(after, "base") == _ids(before, "base")
    old, new = _ids(before, "m5"), _ids(after, "m5")
    assert old.keys() == new.keys()
    changed = {key for key in old if old[key] != new[key]}
    # the intermediate stage and everything downstream of it; the baseline's stages stay
    assert changed == {key for key in old if key[1] == "anli"}
    assert all(old[key] == new[key] for key in old if key[1] == "baseline")


def test_a_model_override_changes_every_stage_of_its_kind_and_downstream() -> None:
    before, after = _plan(_spec()), _plan(_spec(target={"pooling": "mean"}))
    assert _ids(after, "base") == _ids(before, "base")
    old, new = _ids(before, "m5"), _ids(after, "m5")
    assert {key for key in old if old[key] != new[key]} == {key for key in old if key[0] in ("target", "eval")}


def test_a_model_override_equal_to_the_resolved_value_keeps_the_ids() -> None:
    before = _plan(_spec())
    same = _plan(_spec(intermediate={"learning_rate": 2e-5}, target={"pooling": "cls"}))
    empty = _plan(_spec(intermediate={}, target={}))
    assert _ids(same, "m5") == _ids(before, "m5") == _ids(empty, "m5")
