"""The studies (studies/<name>/): every shipped spec validates and plans, and study 5's
full-scale XLM-R vs mT5 spec runs end to end with tiny random-weight encoders of both
families (its real models are not reachable offline)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from xstilts.experiments import load_spec, open_store, plan_stages, run_local

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"
NAMES = ["task_similarity", "sequential_lowres", "mixed_language", "domain", "xlmr_vs_mt5_nli"]


@pytest.mark.parametrize("name", NAMES)
def test_study_specs_validate_and_plan(name: str) -> None:
    local = load_spec(STUDIES / name / "spec.yaml")
    full = load_spec(STUDIES / name / "full.yaml")
    assert [m.name_or_path for m in local.models] == ["e5-small"]
    assert len(local.seeds) >= 2, "confidence intervals need more than one seed"
    assert local.max_examples.intermediate is not None and local.max_examples.eval is not None
    assert any("xlm-roberta-large" in m.name_or_path for m in full.models)
    assert full.max_examples.intermediate is None and full.max_examples.target is None
    # the local and full runs compare the same kind of setups, always against the baseline
    assert "baseline" in local.intermediate and "baseline" in full.intermediate
    for spec in (local, full):
        plan = plan_stages(spec)
        kinds = [s.kind for s in plan.stages.values()]
        assert kinds.count("eval") >= len(spec.intermediate) * len(spec.targets)
    assert (STUDIES / name / "README.md").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_readme_numbers_are_recomputed_from_results(name: str) -> None:
    """The README's generated block is exactly what its results.csv and analysis.yaml give
    (regenerate with `xstilts summarize studies/NAME --write-readme`)."""
    from xstilts.analysis.study_summary import ANALYSIS_FILE, read_block, summarize

    study = STUDIES / name
    if not (study / ANALYSIS_FILE).is_file():
        pytest.skip(f"studies/{name} has no {ANALYSIS_FILE} yet (added when its second-edition run finishes)")
    if not (study / "results.csv").is_file():
        # a study whose second-edition run has not finished has no results.csv (its first
        # edition's is kept in studies/NAME/first_edition/); its block says so
        assert "when the run finishes" in read_block(study)
        pytest.skip(f"studies/{name}: second-edition run not finished yet (no results.csv)")
    assert read_block(study) == summarize(study), (
        f"studies/{name}/README.md: stale summary block; run `xstilts summarize studies/{name} --write-readme`")


def _intermediate(plan, seed: int = 0) -> dict[tuple[str, ...], object]:
    """The seed's intermediate stages, keyed by the setups that use them."""
    return {tuple(s.setups()): s for s in plan.stages.values() if s.kind == "intermediate" and s.settings["seed"] == seed}


@pytest.mark.parametrize("name", NAMES)
def test_study_scale_meets_the_second_edition_minimum(name: str) -> None:
    """Issue 19's floor: >= 3 seeds, >= 1,000 intermediate examples per task step (or the whole
    local set: the ANLI rounds of study 4 hold 1,000 / 1,000 / 1,198 rows, 100 held out),
    >= 200 evaluation items per language, every local language of each multilingual target."""
    spec = load_spec(STUDIES / name / "spec.yaml")
    plan = plan_stages(spec)
    assert len(spec.seeds) >= 3
    for st in plan.stages.values():
        if st.kind == "intermediate":
            for t in st.settings["tasks"]:
                caps = t["max_examples"] if isinstance(t["max_examples"], dict) else {"_": t["max_examples"]}
                total = sum(caps.values()) if isinstance(t["max_examples"], dict) else caps["_"] * len(t["languages"])
                assert total >= 1000 or t["task"] in ("anli_r1", "anli_r2", "anli_r3"), (name, t)
        elif st.kind == "eval":
            assert st.settings.get("max_examples") in (None,) or st.settings["max_examples"] >= 200, (name, st.settings)
    for target in spec.targets:
        if target.task in ("panx", "tatoeba", "tydiqa", "udpos"):
            assert target.languages == "all" or len(target.languages) > 20, (name, target.task)


