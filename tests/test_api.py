"""The Python API for notebooks: ``import xstilts`` stays light, and the README's example runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xstilts
from xstilts.tasks.catalog import CATALOG_ENV, reset_catalog

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python example"
    return match.group(1)


def test_import_is_light_and_lazy() -> None:
    code = ("import sys, xstilts; heavy = [m for m in ('torch', 'transformers', 'pandas', 'datasets') if m in sys.modules];"
            "assert not heavy, heavy; print(sorted(xstilts.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("load_spec", "plan", "run", "results", "zero_shot_eval", "load_examples", "load_catalog",
                 "register_task", "use_catalogs", "rescore", "get_task", "list_tasks"):
        assert name in out.stdout and callable(getattr(xstilts, name)), name
    assert "load_spec" in dir(xstilts)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        xstilts.nope  # noqa: B018


def test_readme_example_runs(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README example on a copy of docs/byod whose spec names a tiny model instead of e5-small."""
    shutil.copytree(REPO / "docs" / "byod", tmp_path / "docs" / "byod", ignore=shutil.ignore_patterns("runs"))
    spec = tmp_path / "docs" / "byod" / "spec.yaml"
    text = spec.read_text(encoding="utf-8")
    assert "models: [e5-small]" in text
    spec.write_text(text.replace("models: [e5-small]", f"models: [{tiny_model_dir}]")
                    .replace("max_length: 64", "max_length: 32").replace("max_steps: 30", "max_steps: 3"),
                    encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CATALOG_ENV, raising=False)
    reset_catalog()
    try:
        scope: dict = {}
        exec(compile(readme_example(), "README.md (Python API)", "exec"), scope)  # noqa: S102
    finally:
        monkeypatch.delenv(CATALOG_ENV, raising=False)
        reset_catalog()
    df = scope["df"]
    assert set(df["target"]) == {"my_nli_lb"} and set(df["language"]) == {"lb"} and set(df["setup"]) == {"baseline"}
    assert (tmp_path / "runs" / "byod" / "spec" / "results.sqlite").is_file()
    assert set(scope["report"].per_language) == {"lb"} and scope["examples"][0].id == "lb-001"


def test_results_errors_and_plan_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xstilts.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="no results.sqlite"):
        xstilts.results(tmp_path)
    reset_catalog()
    try:
        plan = xstilts.plan(REPO / "docs" / "byod" / "spec.yaml", overrides={"output_dir": str(tmp_path / "o")})
        assert plan.output_dir == tmp_path / "o" and {s.kind for s in plan.stages.values()} == {"target", "eval"}
    finally:
        monkeypatch.delenv(CATALOG_ENV, raising=False)
        reset_catalog()


@pytest.mark.parametrize("module", ["xstilts.experiments.spec", "xstilts.train", "xstilts.analysis"])
def test_spec_train_config_and_analysis_imports_leave_torch_unloaded(module: str) -> None:
    """A spec is read and checked, and analysis imported, without loading torch (~5 s)."""
    code = (f"import sys, {module}; import xstilts.train as t; t.TrainConfig;"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
