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


def test_full_disk_is_one_clear_error_not_a_traceback(capsys):
    import errno

    import pytest
    import typer

    from xstilts.cli._app import handle_errors

    @handle_errors
    def writes_to_a_full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/models/e5-small/model.safetensors")

    @handle_errors
    def library_error_carrying_enospc() -> None:  # e.g. safetensors' SafetensorError
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    @handle_errors
    def other_bug() -> None:
        raise RuntimeError("a real bug")

    for fn in (writes_to_a_full_disk, library_error_carrying_enospc):
        with pytest.raises(typer.Exit) as exc:
            fn()
        assert exc.value.exit_code == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "error: no space left on device" in err and "XSTILTS_HOME" in err
    with pytest.raises(RuntimeError, match="a real bug"):
        other_bug()
