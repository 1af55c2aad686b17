"""The forgetting measure of sequential (chained) intermediate training.

A chain step scores the heads of the earlier steps' tasks (``carried_dev_tasks``) on the same
English dev examples their own stage evaluated on, when it ends; the planner fills them in for
every chain step after the first (not part of the stage id), and ``xstilts results
--intermediate-dev`` exports every setup's last intermediate stage's dev scores as rows.

Tiny random-weight model, tiny files in the catalog's own layouts in the test's tmp dir.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.test_train_support import stage_config
from xstilts.train.config import CarriedDevTask
from xstilts.train.engine import StageTrainer

from tests.test_dev_holdout import NLI, WORDS  # the same vocabulary and labels as the dev-holdout tests


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))


@pytest.fixture
def local_data(tmp_path) -> Path:
    """mnli/dev.jsonl (60 pairs; the label word is in the premise), panx/{train,dev}-en.tsv and a
    4-pair German Tatoeba (a target evaluated without target training: no target stages)."""
    rng = random.Random(0)
    root = tmp_path / "data"
    (root / "mnli").mkdir(parents=True)
    (root / "panx").mkdir()
    rows = []
    for i in range(60):
        label = rng.choice(NLI)
        words = rng.sample(WORDS, 4)
        words.insert(rng.randint(0, 4), label)
        rows.append({"id": f"m{i}", "text_a": " ".join(words), "text_b": " ".join(rng.sample(WORDS, 3)), "label": label})
    (root / "mnli" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split, n in (("train", 40), ("dev", 12)):
        blocks = []
        for _ in range(n):
            tokens = rng.sample(WORDS, 4) + ["Anna"]
            blocks.append("\n".join(f"{t}\t{'B-PER' if t == 'Anna' else 'O'}" for t in tokens))
        (root / "panx" / f"{split}-en.tsv").write_text("\n\n".join(blocks) + "\n")
    (root / "tatoeba").mkdir()
    (root / "tatoeba" / "tatoeba.deu-eng.deu").write_text("Das Haus ist rot.\nGuten Morgen!\nIch lese.\nDer Fluss.\n")
    (root / "tatoeba" / "tatoeba.deu-eng.eng").write_text("The house is red.\nGood morning!\nI read.\nThe river.\n")
    return root


def _first_stage(model_dir: Path, data: Path):
    """Stage 1 of a chain: mnli trained on its dev split (a held-out slice is its dev set)."""
    return stage_config(model_dir, tasks=[{"task": "mnli", "split": "dev", "dev_holdout": 20}], data_dir=str(data),
                        max_steps=1, eval_max_examples=12)


def _heads(model_dir: Path) -> list[str]:
    return [h["task"] for h in json.loads((model_dir / "xstilts_model.json").read_text())["heads"]]


def test_a_carried_head_that_is_not_there_fails_before_training(tiny_model_dir, tmp_path, local_data):
    from xstilts.errors import XStiltsError

    first_cfg = _first_stage(tiny_model_dir, local_data)
    carried = CarriedDevTask.from_stage(first_cfg, first_cfg.tasks[0], str(tiny_model_dir))  # no heads there
    cfg = stage_config(tiny_model_dir, tasks=[{"task": "panx_en"}], data_dir=str(local_data), max_steps=1,
                       carried_dev_tasks=[carried.model_dump()])
    with pytest.raises(XStiltsError, match="no head 'mnli'"):
        StageTrainer(cfg, tmp_path / "b").setup()
    assert not (tmp_path / "b" / "checkpoints").exists()


def _spec(tmp_path: Path, model_dir: Path, data: Path, intermediate: dict) -> dict:
    return {
        "models": [{"name": "tiny", "name_or_path": str(model_dir)}],
        "seeds": [0],
        "intermediate": intermediate,
        "targets": [{"task": "tatoeba", "languages": ["de"]}],
        "hyperparameters": {
            "intermediate": {"max_steps": 3, "batch_size": 8, "max_length": 48, "eval_max_examples": 12,
                             "progress": False}},
        "output_dir": str(tmp_path / "out"), "data_dir": str(data),
    }


A = {"task": "mnli", "split": "dev"}


def test_planner_carries_the_earlier_steps_heads(tiny_model_dir, tmp_path, local_data):
    from xstilts.experiments.plan import STAGE_REF, plan_stages, train_stage_id
    from xstilts.experiments.results import last_intermediate_stages
    from xstilts.experiments.validate import parse_spec
    from xstilts.train.config import TrainConfig

    spec = _spec(tmp_path, tiny_model_dir, local_data,
                 {"a": A, "a_b_c": {"chain": [A, "panx_en", "squad_v1"]}, "a_b": {"chain": [A, "panx_en"]}})
    plan = plan_stages(parse_spec(spec, tmp_path / "spec.yaml"))
    last = last_intermediate_stages(plan)
    first, second, third = (last[("tiny", s, 0)] for s in ("a", "a_b", "a_b_c"))
    assert "carried_dev_tasks" not in first.settings and second.depends_on == (first.id,)
    (entry,) = second.settings["carried_dev_tasks"]
    assert entry["task"] == "mnli" and entry["split"] == "dev" and entry["head_from"] == f"{STAGE_REF}{first.id}"
    assert entry["eval_max_examples"] == 12 and entry["max_length"] == 48 and entry["seed"] == 0
    # not part of the id: the stage without the entry has the same one
    plain = TrainConfig.model_validate({k: v for k, v in second.settings.items() if k != "carried_dev_tasks"})
    assert second.id == train_stage_id("intermediate", plain, second.depends_on)
    # step 3 carries both earlier heads, each from the stage that trained it
    assert [(c["task"], c["head_from"]) for c in third.settings["carried_dev_tasks"]] == [
        ("mnli", f"{STAGE_REF}{first.id}"), ("panx_en", f"{STAGE_REF}{second.id}")]
    assert third.depends_on == (second.id,)


def test_export_reads_done_when_the_stored_result_predates_carried_scores(tiny_model_dir, tmp_path, local_data):
    """A stage result stored without ``carried_dev_metrics`` (an older store, or one rebuilt from
    ``DONE`` before it kept them): the rows come from the stage's ``DONE``; unfinished setups: none."""
    from xstilts.experiments import open_store
    from xstilts.experiments.plan import plan_stages
    from xstilts.experiments.results import intermediate_dev_frame, last_intermediate_stages
    from xstilts.experiments.validate import parse_spec
    from xstilts.train.records import DoneRecord, write_done

    spec = _spec(tmp_path, tiny_model_dir, local_data, {"a": A, "a_then_b": {"chain": [A, "panx_en"]}})
    plan = plan_stages(parse_spec(spec, tmp_path / "spec.yaml"))
    second = last_intermediate_stages(plan)[("tiny", "a_then_b", 0)]
    store = open_store(plan.output_dir)
    store.register_plan(plan)
    store.record_done(second.id, result={"dev_metrics": {"panx_en": {"f1": 50.0}}})
    plan.stage_dir(second.id).mkdir(parents=True)
    write_done(plan.stage_dir(second.id), DoneRecord(steps=3, config_hash="x", dev_metrics={"panx_en": {"f1": 50.0}},
                                                     carried_dev_metrics={"mnli": {"accuracy": 40.0}}))
    frame = intermediate_dev_frame(store, plan)
    assert sorted(zip(frame["setup"], frame["target"], frame["metric"], frame["value"])) == [
        ("a_then_b", "mnli", "accuracy", 40.0), ("a_then_b", "panx_en", "f1", 50.0)]