def test_sequential_chains_share_stages_and_match_steps() -> None:
    """Chains of two and three in both orders build on the single-task stages; the multi-task
    and the step-matched controls see as many examples as a chain of two."""
    plan = plan_stages(load_spec(STUDIES / "sequential_lowres" / "spec.yaml"))
    inter = _intermediate(plan)
    by_setup = {setup: st for setups, st in inter.items() for setup in setups}
    tasks = {k: [(t["task"], t["max_examples"]) for t in st.settings["tasks"]] for k, st in by_setup.items()}
    # the last stage of each chain sits on top of the previous step, which is a single-task stage
    first = {"anli_udpos": "anli", "udpos_anli": "udpos_en", "csqa_udpos_anli": "commonsenseqa"}
    for chain, single in first.items():
        st = by_setup[chain]
        root = st
        while root.depends_on:
            root = plan.stages[root.depends_on[0]]
        assert root.id == by_setup[single].id, chain
    # anli_udpos_csqa continues the anli_udpos stage: three steps, A then B then C
    st = by_setup["anli_udpos_csqa"]
    assert tasks["anli_udpos_csqa"] == [("commonsenseqa", 1000)]
    assert plan.stages[st.depends_on[0]].id == by_setup["anli_udpos"].id
    assert sorted(tasks["anli_udpos_multi"]) == [("anli", 1000), ("udpos_en", 1000)]
    assert tasks["anli_x2"] == [("anli", 2000)] and tasks["udpos_x2"] == [("udpos_en", 2000)]


def test_mixed_language_arms_differ_only_in_language_mix() -> None:
    """One task (UD-POS, one head), 1,000 sentences per arm; only the languages differ."""
    plan = plan_stages(load_spec(STUDIES / "mixed_language" / "spec.yaml"))
    inter = {setups[0]: st.settings["tasks"] for setups, st in _intermediate(plan).items()}
    assert set(inter) == {"en_only", "non_en", "mixed"}

    def sizes(entries) -> dict[str, int]:
        (entry,) = entries
        assert entry["task"] == "udpos" and entry["split"] == "train"
        cap = entry["max_examples"]
        return {lang: (cap[lang] if isinstance(cap, dict) else cap) for lang in entry["languages"]}

    assert sizes(inter["en_only"]) == {"en": 1000}
    assert sizes(inter["non_en"]) == dict.fromkeys(["ar", "fi", "id", "tr", "zh"], 200)
    assert sizes(inter["mixed"]) == {"en": 500} | dict.fromkeys(["ar", "fi", "id", "tr", "zh"], 100)


def _write_translated_anli(path: Path) -> Path:
    """A few synthetic German NLI pairs in the ANLI CSV layout the spec's extra_files expect."""
    rows = [
        ("Der Hund schläft im Garten.", "Ein Tier ruht draußen.", "e"),
        ("Die Stadt liegt am Fluss.", "Die Stadt hat keinen Fluss.", "c"),
        ("Maria kauft Brot.", "Maria hat Hunger.", "n"),
        ("Es regnet seit Montag.", "Das Wetter ist nass.", "e"),
        ("Das Konzert beginnt um acht.", "Das Konzert fällt aus.", "c"),
        ("Peter liest ein Buch.", "Das Buch ist spannend.", "n"),
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "context", "statement", "gold_label"])
        for i, (c, s, g) in enumerate(rows):
            w.writerow([f"de-{i}", c, s, g])
    return path


