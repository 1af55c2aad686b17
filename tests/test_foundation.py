"""Foundation: package, CLI entry points, paths."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from xstilts import paths
from xstilts.cli import app


def test_cli_help_and_version():
    runner = CliRunner()
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "version" in res.output
    res = runner.invoke(app, ["version"])
    assert res.exit_code == 0
    assert "xstilts" in res.output and "torch" in res.output


def test_cache_dir_respects_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("XSTILTS_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.xstilts_home() == tmp_path / "xdg" / "xstilts"
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))
    assert paths.xstilts_home() == tmp_path / "home"
    assert paths.models_dir() == tmp_path / "home" / "models"


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("XSTILTS_DATA_DIR", str(tmp_path))
    assert paths.resolve_data_dir(None) == tmp_path
    assert paths.resolve_data_dir(tmp_path / "x") == (tmp_path / "x").resolve()


def test_tiny_model_dir_loads(tiny_model_dir: Path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = tok(["Hallo Welt", "你好世界"], padding=True, return_tensors="pt")
    out = model(**enc)
    assert out.last_hidden_state.shape[-1] == 32
