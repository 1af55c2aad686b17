"""Bad spec files fail with one clear ConfigError from `xstilts run` (exit 2, no traceback)
before anything is planned, stored or trained (issue 18, item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xstilts.cli import app
from xstilts.errors import ConfigError
from xstilts.experiments import load_spec

REPO = Path(__file__).resolve().parents[1]

SPEC = """\
models: [e5-small]
intermediate:
  baseline: none
targets:
  - {task: panx, languages: [en, de]}
  - {task: xnli, languages: [en, fr]}
seeds: [0]
max_examples: {target: 10, eval: 10}
data_dir: data
output_dir: out
"""


def write_spec(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "spec.yaml"
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def assert_clean_failure(tmp_path: Path, spec: Path, *expected: str) -> str:
    """`xstilts run SPEC --dry-run` and `xstilts run SPEC` exit 2 with one message naming the file."""
    for extra in (["--dry-run"], []):
        code, out = run_cli("run", str(spec), *extra)
        assert code == 2, out
        assert "Traceback" not in out and "error:" in out, out
        flat = " ".join(out.split())  # rich wraps long lines
        assert "spec.yaml" in flat, out
        for text in expected:
            assert text in flat, (text, out)
    # nothing was created: no store, no stage directory
    assert not (tmp_path / "out" / "results.sqlite").exists() and not (tmp_path / "out" / "stages").exists()
    return flat


def test_good_spec_dry_runs(tmp_path: Path) -> None:
    code, out = run_cli("run", str(write_spec(tmp_path, SPEC)), "--dry-run")
    assert code == 0, out


def test_non_utf8_byte(tmp_path: Path) -> None:
    # a Latin-1 "é" in a comment on line 3
    data = SPEC.replace("  baseline: none\n", "  baseline: none  # r\xe9sum\xe9\n").encode("latin-1")
    offset = data.index(b"\xe9")
    assert_clean_failure(tmp_path, write_spec(tmp_path, data), "not UTF-8", f"byte offset {offset}", "line 3")
    # a UTF-8 BOM is fine
    assert load_spec(write_spec(tmp_path, b"\xef\xbb\xbf" + SPEC.encode()), validate=False).targets[0].task == "panx"


def test_output_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a directory")
    assert_clean_failure(tmp_path, write_spec(tmp_path, SPEC), "output_dir", "is a file")
    # a file further up is caught too
    spec = write_spec(tmp_path, SPEC.replace("output_dir: out", "output_dir: out/run1"))
    code, out = run_cli("run", str(spec), "--dry-run")
    assert code == 2 and "Traceback" not in out and "which is a file" in " ".join(out.split()), out


def test_duplicate_key_names_key_and_both_lines(tmp_path: Path) -> None:
    text = SPEC + "targets:\n  - {task: panx}\n"
    flat = assert_clean_failure(tmp_path, write_spec(tmp_path, text), "key 'targets'", "lines 4 and 11")
    assert "given twice" in flat
    twice = "hyperparameters:\n  target: {learning_rate: 1.0e-5, learning_rate: 2.0e-5}"
    nested = SPEC.replace("seeds: [0]", "seeds: [0]\n" + twice)
    assert_clean_failure(tmp_path, write_spec(tmp_path, nested), "key 'learning_rate'", "lines 9 and 9")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = SPEC.replace("seeds: [0]", "seeds: [0")
    assert_clean_failure(tmp_path, write_spec(tmp_path, text), "invalid YAML", "line ")


def test_duplicate_key_in_an_included_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("seeds: [0]\nseeds: [1]\n")
    spec = write_spec(tmp_path, "include: base.yaml\n" + SPEC)
    with pytest.raises(ConfigError, match=r"base\.yaml.*'seeds'.*lines 1 and 2"):
        load_spec(spec)


def test_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC.encode() + b"description: caf\xe9\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "xstilts", "run", str(spec), "--dry-run"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "UnicodeDecodeError" not in proc.stderr
    assert "not UTF-8" in " ".join(proc.stderr.split())
