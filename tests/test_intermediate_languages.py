"""Intermediate training in non-English languages and per-entry example caps (issue 19).

A tagging target with training data in many languages (UD-POS, PAN-X) is also an intermediate
task in those languages, so a spec can express an English-only, a non-English-only and a mixed
arm; an entry's own ``max_examples`` (one number, or ``{language: N, default: M}``) caps each of
its languages, drawn with the stage's seed, and is part of the stage's identity. ANLI's rounds
are tasks of their own (the domain study: R1/R2 Wikipedia contexts, R3 mixed genres).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xstilts.errors import ConfigError
from xstilts.experiments import parse_spec, plan_stages
from xstilts.experiments.plan import estimated_examples
from xstilts.tasks.catalog import get_task, list_tasks
from xstilts.tasks.loading import load_examples

FIVE = ["ar", "fi", "id", "tr", "zh"]
SETUPS = {
    "baseline": None,
    "en_only": {"task": "udpos_en", "max_examples": 1000},
    "non_en": {"task": "udpos", "languages": FIVE, "split": "train"},
    "mixed": {"tasks": [{"task": "udpos_en", "max_examples": 500},
                        {"task": "udpos", "languages": FIVE, "max_examples": 100}]},
    "mixed_one_head": {"task": "udpos", "languages": ["en", *FIVE], "max_examples": {"en": 500, "default": 100}},
}


def spec_data(tmp_path: Path, intermediate: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"models": ["e5-small"], "intermediate": intermediate or SETUPS,
            "targets": [{"task": "panx", "languages": ["en", "de"]}], "seeds": [0],
            "max_examples": {"intermediate": 200, "target": 50, "eval": 10},
            "output_dir": str(tmp_path / "out"), "data_dir": str(tmp_path), **extra}


def plan_of(tmp_path: Path, intermediate: dict[str, Any] | None = None):
    return plan_stages(parse_spec(spec_data(tmp_path, intermediate), tmp_path / "s.yaml"))


def intermediate_ids(tmp_path: Path, setup: dict[str, Any]) -> str:
    plan = plan_of(tmp_path, {"baseline": None, "x": setup})
    (stage,) = plan.of_kind("intermediate")
    return stage.id


def refused(tmp_path: Path, setup: Any) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_spec(spec_data(tmp_path, {"baseline": None, "x": setup}), tmp_path / "s.yaml")
    return err.value


# --------------------------------------------------------------------------- catalog


def test_tagging_targets_are_intermediate_tasks_in_their_training_languages() -> None:
    udpos, panx = get_task("udpos"), get_task("panx")
    assert udpos.role == panx.role == "both"
    assert {"udpos", "panx"} <= {t.name for t in list_tasks("intermediate")} & {t.name for t in list_tasks("target")}
    # every local train file of UD-POS, plus the hub's (which lacks lt, uk, wo); no train split: pl, ro, th, tl, yo
    assert set(FIVE) | {"af", "en", "lt", "uk", "wo", "de"} <= set(udpos.train_languages)
    assert not {"pl", "ro", "th", "tl", "yo"} & set(udpos.train_languages)
    assert panx.train_languages == panx.languages
    # as targets they still fine-tune on English (zero-shot transfer)
    assert udpos.source_languages == panx.source_languages == ["en"]


def test_a_non_english_task_trains_in_its_own_languages_by_default(tmp_path: Path) -> None:
    from xstilts.tasks.catalog import register_task, unregister_task

    entry = {"format": "classification", "role": "both", "splits": ["train", "test"], "eval_split": "test",
             "metric": "accuracy", "primary_metric": "accuracy", "label_list": ["a", "b"]}
    german = register_task({**entry, "name": "toy_de", "languages": ["de", "fr"]})
    english = register_task({**entry, "name": "toy_en", "languages": ["en", "de"]})
    try:
        assert german.train_languages == ["de", "fr"] and german.source_languages == ["de", "fr"]
        assert english.train_languages == ["en"]  # unset with English: English only, as before
        parse_spec(spec_data(tmp_path, {"baseline": None, "x": {"task": "toy_de", "languages": ["fr"]}}),
                   tmp_path / "s.yaml")
        assert refused(tmp_path, {"task": "toy_en", "languages": ["de"]}).key == "intermediate.x.languages"
    finally:
        unregister_task("toy_de")
        unregister_task("toy_en")


def test_anli_rounds_are_tasks() -> None:
    for name, domain in (("anli_r1", "wikipedia"), ("anli_r2", "wikipedia"), ("anli_r3", "mixed")):
        task = get_task(name)
        assert (task.format, task.role, task.domain) == ("classification", "intermediate", domain)
        assert task.label_list == get_task("anli").label_list
        round_ = name[-2:]
        assert task.hub.splits == {"train": f"train_{round_}", "dev": f"dev_{round_}", "test": f"test_{round_}"}
        assert task.local.reader == "anli_csv" and task.local.paths == {"dev": f"anli/dev.{round_}.csv"}
    assert "news, fiction" in get_task("anli_r3").description and "does not say" in get_task("anli_r3").description


def test_anli_rounds_load_from_the_local_files(shared_data: Path) -> None:
    sizes = {}
    for name, n in (("anli_r1", 1000), ("anli_r2", 1000), ("anli_r3", 1198)):
        examples = load_examples(name, "en", "dev", data_dir=shared_data)
        assert len(examples) == n, name
        assert {ex.label for ex in examples} == {"entailment", "neutral", "contradiction"}
        sizes[name] = n
    rounds = [ex.id for name in sizes for ex in load_examples(name, "en", "dev", data_dir=shared_data)]
    assert rounds == [ex.id for ex in load_examples("anli", "en", "dev", data_dir=shared_data)]  # anli = r1+r2+r3


# --------------------------------------------------------------------------- spec and plan


def test_non_english_and_mixed_setups_validate_and_plan(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    tasks = {s.setup: s.settings["tasks"] for s in plan.of_kind("intermediate")}
    caps = {setup: [(t["task"], t["languages"], t.get("max_examples")) for t in entries]
            for setup, entries in tasks.items()}
    assert caps == {
        "en_only": [("udpos_en", ["en"], 1000)],                  # the entry's cap wins over the spec's 200
        "non_en": [("udpos", FIVE, 200)],                         # the spec's cap, per language
        "mixed": [("udpos_en", ["en"], 500), ("udpos", FIVE, 100)],
        "mixed_one_head": [("udpos", ["en", *FIVE], {"en": 500, **dict.fromkeys(FIVE, 100)})],
    }
    by_setup = {s.setup: s for s in plan.of_kind("intermediate")}
    assert by_setup["non_en"].record.languages == tuple(FIVE)
    # quantity matched: 1,000 sentences in every arm
    assert {estimated_examples(s) for s in by_setup.values()} == {1000}
    # the target still fine-tunes on English after every arm
    assert {tuple(s.settings["tasks"][0]["languages"]) for s in plan.of_kind("target")} == {("en",)}


def test_a_language_without_training_data_is_refused(tmp_path: Path) -> None:
    err = refused(tmp_path, {"task": "udpos", "languages": ["ar", "pl"]})  # UD-POS pl: dev and test only
    assert err.key == "intermediate.x.languages"
    assert "no training data in 'pl'" in str(err) and "ar, bg, de" in str(err)
    err = refused(tmp_path, {"tasks": [{"task": "udpos_en"}, {"task": "udpos", "languages": ["yo"]}]})
    assert err.key == "intermediate.x.tasks[1].languages" and "'yo'" in str(err)
    err = refused(tmp_path, {"chain": ["anli", {"task": "panx", "languages": ["xx"]}]})  # not a language of it
    assert err.key == "intermediate.x.chain[1].languages"
    # another split of a language without a train split is fine (its dev file)
    parse_spec(spec_data(tmp_path, {"baseline": None, "x": {"task": "udpos", "languages": ["pl"], "split": "dev"}}),
               tmp_path / "s.yaml")
    # a target-only task is still no intermediate task
    assert "role 'target'" in str(refused(tmp_path, {"task": "xnli", "languages": ["de"]}))


def test_per_language_caps_name_languages_of_the_entry(tmp_path: Path) -> None:
    err = refused(tmp_path, {"task": "udpos", "languages": ["ar", "fi"], "max_examples": {"tr": 10}})
    assert err.key == "intermediate.x.max_examples.tr"
    err = refused(tmp_path, {"task": "udpos", "languages": ["ar"], "max_examples": 0})
    assert "max_examples" in (err.key or "")
    # language names and ISO 639-3 codes are normalised like the entry's languages
    plan = plan_of(tmp_path, {"baseline": None, "x": {"task": "udpos", "languages": ["ar", "fi"],
                                                      "max_examples": {"fin": 7, "default": 3}}})
    assert plan.of_kind("intermediate")[0].settings["tasks"][0]["max_examples"] == {"ar": 3, "fi": 7}


def test_an_entry_cap_is_part_of_the_stage_id(tmp_path: Path) -> None:
    entry = {"task": "udpos", "languages": ["ar", "fi"]}
    spec_cap = intermediate_ids(tmp_path, entry)  # the spec's max_examples.intermediate: 200
    ids = {cap: intermediate_ids(tmp_path, {**entry, "max_examples": cap}) for cap in (100, 300)}
    assert len({spec_cap, *ids.values()}) == 3
    assert intermediate_ids(tmp_path, {**entry, "max_examples": 200}) == spec_cap  # same cap, same stage
    assert intermediate_ids(tmp_path, {**entry, "max_examples": {"default": 100}}) == ids[100]
    assert intermediate_ids(tmp_path, {**entry, "max_examples": {"ar": 100, "default": 300}}) not in ids.values()
    # multi-task steps take it too, and it changes only that step's stage
    multi = {"tasks": [{"task": "udpos_en", "max_examples": 50}, entry]}
    assert intermediate_ids(tmp_path, multi) != intermediate_ids(tmp_path, {"tasks": [{"task": "udpos_en"}, entry]})


# --------------------------------------------------------------------------- training


@pytest.fixture
def _cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))


@pytest.mark.usefixtures("_cache_home")
def test_a_stage_trains_on_two_non_english_languages(shared_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from xstilts.train import make_train_config, train_stage
    from xstilts.train.data import load_task_data

    def config(cap: Any):
        return make_train_config({
            "model": str(tiny_model_dir), "data_dir": str(shared_data), "seed": 3, "batch_size": 4, "num_epochs": 1,
            "max_length": 32, "eval_max_examples": 8, "progress": False,
            "tasks": [{"task": "udpos", "languages": ["ar", "fi"], "max_examples": cap}]})

    def drawn(lang: str, n: int) -> list[list[str]]:  # what the stage's seed draws from one language
        return [ex.tokens for ex in load_examples("udpos", lang, "train", data_dir=shared_data, max_examples=n, seed=3)]

    cfg = config(6)
    train = load_task_data(cfg.tasks[0], cfg, 0).train
    assert [ex.tokens for ex in train] == drawn("ar", 6) + drawn("fi", 6)  # 6 per language, stage seed
    per_language = config({"fi": 2, "default": 5})
    train = load_task_data(per_language.tasks[0], per_language, 0).train
    assert [ex.tokens for ex in train] == drawn("ar", 5) + drawn("fi", 2)

    result = train_stage(cfg, tmp_path / "stage")
    # 12 sentences, batch 4, one epoch: 3 steps, more when a long sentence fills two 32-token windows
    assert result.steps >= 3 and result.task_batches == {"udpos": result.steps}
    assert set(result.dev_metrics) == {"udpos"}  # scored on the English dev split
    done = json.loads((tmp_path / "stage" / "DONE").read_text())
    assert done["config"]["tasks"][0]["languages"] == ["ar", "fi"] and done["config"]["tasks"][0]["max_examples"] == 6
