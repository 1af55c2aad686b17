"""Plan expansion: stage counts, sharing, content-hash stability and locality of changes."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

from xstilts.experiments import parse_spec, plan_stages

GRID = {
    "models": ["e5-small"],
    "intermediate": {
        "baseline": None,
        "anli": {"task": "anli", "split": "dev"},
        "cosmos": {"task": "cosmosqa", "split": "dev"},
        "anli_cosmos": {"chain": ["anli", "cosmos"]},  # sequential: shares anli's stage
    },
    "targets": [{"task": "panx", "languages": ["en", "de", "fr"]},
                {"task": "xquad", "languages": ["en", "de"]},
                {"task": "tatoeba", "languages": ["de", "fr"]}],
    "seeds": [0, 1],
    "max_examples": {"intermediate": 50, "target": 40, "eval": 10},
}


def plan_of(data: dict, tmp_path: Path):
    return plan_stages(parse_spec({**data, "output_dir": str(tmp_path), "data_dir": str(tmp_path)}, tmp_path / "s.yaml"))


def test_grid_counts_and_sharing(tmp_path: Path) -> None:
    plan = plan_of(GRID, tmp_path)
    kinds = Counter(s.kind for s in plan)
    # 3 intermediate stages per seed: anli, cosmosqa, anli→cosmosqa (its first step IS anli's stage)
    assert kinds["intermediate"] == 3 * 2
    # panx and xquad need target training: 4 setups (incl. baseline) × 2 targets × 2 seeds
    assert kinds["target"] == 4 * 2 * 2
    # evals: panx/xquad one per target stage (16); tatoeba on the 3 intermediate models × 2 seeds
    # plus ONE baseline eval on the base model shared by both seeds
    assert kinds["eval"] == 16 + 6 + 1
    for seed in (0, 1):
        inter = [s for s in plan.of_kind("intermediate") if s.seed == seed]
        anli = next(s for s in inter if s.settings["tasks"][0]["task"] == "anli")
        chained = next(s for s in inter if s.depends_on)
        assert chained.depends_on == (anli.id,)
        assert chained.settings["model"] == f"stage:{anli.id}"
        assert set(anli.setups()) == {"anli", "anli_cosmos"}
        # every target stage of setup anli depends on that one intermediate stage
        assert all(t.depends_on == (anli.id,) for t in plan.of_kind("target") if t.setup == "anli" and t.seed == seed)
    base_tatoeba = [s for s in plan.of_kind("eval") if s.settings["task"] == "tatoeba" and not s.depends_on]
    assert len(base_tatoeba) == 1 and {lab.seed for lab in base_tatoeba[0].labels} == {0, 1}
    assert base_tatoeba[0].settings["model"] == "e5-small"
    # retrieval evals of trained setups run on the intermediate model directly
    for s in plan.of_kind("eval"):
        if s.settings["task"] == "tatoeba" and s.depends_on:
            assert plan.stages[s.depends_on[0]].kind == "intermediate"
    # xquad fine-tunes on squad_v1 (its train_task); panx on its own English train split
    xq = next(s for s in plan.of_kind("target") if s.target == "xquad")
    assert xq.settings["tasks"][0]["task"] == "squad_v1" and xq.settings["tasks"][0]["max_examples"] == 40
    # dependency order: every stage after its upstream
    pos = {sid: i for i, sid in enumerate(plan.stages)}
    assert all(pos[d] < pos[s.id] for s in plan for d in s.depends_on)


def test_ids_are_stable_and_changes_are_local(tmp_path: Path) -> None:
    a = plan_of(GRID, tmp_path)
    b = plan_of(copy.deepcopy(GRID), tmp_path)
    assert list(a.stages) == list(b.stages)
    assert all(len(sid) == 16 and int(sid, 16) >= 0 for sid in a.stages)

    changed = copy.deepcopy(GRID)
    changed["hyperparameters"] = {"tasks": {"panx": {"target": {"learning_rate": 3e-5}}}}
    c = plan_of(changed, tmp_path)
    new = set(c.stages) - set(a.stages)
    reached = {s.id for s in a if s.target == "panx" and s.kind in ("target", "eval")}
    assert len(new) == len(reached) == 16  # 8 panx target stages + their 8 evals
    assert {c.stages[s].target for s in new} == {"panx"}
    assert set(a.stages) - reached <= set(c.stages)  # everything else is the same stage

    # an operational setting (checkpoint frequency, eval batch size) changes no id
    ops = copy.deepcopy(GRID)
    ops["hyperparameters"] = {"target": {"save_every": 50}, "eval": {"batch_size": 8}}
    assert list(plan_of(ops, tmp_path).stages) == list(a.stages)

    # a new seed adds stages and keeps the old ones (and the shared baseline retrieval eval)
    more = copy.deepcopy(GRID)
    more["seeds"] = [0, 1, 2]
    d = plan_of(more, tmp_path)
    assert set(a.stages) <= set(d.stages)


def test_intermediate_hyperparameter_reaches_only_its_setups(tmp_path: Path) -> None:
    a = plan_of(GRID, tmp_path)
    changed = copy.deepcopy(GRID)
    changed["hyperparameters"] = {"tasks": {"cosmosqa": {"intermediate": {"num_epochs": 2}}}}
    c = plan_of(changed, tmp_path)
    gone = set(a.stages) - set(c.stages)
    assert {s for st in gone for s in a.stages[st].setups()} == {"cosmos", "anli_cosmos"}
    # anli's own intermediate stage is untouched although anli_cosmos builds on it
    assert all(a.stages[g].settings.get("tasks", [{}])[0].get("task") != "anli" or a.stages[g].depends_on for g in gone
               if a.stages[g].kind == "intermediate")


def test_multitask_mlm_and_mixing_setups(tmp_path: Path) -> None:
    data = copy.deepcopy(GRID)
    data["intermediate"] = {
        "multi": {"tasks": [{"task": "anli", "split": "dev"}, {"task": "cosmosqa", "split": "dev"}],
                  "sampler": {"kind": "temperature", "temperature": 2.0}},
        "mixed": {"task": "panx_en", "extra_files": ["translations.tsv"], "extra_ratio": 0.5},
        "mlm": {"task": "anli", "split": "dev", "mlm": {"files": ["wiki.txt"], "probability": 0.2}},
    }
    data["targets"] = [{"task": "panx", "languages": ["de"]}]
    plan = plan_of(data, tmp_path)
    inter = {s.setup: s.settings for s in plan.of_kind("intermediate") if s.seed == 0}
    assert [t["task"] for t in inter["multi"]["tasks"]] == ["anli", "cosmosqa"]
    assert inter["multi"]["sampler"]["kind"] == "temperature"
    assert inter["mixed"]["tasks"][0]["extra_ratio"] == 0.5
    assert inter["mlm"]["mlm"]["probability"] == 0.2


def test_eval_precision_changes_only_eval_ids_and_fp32_keeps_them(tmp_path: Path) -> None:
    base = plan_of(GRID, tmp_path)
    same = plan_of({**GRID, "hyperparameters": {"eval": {"precision": "fp32"}}}, tmp_path)
    assert list(same.stages) == list(base.stages)  # fp32 is the default and not part of any id
    bf16 = plan_of({**GRID, "hyperparameters": {"eval": {"precision": "bf16"}}}, tmp_path)
    assert {s.id for s in bf16.of_kind("target")} == {s.id for s in base.of_kind("target")}
    evals = bf16.of_kind("eval")
    assert evals and all(s.settings["precision"] == "bf16" for s in evals)
    assert not {s.id for s in evals} & {s.id for s in base.of_kind("eval")}
