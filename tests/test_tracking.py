"""--report-to tensorboard|wandb|mlflow on train, run and eval: curves, dev scores, zero-shot scores per language."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from xstilts.errors import ConfigError, UnknownNameError
from xstilts.tracking import ENV_VAR, eval_scalars, parse_report_to, require_trackers

pytest.importorskip("tensorboard")


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(ENV_VAR, "")  # restored after the test (xstilts run --report-to sets it)


def _cli(*args: str):
    from typer.testing import CliRunner

    from xstilts.cli import app

    return CliRunner().invoke(app, list(args))


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag under ``logdir`` (all event files) -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(logdir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def _tatoeba(root: Path) -> Path:
    from tests.test_evaluate import _tatoeba_dir

    return _tatoeba_dir(root)


def test_tracker_names_and_missing_packages_are_clear_errors(monkeypatch):
    assert parse_report_to(["tensorboard,tensorboard", "none"]) == ["tensorboard"]
    assert parse_report_to(None) == [] and parse_report_to("none") == []
    with pytest.raises(UnknownNameError, match="tensorbord"):
        parse_report_to("tensorbord")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "mlflow") else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'xstilts\[wandb\]'"):
        require_trackers(["wandb"])
    res = _cli("eval", "--model", "e5-small", "--task", "tatoeba", "--report-to", "mlflow")
    assert res.exit_code == 2 and "xstilts[mlflow]" in res.output  # before any model loads
    res = _cli("run", "nonexistent-spec.yaml", "--report-to", "wandb")
    assert res.exit_code == 2 and "xstilts[wandb]" in res.output


def test_train_reports_curves_and_dev_scores_to_tensorboard(tiny_model_dir, shared_data, tmp_path):
    out = tmp_path / "stage"
    res = _cli("train", "--model", str(tiny_model_dir), "--task", "panx", "--max-steps", "4", "--batch-size", "8",
               "--max-examples", "32", "--max-length", "32", "--data-dir", str(shared_data), "--out", str(out),
               "--report-to", "tensorboard")
    assert res.exit_code == 0, res.output
    scalars = _scalars(out)
    assert scalars["loss"][-1][0] == 4 and "lr" in scalars and "examples_per_s" in scalars
    assert scalars["eval/panx/f1"][-1][0] == 4
    done = json.loads((out / "DONE").read_text())
    assert done["config"]["trackers"] == ["tensorboard"]


def test_eval_reports_zero_shot_scores_per_language(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    res = _cli("eval", "--model", str(tiny_model_dir), "--task", "tatoeba", "--languages", "de,fr", "--layer", "1",
               "--data-dir", str(_tatoeba(tmp_path / "data")), "--out", str(out), "--report-to", "tensorboard")
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    scalars = _scalars(out)
    for lang in ("de", "fr"):
        assert scalars[f"zero_shot/tatoeba/test/{lang}/accuracy"] == [(0, pytest.approx(
            metrics["per_language"][lang]["accuracy"]))]
    assert "zero_shot/tatoeba/test/average/accuracy" in scalars


def test_run_stages_report_through_the_executor(tiny_model_dir, tmp_path, monkeypatch):
    """xstilts run --report-to sets the trackers of every stage (training config and eval scores)."""
    from xstilts.evaluate import EvalReport
    from xstilts.experiments.executor import StageTask, TrainEvalExecutor, build_train_config

    monkeypatch.setenv(ENV_VAR, "tensorboard")
    task = StageTask("s1", "target", {"model": str(tiny_model_dir), "tasks": [{"task": "panx"}], "seed": 0},
                     tmp_path / "s1", tmp_path, None)
    cfg = build_train_config(task)
    assert cfg.trackers == ["tensorboard"] and cfg.hash() == build_train_config(
        StageTask("s1", "target", {**task.settings, "trackers": []}, task.stage_dir, tmp_path, None)).hash()

    import xstilts.evaluate as evaluate

    report = EvalReport(task="xnli", split="test", per_language={"de": {"accuracy": 40.0}, "fr": {"accuracy": 50.0}},
                        average={"accuracy": 45.0}, settings={"batch_size": 8})
    monkeypatch.setattr(evaluate, "zero_shot_eval", lambda *a, **k: report)
    eval_task = StageTask("e1", "eval", {"model": str(tiny_model_dir), "task": "xnli", "languages": ["de", "fr"],
                                         "split": "test"}, tmp_path / "e1", tmp_path, None)
    outcome = TrainEvalExecutor()(eval_task)
    assert len(outcome.metrics) == 2
    assert eval_scalars(report) == {k: v[0][1] for k, v in _scalars(tmp_path / "e1").items()}
