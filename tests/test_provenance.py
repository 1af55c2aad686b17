"""Provenance with every result (DONE, metrics.json, stage.json) and the disk a finished stage keeps."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_support import stage_config, synthetic
from xstilts.provenance import PACKAGES, git_state, provenance
from xstilts.train import checkpoint as ckpt
from xstilts.train import train_stage

REPO = Path(__file__).resolve().parents[1]


class Killed(BaseException):
    """Stands for a SIGKILL: nothing in xstilts catches it."""


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))


def _check_record(rec: dict) -> None:
    assert set(rec["packages"]) == set(PACKAGES) and rec["packages"]["torch"] and rec["packages"]["xstilts"]
    assert rec["python"].count(".") == 2 and rec["device"]["type"] in ("cpu", "cuda", "mps")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # run from the checkout: a commit of it (HEAD may have moved since it was read)
        commit = rec["git"]["commit"]
        assert len(commit) == 40 and isinstance(rec["git"]["dirty"], bool)
        is_commit = subprocess.run(["git", "cat-file", "-t", commit], cwd=REPO, capture_output=True, text=True)
        assert is_commit.stdout.strip() == "commit"


def test_provenance_record(tmp_path):
    rec = provenance(config={"a": Path("/x"), "b": 1})
    _check_record(rec)
    assert rec["config"] == {"a": "/x", "b": 1} and "created_at" in rec
    assert "config" not in provenance()
    assert git_state.__wrapped__(str(tmp_path)) is None  # not a checkout: no commit
    json.dumps(rec)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return dict(load_file(str(model_dir / "encoder" / "model.safetensors")))


def test_finished_stage_records_provenance_and_drops_checkpoints(tiny_model_dir, tmp_path):
    cfg = stage_config(tiny_model_dir, max_steps=6, save_every=2, eval_every=3, final_model="best")
    out = tmp_path / "stage"
    result = train_stage(cfg, out, task_data=synthetic("copycls"))
    done = json.loads((out / "DONE").read_text())
    _check_record(done["provenance"])
    assert done["provenance"]["config"] == cfg.model_dump(mode="json") == done["config"]
    # finished: model/ and DONE stay, checkpoints (optimizer state, RNG, step models, best/) are gone
    assert not (out / "checkpoints").exists() and not list(out.glob(".trash-*"))
    assert (out / "model" / "heads.safetensors").is_file() and _weights(result.model_dir)
    again = train_stage(cfg, out, task_data=synthetic("copycls"))
    assert again.skipped and again.steps == 6  # still recognised as finished
    # keep_checkpoints is operational: same identity, and it keeps them
    kept = stage_config(tiny_model_dir, max_steps=6, save_every=2, eval_every=3, final_model="best",
                        keep_checkpoints=True)
    assert kept.hash() == cfg.hash()
    train_stage(kept, tmp_path / "kept", task_data=synthetic("copycls"))
    kept_ckpts = tmp_path / "kept" / "checkpoints"
    assert (kept_ckpts / "step-6").is_dir() and (kept_ckpts / "best").is_dir()
    # a kill between DONE and the removal leaves checkpoints: the next call removes them
    (out / "checkpoints" / "step-6").mkdir(parents=True)
    assert train_stage(cfg, out, task_data=synthetic("copycls")).skipped and not (out / "checkpoints").exists()


def test_an_interrupted_stage_keeps_its_checkpoints_and_resumes_exactly(tiny_model_dir, tmp_path, monkeypatch):
    cfg = stage_config(tiny_model_dir, max_steps=8, save_every=2, keep_last=2)
    ref = train_stage(cfg, tmp_path / "ref", task_data=synthetic("copycls"))
    real = ckpt.prune_checkpoints

    def prune(directory: Path, keep_last: int) -> None:
        real(directory, keep_last)
        if (directory / "step-4").is_dir():
            raise Killed

    out = tmp_path / "killed"
    with monkeypatch.context() as mp, pytest.raises(Killed):
        mp.setattr(ckpt, "prune_checkpoints", prune)
        train_stage(cfg, out, task_data=synthetic("copycls"))
    assert (out / "checkpoints" / "step-4").is_dir() and not (out / "DONE").exists()
    resumed = train_stage(cfg, out, task_data=synthetic("copycls"))
    assert not resumed.skipped and resumed.steps == 8 and not (out / "checkpoints").exists()
    w_ref, w_res = _weights(ref.model_dir), _weights(resumed.model_dir)
    assert all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)


def test_metrics_json_and_stage_json_carry_provenance(tiny_model_dir, tmp_path):
    from tests.test_evaluate import _tatoeba_dir
    from tests.test_runner import RecordingExecutor, make_plan
    from xstilts.evaluate import rescore, zero_shot_eval
    from xstilts.experiments import run_local

    out = tmp_path / "eval"
    rep = zero_shot_eval(str(tiny_model_dir), "tatoeba", "de", data_dir=_tatoeba_dir(tmp_path / "data"), out_dir=out,
                         batch_size=2, device="cpu")
    saved = json.loads((out / "metrics.json").read_text())
    _check_record(saved["provenance"])
    assert saved["provenance"]["config"]["task"] == "tatoeba" == rep.provenance["config"]["task"]
    assert saved["provenance"]["device"]["type"] == "cpu"
    assert rescore(out, write=True).provenance == saved["provenance"]  # rescoring keeps where the predictions came from

    plan = make_plan(tmp_path)
    run_local(plan, executor=RecordingExecutor(tmp_path / "rec"))
    stage_files = list((plan.output_dir / "stages").glob("*/stage.json"))
    assert len(stage_files) == len(plan.stages)
    for f in stage_files[:3]:
        data = json.loads(f.read_text())
        _check_record(data["provenance"])
        assert data["provenance"]["config"] == data["settings"]