def _resolved_config(plan, stage):
    from xstilts.experiments.executor import StageTask, build_train_config

    return build_train_config(StageTask(stage.id, stage.kind, stage.settings, plan.stage_dir(stage.id),
                                        plan.output_dir, plan.data_dir))


def _same_dev_examples(plan, first, second) -> list[str]:
    """The ids of stage 1's mnli dev examples, checked to be those stage 2 scores its carried head on
    (featurised with stage 1's max_length, not stage 2's 12)."""
    from xstilts.models import load_encoder
    from xstilts.train.carried import carried_dev_data
    from xstilts.train.data import load_task_data

    cfg1, cfg2 = _resolved_config(plan, first), _resolved_config(plan, second)
    assert cfg2.eval_max_examples == 5 and cfg2.max_length == 12  # stage 2's own, unlike stage 1's
    own = [ex.id for ex in load_task_data(cfg1.tasks[0], cfg1, 0).dev]
    carried = carried_dev_data(cfg2, load_encoder(str(plan.stage_dir(first.id) / "model"))[1])
    assert [ex.id for ex in carried.by_name["mnli"].dev] == own and len(own) == 12
    assert max(len(f["input_ids"]) for f in carried.dev["mnli"]) > 12
    return own


def test_chain_records_the_first_head_and_results_export_it(tiny_model_dir, tmp_path, local_data):
    """A planned 2-step chain run by the real executor: its second stage scores the first task's
    head on the first stage's dev examples (a learning rate of ~0 in step 2 leaves the encoder as
    step 1 left it, so it scores exactly as it did); ``--intermediate-dev`` exports the rows."""
    from xstilts.experiments import open_store, run_local
    from xstilts.experiments.plan import plan_stages
    from xstilts.experiments.results import INTERMEDIATE_DEV_SPLIT, export_results, last_intermediate_stages
    from xstilts.experiments.store import METRIC_COLUMNS
    from xstilts.experiments.validate import parse_spec

    spec = _spec(tmp_path, tiny_model_dir, local_data, {"a": {**A, "dev_holdout": 20},
                                                        "a_then_b": {"chain": [{**A, "dev_holdout": 20}, "panx_en"]}})
    spec["hyperparameters"]["tasks"] = {"panx_en": {"intermediate": {
        "learning_rate": 1e-12, "weight_decay": 0.0, "eval_max_examples": 5, "max_length": 12}}}
    plan = plan_stages(parse_spec(spec, tmp_path / "spec.yaml"))
    last = last_intermediate_stages(plan)
    first, second = last[("tiny", "a", 0)], last[("tiny", "a_then_b", 0)]
    assert set(run_local(plan).values()) == {"done"}
    _same_dev_examples(plan, first, second)

    done_a = json.loads((plan.stage_dir(first.id) / "DONE").read_text())
    done_b = json.loads((plan.stage_dir(second.id) / "DONE").read_text())
    assert set(done_b["dev_metrics"]) == {"panx_en"} and set(done_b["carried_dev_metrics"]) == {"mnli"}
    assert done_b["carried_dev_metrics"]["mnli"] == pytest.approx(done_a["dev_metrics"]["mnli"])
    assert _heads(plan.stage_dir(second.id) / "model") == ["panx_en"]  # attached for its evaluation only
    store = open_store(plan.output_dir)
    stored = json.loads(store.stage_rows([second.id])[0]["result"])
    assert stored["carried_dev_metrics"] == done_b["carried_dev_metrics"]

    default = export_results(store, plan, "csv", tmp_path / "default.csv")
    assert default.equals(store.metrics_frame([s.id for s in plan.of_kind("eval")]))  # unchanged without the option
    assert INTERMEDIATE_DEV_SPLIT not in set(default["split"])
    full = export_results(store, plan, "csv", tmp_path / "full.csv", intermediate_dev=True)
    assert list(full.columns) == METRIC_COLUMNS and full.iloc[: len(default)].equals(default)
    rows = full[full["split"] == INTERMEDIATE_DEV_SPLIT]
    assert len(rows) == len(full) - len(default) == 5
    cells = {(r.setup, r.target, r.metric): (r.value, r.stage_id) for r in rows.itertuples()}
    assert set(cells) == {("a", "mnli", "accuracy"), ("a_then_b", "mnli", "accuracy"),
                          ("a_then_b", "panx_en", "f1"), ("a_then_b", "panx_en", "precision"),
                          ("a_then_b", "panx_en", "recall")}
    assert set(rows["language"]) == {"en"} and set(rows["seed"]) == {0} and set(rows["model"]) == {"tiny"}
    assert cells[("a", "mnli", "accuracy")] == (done_a["dev_metrics"]["mnli"]["accuracy"], first.id)
    assert cells[("a_then_b", "mnli", "accuracy")] == (done_b["carried_dev_metrics"]["mnli"]["accuracy"], second.id)
    assert cells[("a_then_b", "panx_en", "f1")] == (done_b["dev_metrics"]["panx_en"]["f1"], second.id)

    # the CLI: `xstilts results SPEC --intermediate-dev` writes the same rows
    import yaml
    from typer.testing import CliRunner

    from xstilts.cli import app

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    for flag, n in ((["--intermediate-dev"], len(full)), ([], len(default))):
        out = CliRunner().invoke(app, ["results", str(spec_file), "--format", "csv", "--out", str(tmp_path / "c.csv"),
                                       *flag])
        assert out.exit_code == 0, out.output
        assert len(pd_read(tmp_path / "c.csv")) == n


def pd_read(path: Path):
    import pandas as pd

    return pd.read_csv(path)