def test_xlmr_vs_mt5_full_spec_runs_end_to_end_with_tiny_encoders(tmp_path: Path, shared_data: Path) -> None:
    """The full-scale spec of study 5, with its two model families swapped for tiny random
    XLM-R and mT5-encoder configs (each keeping the model hyperparameters full.yaml gives it),
    its data for the local files (ANLI dev for the English NLI that is only on the hub,
    XNLI-de) and its sizes for a few steps, runs every stage and stores a zero-shot XNLI score
    for both models and every setup. mT5's stages train with its own learning rate and mean
    pooling, which its saved heads keep for evaluation; XLM-R's with the spec's and CLS."""
    import json

    from tests.helpers import tiny_encoder_dir
    from xstilts.paths import MODEL_DIR, XSTILTS_MODEL_FILE

    xlmr = tiny_encoder_dir(tmp_path / "tiny-xlmr", kind="xlm-roberta")
    mt5 = tiny_encoder_dir(tmp_path / "tiny-mt5", kind="mt5")
    translated = _write_translated_anli(tmp_path / "anli.train.de.csv")
    tiny = {"learning_rate": 1e-3, "batch_size": 4, "max_steps": 1, "max_length": 32, "precision": "fp32",
            "eval_max_examples": 2, "save_every": 0}
    full_models = {m.name: m.hyperparameters.model_dump(exclude_unset=True)
                   for m in load_spec(STUDIES / "xlmr_vs_mt5_nli" / "full.yaml").models}
    mt5_lr = full_models["mt5-large"]["target"]["learning_rate"]
    assert full_models["mt5-large"]["intermediate"]["learning_rate"] == mt5_lr != tiny["learning_rate"]
    overrides = {
        "models": [
            {"name": "tiny-xlmr", "name_or_path": str(xlmr), "hyperparameters": full_models["xlm-roberta-large"]},
            {"name": "tiny-mt5", "name_or_path": str(mt5), "hyperparameters": full_models["mt5-large"]},
        ],
        "seeds": [0],
        "intermediate": {
            "anli_en": {"task": "anli", "split": "dev"},
            "anli_en_translated": {"split": "dev", "extra_files": [str(translated)]},
        },
        # MNLI (XNLI's English training set) is hub-only: train on ANLI dev, evaluate German
        "targets": [{"task": "xnli", "languages": ["de"], "split": "test", "train": {"task": "anli", "split": "dev"}}],
        "hyperparameters": {"intermediate": tiny, "target": tiny, "eval": {"batch_size": 16}},
        "max_examples": {"intermediate": 4, "target": 4, "eval": 6},
        "data_dir": str(shared_data),
        "output_dir": str(tmp_path / "out"),
    }
    spec = load_spec(STUDIES / "xlmr_vs_mt5_nli" / "full.yaml", overrides=overrides)
    assert set(spec.intermediate) == {"baseline", "anli_en", "anli_en_translated"}
    # anli_en runs the same code path as anli_en_translated minus the extra files: leave it
    # out to keep the test short (2 models x (1 intermediate + 2 target + 2 eval) stages)
    del spec.intermediate["anli_en"]
    plan = plan_stages(spec)
    states = run_local(plan)
    assert set(states.values()) == {"done"}, states

    store = open_store(spec.output_dir)
    metrics = store.metrics_frame()
    acc = metrics[(metrics["target"] == "xnli") & (metrics["metric"] == "accuracy")]
    assert set(acc["model"]) == {"tiny-xlmr", "tiny-mt5"}
    for model in ("tiny-xlmr", "tiny-mt5"):
        rows = acc[acc["model"] == model]
        assert set(rows["setup"]) == {"baseline", "anli_en_translated"}
        assert set(rows["language"]) == {"de"}
        assert rows["value"].between(0, 100).all()
    # the translated German data was mixed into the intermediate stage of both models
    stages = store.stages_frame()
    mixed = stages[(stages["kind"] == "intermediate") & (stages["setup"] == "anli_en_translated")]
    assert len(mixed) == 2 and (mixed["state"] == "done").all()
    assert all(str(translated) in s for s in mixed["settings"])
    # per-model hyperparameters: mT5's training stages (and only those) have its learning rate
    # and mean pooling, and its saved heads pool the mean, so evaluation pools as training did
    trained = [s for s in plan.stages.values() if s.kind in ("intermediate", "target")]
    assert {s.model for s in trained} == {"tiny-xlmr", "tiny-mt5"}
    for stage in trained:
        want = (mt5_lr, "mean") if stage.model == "tiny-mt5" else (tiny["learning_rate"], "cls")
        assert (stage.settings["learning_rate"], stage.settings["pooling"]) == want, (stage.model, stage.kind)
        meta = json.loads((plan.stage_dir(stage.id) / MODEL_DIR / XSTILTS_MODEL_FILE).read_text())
        assert {h["pooling"] for h in meta["heads"]} == {want[1]}, (stage.model, stage.kind)
