"""benchmarks/gpu_check.sh in its dry mode (CPU, tiny shape): the GPU check's code path runs in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_one_results_file(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    assert res["dry_run"] is True and res["env"]["device"] == "cpu"
    stage = res["stage"]
    assert stage["ok"] and stage["steps"] == 3 and stage["checkpoints_before_resume"] == ["step-2"]
    assert stage["tensor_devices_after_prepare"] == ["cpu"]
    rows = res["throughput"]
    assert rows and all("error" not in r for r in rows)
    assert all(r["tokens_per_s"] > 0 and r["warmup_steps"] >= 1 and r["host_syncs_per_step"] == 0 for r in rows)
    assert any("scaled_dot_product" in k for k in rows[0]["attention_kernels"])  # the profiled run names its kernel
    assert res["eval"]["examples_per_s"] > 0
    assert "DRY RUN" in md and "MFU basis" in md and "989" in md
