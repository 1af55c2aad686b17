"""Spec loading and validation: bad specs fail before anything runs, naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xstilts.errors import ConfigError
from xstilts.experiments import load_spec

GOOD = {
    "models": ["e5-small"],
    "intermediate": {"baseline": "none", "anli": {"task": "anli", "split": "dev"}, "ac": {"chain": ["anli", "cosmosqa"]}},
    "targets": [{"task": "panx", "languages": ["en", "de"]}, {"task": "tatoeba", "languages": ["de", "fr"]}],
    "seeds": [0],
}


def write(tmp_path: Path, data: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def bad(tmp_path: Path, **changes) -> str:
    data = {**GOOD, **changes}
    with pytest.raises(ConfigError) as exc:
        load_spec(write(tmp_path, data))
    msg = str(exc.value)
    assert "spec.yaml" in msg, msg
    return msg


def test_good_spec_loads_and_normalises(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    assert [m.name for m in spec.models] == ["e5-small"]
    assert spec.intermediate["baseline"].kind == "none"
    assert spec.intermediate["anli"].step.tasks[0].split == "dev"
    assert spec.output_dir.is_absolute()  # relative to the spec file


def test_unknown_task_lists_valid_ones(tmp_path: Path) -> None:
    msg = bad(tmp_path, intermediate={"baseline": None, "x": "not_a_task"})
    assert "unknown task 'not_a_task'" in msg and "intermediate.x" in msg
    assert "anli" in msg and "cosmosqa" in msg  # valid names listed
    msg = bad(tmp_path, targets=["nope"])
    assert "unknown task 'nope'" in msg and "targets[0].task" in msg and "xnli" in msg


def test_unknown_key_names_key_and_allowed(tmp_path: Path) -> None:
    msg = bad(tmp_path, seedz=[1])
    assert "seedz" in msg and "unknown key" in msg and "seeds" in msg
    msg = bad(tmp_path, targets=[{"task": "panx", "langs": ["de"]}])
    assert "targets[0].langs" in msg and "languages" in msg
    msg = bad(tmp_path, hyperparameters={"target": {"learning_rat": 1e-5}})
    assert "hyperparameters.target.learning_rat" in msg and "learning_rate" in msg


def test_chain_cycle(tmp_path: Path) -> None:
    msg = bad(tmp_path, intermediate={"baseline": None, "x": {"chain": ["y", "anli"]}, "y": {"chain": ["x"]}})
    assert "cycle" in msg and "x -> y -> x" in msg
    msg = bad(tmp_path, intermediate={"a": {"chain": ["anli", "cosmosqa", "anli"]}})
    assert "cycle" in msg and "anli" in msg


def test_language_the_task_lacks(tmp_path: Path) -> None:
    msg = bad(tmp_path, targets=[{"task": "xcopa", "languages": ["de"]}])
    assert "no language 'de'" in msg and "targets[0].languages" in msg and "qu" in msg


def test_retrieval_and_target_only_tasks_as_intermediate(tmp_path: Path) -> None:
    msg = bad(tmp_path, intermediate={"t": "tatoeba"})
    assert "retrieval task" in msg
    msg = bad(tmp_path, intermediate={"t": "xnli"})
    assert "role 'target'" in msg


def test_baseline_naming_and_missing_split(tmp_path: Path) -> None:
    assert "must be named 'baseline'" in bad(tmp_path, intermediate={"none_setup": None, "a": "anli"})
    assert "reserved" in bad(tmp_path, intermediate={"baseline": "anli"})
    # xcopa has no English train split: its target training needs an explicit source
    msg = bad(tmp_path, targets=["xcopa"])
    assert "no split 'train'" in msg


def test_include_deep_merges_with_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "defaults").mkdir()
    write(tmp_path / "defaults", {"hyperparameters": {"target": {"learning_rate": 1e-5, "batch_size": 4}},
                                  "output_dir": "../runs/x", "seeds": [0, 1]}, "base.yaml")
    spec = load_spec(write(tmp_path, {**GOOD, "include": "defaults/base.yaml", "seeds": [3],
                                      "hyperparameters": {"target": {"batch_size": 8}}}))
    # hyperparameters are typed (TrainHyper); overrides() is what the files set
    assert spec.hyperparameters.target.overrides() == {"learning_rate": 1e-5, "batch_size": 8}
    assert spec.seeds == [3]
    assert spec.output_dir.resolve() == (tmp_path / "runs" / "x").resolve()


def test_include_cycle(tmp_path: Path) -> None:
    write(tmp_path, {"include": "b.yaml"}, "a.yaml")
    write(tmp_path, {"include": "a.yaml"}, "b.yaml")
    with pytest.raises(ConfigError, match="include cycle"):
        load_spec(tmp_path / "a.yaml")


@pytest.mark.parametrize("name", ["paper.yaml", "quickstart.yaml"])
def test_shipped_specs_are_valid(name: str) -> None:
    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / name)
    assert "baseline" in spec.intermediate
