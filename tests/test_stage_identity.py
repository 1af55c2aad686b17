"""One definition of a stage's identity: training stage ids come from TrainConfig.hash(), eval
stages inherit (and hash) the featurisation of the target they evaluate, and the plan records
what each stage trains as typed fields."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from xstilts.experiments import parse_spec, plan_stages, stage_id
from xstilts.experiments.plan import StageRecord
from xstilts.train.config import OPERATIONAL_KEYS, SELECTION_KEYS, TrainConfig

GRID: dict[str, Any] = {
    "models": ["e5-small"],
    "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"}},
    "targets": [{"task": "panx", "languages": ["en", "de"]}, {"task": "tydiqa", "languages": ["en", "ar"]},
                {"task": "tatoeba", "languages": ["de"]}],
    "max_examples": {"intermediate": 50, "target": 40, "eval": 10},
}


def plan_of(data: dict[str, Any], tmp_path: Path, **hyper: Any):
    data = copy.deepcopy(data)
    if hyper:
        data["hyperparameters"] = hyper
    return plan_stages(parse_spec({**data, "output_dir": str(tmp_path / "out"), "data_dir": str(tmp_path)},
                                  tmp_path / "s.yaml"))


def ids(plan, kind: str | None = None) -> set[str]:
    return {s.id for s in plan if kind is None or s.kind == kind}


def test_a_key_that_changes_weights_gives_new_stage_ids(tmp_path: Path) -> None:
    base = plan_of(GRID, tmp_path)
    changed = plan_of(GRID, tmp_path, target={"group_by_length": False})
    assert ids(changed, "intermediate") == ids(base, "intermediate")
    assert not ids(changed, "target") & ids(base, "target")  # every target stage re-trains
    # ... and so are their evals; the retrieval evals (no target training) are kept
    kept_evals = ids(changed, "eval") & ids(base, "eval")
    assert kept_evals == {s.id for s in base.of_kind("eval") if s.settings["task"] == "tatoeba"}
    inter = plan_of(GRID, tmp_path, intermediate={"group_by_length": False})
    assert not ids(inter, "intermediate") & ids(base, "intermediate")


@pytest.mark.parametrize("change", [{"log_every": 3}, {"save_every": 7, "keep_last": 5}, {"progress": False},
                                    {"trackers": ["tensorboard"]}, {"eval_batch_size": 8},
                                    {"eval_every": 5, "eval_max_examples": 20}])
def test_operational_keys_keep_stage_ids(tmp_path: Path, change: dict[str, Any]) -> None:
    base = plan_of(GRID, tmp_path)
    assert ids(plan_of(GRID, tmp_path, target=change, intermediate=change)) == ids(base)


def test_dev_eval_settings_count_when_the_best_checkpoint_is_kept(tmp_path: Path) -> None:
    best = plan_of(GRID, tmp_path, target={"final_model": "best", "eval_every": 10})
    more_often = plan_of(GRID, tmp_path, target={"final_model": "best", "eval_every": 5})
    assert not ids(best, "target") & ids(more_often, "target")
    fewer = plan_of(GRID, tmp_path, target={"final_model": "best", "eval_every": 10, "eval_max_examples": 5})
    assert not ids(best, "target") & ids(fewer, "target")


def test_the_plan_and_train_config_share_one_definition() -> None:
    config = TrainConfig(model="m", tasks=[{"task": "panx"}])
    for key in OPERATIONAL_KEYS:
        value = {"save_every": 3, "keep_last": 9, "trackers": ["x"], "log_every": 2, "progress": False,
                 "eval_batch_size": 3, "data_dir": "/elsewhere", "keep_checkpoints": True,
                 "attn_implementation": "eager", "gradient_checkpointing": True, "tf32": False}[key]
        assert config.model_copy(update={key: value}).hash() == config.hash(), key
    for key, value in (("group_by_length", False), ("learning_rate", 1e-3), ("compact_vocab", False)):
        assert config.model_copy(update={key: value}).hash() != config.hash(), key
    best = config.model_copy(update={"final_model": "best"})
    for key in SELECTION_KEYS:
        assert config.model_copy(update={key: 4}).hash() == config.hash(), key
        assert best.model_copy(update={key: 4}).hash() != best.hash(), key
    # stage_id of a training stage is derived from its settings' TrainConfig
    settings = config.model_dump(mode="json")
    assert stage_id("target", settings, ["u"]) == stage_id("target", {**settings, "log_every": 99}, ["u"])
    assert stage_id("target", settings, ["u"]) != stage_id("target", {**settings, "group_by_length": False}, ["u"])


def test_plan_ids_match_stage_id(tmp_path: Path) -> None:
    plan = plan_of(GRID, tmp_path)
    for stage in plan:
        assert stage_id(stage.kind, stage.settings, stage.depends_on) == stage.id


def test_qa_target_is_evaluated_at_its_training_length(tmp_path: Path) -> None:
    hyper = {"tasks": {"tydiqa": {"target": {"max_length": 192, "doc_stride": 96}}}}
    plan = plan_of(GRID, tmp_path, **hyper)
    target = next(s for s in plan.of_kind("target") if s.target == "tydiqa")
    evals = [s for s in plan.of_kind("eval") if s.target == "tydiqa"]
    assert target.settings["max_length"] == 192 and evals
    for ev in evals:
        assert (ev.settings["max_length"], ev.settings["doc_stride"]) == (192, 96)
        assert ev.settings["max_query_length"] == target.settings["max_query_length"]
    # panx keeps the stage-kind default it was trained with
    assert all(s.settings["max_length"] == 128 for s in plan.of_kind("eval") if s.target == "panx")
    # retrieval evals get no featurisation from a training they do not have
    assert all("max_length" not in s.settings for s in plan.of_kind("eval") if s.target == "tatoeba")

    # a per-target override changes only that target's eval stages (not its training)
    data = copy.deepcopy(GRID)
    data["targets"][1] = {"task": "tydiqa", "languages": ["en", "ar"], "eval": {"max_length": 256}}
    over = plan_of(data, tmp_path, **hyper)
    assert ids(over, "target") == ids(plan, "target")
    over_evals = [s for s in over.of_kind("eval") if s.target == "tydiqa"]
    assert all(s.settings["max_length"] == 256 and s.settings["doc_stride"] == 96 for s in over_evals)
    assert not {s.id for s in over_evals} & {s.id for s in evals}
    assert {s.id for s in over.of_kind("eval") if s.target != "tydiqa"} == \
        {s.id for s in plan.of_kind("eval") if s.target != "tydiqa"}


def test_eval_options_per_task_and_batch_size_is_operational(tmp_path: Path) -> None:
    base = plan_of(GRID, tmp_path)
    per_task = plan_of(GRID, tmp_path, tasks={"tydiqa": {"eval": {"doc_stride": 64, "batch_size": 8}}})
    ty = [s for s in per_task.of_kind("eval") if s.target == "tydiqa"]
    assert all(s.settings["doc_stride"] == 64 and s.settings["batch_size"] == 8 for s in ty)
    assert ids(per_task, "target") == ids(base, "target")
    batch_only = plan_of(GRID, tmp_path, eval={"batch_size": 4})
    assert ids(batch_only) == ids(base)


def test_stage_records_say_what_a_stage_trains(tmp_path: Path) -> None:
    data = copy.deepcopy(GRID)
    data["intermediate"]["mixed"] = {"task": "panx_en", "languages": ["en"], "mlm": {"files": ["wiki.txt"]}}
    plan = plan_of(data, tmp_path)
    anli = next(s for s in plan.of_kind("intermediate") if s.setup == "anli")
    assert anli.record == StageRecord(tasks=("anli",), splits=("dev",), languages=("en",), mlm=False,
                                      input_model="e5-small", model_dir=f"stages/{anli.id}/model")
    mixed = next(s for s in plan.of_kind("intermediate") if s.setup == "mixed")
    assert mixed.record.mlm and mixed.record.tasks == ("panx_en",)
    target = next(s for s in plan.of_kind("target") if s.setup == "anli" and s.target == "tydiqa")
    assert target.record.input_model == f"stages/{anli.id}/model" and target.record.splits == ("train",)
    ev = next(s for s in plan.of_kind("eval") if s.depends_on == (target.id,))
    assert ev.record.tasks == ("tydiqa",) and ev.record.languages == ("en", "ar") and ev.record.model_dir is None
    assert ev.record.input_model == target.record.model_dir
    assert ev.to_json()["record"]["languages"] == ["en", "ar"]
    # the same record from what the store holds (kind + settings JSON)
    assert StageRecord.from_settings(ev.id, ev.kind, ev.settings) == ev.record
