"""write_json_atomic: the one crash-safe JSON writer (checkpoints, DONE, a stage's identity and outcome)."""

from __future__ import annotations

import json

import pytest

from xstilts.fileio import write_json_atomic


def test_writes_sorted_json_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "OUTCOME.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')
    write_json_atomic(path, {"c": tmp_path})  # a value JSON cannot hold is written with str
    assert json.loads(path.read_text()) == {"c": str(tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == ["OUTCOME.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "stage.json"
    write_json_atomic(path, {"ok": True})
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError):
        write_json_atomic(path, loop)  # fails half-way through serialising
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["stage.json"]
