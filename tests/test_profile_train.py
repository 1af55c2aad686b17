"""``benchmarks/profile_train.py``: operator groups of each side's training loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.profile_train import _group, main


def test_operators_fall_into_their_groups() -> None:
    assert _group("aten::mm") == "matrix products"
    assert _group("aten::addmm") == "matrix products"
    assert _group("aten::bernoulli_") == "dropout masks (RNG)"
    assert _group("aten::_fused_adamw_") == "optimizer"
    assert _group("aten::copy_") == "dtype casts and copies"
    assert _group("aten::embedding_dense_backward") == "embedding"
    assert _group("aten::view") == "other"


def test_profiles_both_loops_on_the_tiny_model(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "prof.json"
    assert main(["--model", "tiny", "--n-train", "48", "--precision", "fp32", "--data-dir", str(shared_data),
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ours: 3 steps" in text and "trainer: 3 steps" in text
    prof = json.loads(out.read_text())
    for side in ("ours", "trainer"):
        groups = prof[side]["groups"]
        # the loop ran forward and backward passes and optimizer steps, and nothing is counted twice
        assert groups["matrix products"] > 0 and groups["optimizer"] > 0
        assert sum(groups.values()) == pytest.approx(prof[side]["total_ms"])
