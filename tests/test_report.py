"""The report on synthetic results: files, sections, figures, and notes for missing inputs."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from xstilts.analysis.report import SECTIONS, ReportOptions, report_from_frames

FAST = dict(n_boot=300, n_perm=300, corr_boot=100)
LANGS = {"xnli": ["de", "fr", "sw", "hi", "zz"], "panx": ["de", "yo", "ja", "sw"]}
SETUPS = ["baseline", "anli", "cosmosqa", "commonsenseqa"]


def frames(seeds=(1, 2), drop_baseline_for=None):
    rng = np.random.default_rng(0)
    rows = []
    for t, langs in LANGS.items():
        metric, split = ("f1", "dev") if t == "panx" else ("accuracy", "test")
        for lang in langs:
            for seed in seeds:
                base = 60 + rng.normal(0, 5)
                for s in SETUPS:
                    if s == "baseline" and drop_baseline_for == (t, seed):
                        continue
                    g = 0.0 if s == "baseline" else {"anli": 2, "cosmosqa": 1, "commonsenseqa": -0.5}[s]
                    g += rng.normal(0, 0.5) - (3.0 if lang in ("sw", "yo") and s == "anli" else 0.0)
                    rows.append(("m", s, t, lang, seed, split, metric, base + g, f"{s}-{t}-{seed}"))
    m = pd.DataFrame(rows, columns=["model", "setup", "target", "language", "seed", "split", "metric", "value", "stage_id"])
    st = [dict(stage_id=f"int-{s}", kind="intermediate", state="done", setup=s, target=None, model="m", seed=1,
               started_at="", finished_at="", host="h", error=None,
               settings=json.dumps({"tasks": [{"task": s, "languages": ["en"], "max_examples": 1000}], "learning_rate": 1e-5}))
          for s in SETUPS[1:]]
    return m, pd.DataFrame(st)


def png_variance(path) -> float:
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("L"), dtype=float)
    return float(a.var())


def fake_texts(task, **kw):
    base = {"anli": "the premise states that a man walked into the old town hall",
            "cosmosqa": "yesterday I went to the shop with my friend and we bought bread",
            "commonsenseqa": "where would you keep a bottle of milk so it stays cold",
            "xnli": "a woman is reading a book in the park while it rains",
            "panx": "Berlin is the capital of Germany and Paris of France"}[task]
    return [f"{base} {i}" for i in range(6)]


@pytest.fixture
def no_real_data(monkeypatch):
    monkeypatch.setattr("xstilts.analysis.similarity_sections.load_task_texts", fake_texts)


def test_report_writes_every_section_and_figure(tmp_path, tiny_model_dir, no_real_data):
    m, st = frames()
    res = report_from_frames(m, st, tmp_path / "rep" / "report.html",
                             options=ReportOptions(encoder=str(tiny_model_dir), tatoeba_examples=20, **FAST),
                             output_dir=tmp_path)
    html = res.html.read_text()
    md = res.markdown.read_text()
    assert res.markdown == tmp_path / "rep" / "report.md"
    for sid, title in SECTIONS:
        assert f"id='{sid}'" in html and f"## {title}" in md
    names = {p.stem for p in res.figures}
    expected = {"gain_heatmap_m", "per_language_m_xnli", "per_language_m_panx", "family_heatmap_m",
                "resource_curves_m", "task_similarity_vs_gain", "language_similarity_vs_gain", "domain_similarity_vs_gain"}
    assert expected <= names
    for p in res.figures:
        assert p.parent == tmp_path / "rep" / "figures" and png_variance(p) > 50.0, p
        assert f"figures/{p.name}" in md
    assert html.count("data:image/png;base64,") == len(res.figures)
    # the numbers behind the figures, language names, units, flags
    assert "Gain per setup and target" in md and "| German |" in md and "<td>German</td>" in html
    assert "xnli: accuracy on test" in md and "panx: f1 on dev" in md
    assert "Flagged — families with a negative mean gain" in md and "Niger-Congo" in md
    assert "helps high-resource but hurts low-resource" in md
    assert "text_emb" in md and "Vu et al. 2020" in md
    # language without metadata is stated, not a crash
    assert "no metadata for language(s) zz" in md
    # the similarity cache went to the output dir
    cache = json.loads((tmp_path / "analysis" / "similarity_cache.json").read_text())
    assert any(k.startswith("text_emb|") for k in cache)


def test_single_seed_and_missing_baseline_are_stated(tmp_path):
    m, st = frames(seeds=(5,), drop_baseline_for=("panx", 5))
    res = report_from_frames(m, st, tmp_path / "r.html", options=ReportOptions(similarity=False, **FAST))
    md = res.markdown.read_text()
    assert "Only one seed (5)" in md and "single seed" in md
    assert "no matching 'baseline' run" in md and "panx" in md
    assert "Similarity analyses were turned off" in md
    assert {p.stem for p in res.figures} >= {"gain_heatmap_m", "per_language_m_xnli", "family_heatmap_m"}


def test_no_baseline_at_all_and_no_stages(tmp_path):
    m, _ = frames()
    res = report_from_frames(m[m.setup != "baseline"], None, tmp_path / "r.html", options=ReportOptions(**FAST))
    md = res.markdown.read_text()
    assert "no 'baseline' runs" in md and "No gains could be computed" in md
    assert "no stage records" in md
    assert res.figures == []


def test_cli_report_through_the_store(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from xstilts.cli import app

    m, st = frames()

    class FakeStore:
        def close(self):
            pass

        def metrics_frame(self):
            return m

        def stages_frame(self):
            s = st.copy()
            return s

    (tmp_path / "results.sqlite").write_bytes(b"")
    monkeypatch.setattr("xstilts.analysis.store._open_store", lambda d: FakeStore())
    out = tmp_path / "o" / "index.html"
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(out), "--no-similarity", "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    assert out.is_file() and (out.parent / "report.md").is_file() and (out.parent / "figures").is_dir()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "results.sqlite" in missing.output


def test_restrict_to_spec_keeps_only_the_current_plan(tmp_path):
    import pandas as pd
    import yaml

    from xstilts.analysis.report import restrict_to_spec
    from xstilts.experiments import load_spec, plan_stages

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({
        "models": ["e5-small"], "intermediate": {"baseline": None, "anli": {"task": "anli", "split": "dev"}},
        "targets": [{"task": "panx", "languages": ["en", "de"]}], "seeds": [0],
        "max_examples": {"intermediate": 8, "target": 8, "eval": 4},
        "output_dir": str(tmp_path / "out"), "data_dir": str(tmp_path)}))
    plan = plan_stages(load_spec(spec_file))
    ev = plan.of_kind("eval")[0]
    rows = [  # one row of the plan, one of an old (edited-away) stage, one of a setup not in the spec
        {"model": "e5-small", "setup": ev.setup, "target": "panx", "language": "de", "seed": 0, "split": "dev",
         "metric": "f1", "value": 1.0, "stage_id": ev.id},
        {"model": "e5-small", "setup": ev.setup, "target": "panx", "language": "de", "seed": 0, "split": "dev",
         "metric": "f1", "value": 9.0, "stage_id": "0" * 16},
        {"model": "e5-small", "setup": "other", "target": "panx", "language": "de", "seed": 0, "split": "dev",
         "metric": "f1", "value": 5.0, "stage_id": ev.id},
    ]
    metrics = pd.DataFrame(rows)
    stages = pd.DataFrame([{"stage_id": ev.id, "kind": "eval", "setup": ev.setup, "target": "panx"},
                           {"stage_id": "0" * 16, "kind": "eval", "setup": ev.setup, "target": "panx"},
                           {"stage_id": ev.id, "kind": "eval", "setup": ev.setup, "target": "xquad"}])
    m, s = restrict_to_spec(metrics, stages, spec_file)
    assert m["value"].tolist() == [1.0]
    assert s[["stage_id", "target"]].values.tolist() == [[ev.id, "panx"]]


def test_a_note_shared_by_every_row_is_shown_once():
    import pandas as pd

    from xstilts.analysis.render import hoist_common_note

    same = pd.DataFrame({"setup": ["a", "b"], "note": ["single seed (0)", "single seed (0)"]})
    df, common = hoist_common_note(same)
    assert common == "single seed (0)" and "note" not in df
    mixed = pd.DataFrame({"setup": ["a", "b"], "note": ["single seed (0)", ""]})
    df, common = hoist_common_note(mixed)
    assert common is None and "note" in df


def test_sections_are_computed_as_typed_results_then_rendered(tmp_path):
    from xstilts.analysis.render import render_sections, write_report
    from xstilts.analysis.report import compute_report

    m, st = frames()
    opts = ReportOptions(similarity=False, **FAST)
    data = compute_report(m, st, opts)  # no files, no figures drawn
    assert set(data.gains.per_setup["setup"]) == {"anli", "cosmosqa", "commonsenseqa"}
    assert data.families.by_family["family"].isin(["Indo-European", "Niger-Congo"]).any()
    assert data.task_similarity is None and "task-similarity" in data.skipped
    assert data.settings is not None and data.settings.n_unfinished == 0
    sections = render_sections(data, opts)
    assert [s.id for s in sections] == [sid for sid, _ in SECTIONS]
    heatmap = next(f for s in sections for f in s.figures if f.name == "gain_heatmap_m")
    assert "png" not in vars(heatmap)  # drawn only when written
    md, figures = write_report(sections, tmp_path / "r.html", n_metric_rows=len(m), n_stage_rows=len(st))
    assert md.read_text().count("## ") == len(SECTIONS) and (tmp_path / "figures" / "gain_heatmap_m.png") in figures


def test_report_announces_its_phases_for_a_progress_bar(tmp_path):
    m, st = frames(seeds=(5,))
    calls: list[tuple[int, int, str]] = []
    report_from_frames(m, st, tmp_path / "r.html", options=ReportOptions(similarity=False, **FAST),
                       on_phase=lambda done, total, name: calls.append((done, total, name)))
    assert [c[0] for c in calls] == list(range(len(calls))) and len(calls) == calls[0][1] == 6
    assert calls[0][2] == "gains" and calls[-1][2].startswith("writing")
