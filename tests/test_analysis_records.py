"""Typed stage records read from the planner's settings, and TaskEmb as a cached step read by the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from xstilts.analysis.records import model_sources, setup_languages, setup_tasks, stage_uses, task_models
from xstilts.analysis.taskemb import (
    TaskEmbSettings,
    compute_task_embedding,
    compute_task_embeddings,
    find_task_models,
    load_task_embeddings,
    task_emb_path,
)
from xstilts.paths import MODEL_DIR, STAGES_DIR, XSTILTS_MODEL_FILE


def planned_stages(tmp_path) -> tuple[pd.DataFrame, object]:
    """A stages frame (the store's columns) of a real plan: anli and panx, baseline + anli."""
    from xstilts.experiments import load_spec, plan_stages

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({
        "models": ["e5-small"],
        "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"}},
        "targets": [{"task": "panx", "languages": ["en", "de"]}], "seeds": [0],
        "max_examples": {"intermediate": 8, "target": 8, "eval": 4},
        "output_dir": str(tmp_path / "out"), "data_dir": str(tmp_path)}))
    plan = plan_stages(load_spec(spec_file))
    rows = [{"stage_id": s.id, "kind": s.kind, "state": "done", "setup": lab.setup, "target": lab.target,
             "model": lab.model, "seed": lab.seed, "settings": json.dumps(s.settings)}
            for s in plan for lab in s.labels]
    return pd.DataFrame(rows), plan


def test_records_say_what_each_stage_trained_and_where_its_model_is(tmp_path):
    stages, plan = planned_stages(tmp_path)
    out = tmp_path / "out"
    records = stage_uses(stages, out)
    inter = [r for r in records if r.kind == "intermediate"]
    assert len(inter) == 1 and inter[0].tasks == ("anli",) and inter[0].languages == ("en",)
    assert inter[0].splits == ("dev",)
    assert inter[0].model_dir == out / STAGES_DIR / inter[0].stage_id / MODEL_DIR
    target = next(r for r in records if r.kind == "target" and r.setup == "baseline")
    assert target.tasks == ("panx",) and target.model_dir is not None and not target.has_model()
    ev = next(r for r in records if r.kind == "eval")
    assert ev.tasks == ("panx",) and set(ev.languages) == {"en", "de"} and ev.model_dir is None
    assert all(r.finished for r in records)
    tasks, notes = setup_tasks(records, ["anli", "unknown"])
    assert tasks == {"anli": ["anli"]} and len(notes) == 1 and "unknown" in notes[0]
    assert setup_languages(records, "anli") == ["en"]
    models = task_models(records, tasks)
    assert set(models) == {"anli", "panx"} and models["panx"].head == "panx"
    assert (models["anli"].split, models["panx"].split) == ("dev", "train")  # the data each was trained on
    assert model_sources(records) == {"e5-small": "e5-small"}  # what the model label loads from


def _fake_models(tmp_path):
    """Stage records of a finished store whose single-task stages have (fake) saved models."""
    stages, _ = planned_stages(tmp_path)
    out = tmp_path / "out"
    for r in stage_uses(stages, out):
        if r.model_dir is not None:
            r.model_dir.mkdir(parents=True, exist_ok=True)
            (r.model_dir / XSTILTS_MODEL_FILE).write_text("{}")
    return stages, out


def test_task_emb_is_computed_once_and_read_back(tmp_path, monkeypatch):
    stages, out = _fake_models(tmp_path)
    calls = []

    def fake_fisher(model_dir, task, **kw):
        calls.append((task, kw["max_examples"], kw["split"]))
        return np.arange(4, dtype=np.float32) + len(task)

    monkeypatch.setattr("xstilts.analysis.similarity.fisher_task_embedding", fake_fisher)
    models = find_task_models(stage_uses(stages, out))
    assert set(models) == {"anli", "panx"}
    path = compute_task_embedding(models["anli"], TaskEmbSettings(max_examples=7))
    assert path == task_emb_path(models["anli"]) and path.parent.parent == models["anli"].model_dir.parent
    assert json.loads(path.with_suffix(".json").read_text())["max_examples"] == 7
    compute_task_embedding(models["anli"])  # cached: not recomputed
    assert calls == [("anli", 7, "dev")]
    vectors, missing = load_task_embeddings(models)
    assert list(vectors) == ["anli"] and np.allclose(vectors["anli"], np.arange(4) + 4)
    assert "panx" in missing and "not computed" in missing["panx"]


def test_compute_task_embeddings_over_a_store_and_the_report_reads_them(tmp_path, monkeypatch):
    from xstilts.analysis.report import ReportOptions, report_from_frames

    stages, out = _fake_models(tmp_path)
    monkeypatch.setattr("xstilts.analysis.store.load_frames", lambda d: (pd.DataFrame(), stages))
    monkeypatch.setattr("xstilts.analysis.similarity.fisher_task_embedding",
                        lambda model_dir, task, **kw: np.array([1.0, 2.0, 3.0]) if task == "anli" else np.array([1.0, 2.0, 2.0]))
    run = compute_task_embeddings(out)
    assert set(run.computed) == {"anli", "panx"} and not run.failed

    def no_fisher(*a, **kw):
        raise AssertionError("the report must not compute TaskEmb")

    monkeypatch.setattr("xstilts.analysis.similarity.fisher_task_embedding", no_fisher)
    monkeypatch.setattr("xstilts.analysis.similarity_sections.load_task_texts", lambda t, **kw: [f"{t} text {i}" for i in range(3)])
    metrics = pd.DataFrame([("e5-small", setup, "panx", lang, 0, "dev", "f1", 50.0 + (2 if setup == "anli" else 0) + i,
                             "x") for setup in ("baseline", "anli") for i, lang in enumerate(("en", "de"))],
                           columns=["model", "setup", "target", "language", "seed", "split", "metric", "value", "stage_id"])
    res = report_from_frames(metrics, stages, tmp_path / "rep" / "r.html", output_dir=out,
                             options=ReportOptions(n_boot=50, n_perm=50, corr_boot=20, encoder="/nonexistent",
                                                   tatoeba_examples=5))
    table = res.data.task_similarity.table.set_index(["intermediate", "target"])
    expected = np.dot([1, 2, 3], [1, 2, 2]) / (np.linalg.norm([1, 2, 3]) * 3)
    assert table.loc[("anli", "panx"), "task_emb"] == pytest.approx(expected)
    assert res.data.task_similarity.task_emb_missing == {}


def test_cli_report_compute_taskemb_first(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from xstilts.cli import app

    stages, out = _fake_models(tmp_path)
    metrics = pd.DataFrame([("e5-small", setup, "panx", "de", 0, "dev", "f1", 50.0 + (setup == "anli"), "x")
                            for setup in ("baseline", "anli")],
                           columns=["model", "setup", "target", "language", "seed", "split", "metric", "value", "stage_id"])

    class FakeStore:
        def close(self):
            pass

        def metrics_frame(self):
            return metrics

        def stages_frame(self):
            return stages.assign(started_at=0.0, finished_at=0.0, host="h", error=None)

    (out / "results.sqlite").write_bytes(b"")
    monkeypatch.setattr("xstilts.analysis.store._open_store", lambda d: FakeStore())
    monkeypatch.setattr("xstilts.analysis.similarity.fisher_task_embedding", lambda model_dir, task, **kw: np.ones(3))
    r = CliRunner().invoke(app, ["report", str(out), "--compute-taskemb", "--no-similarity", "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    assert "TaskEmb cached for 2 task(s): anli, panx" in r.output
    assert all(task_emb_path(m).is_file() for m in find_task_models(stage_uses(stages, out)).values())
