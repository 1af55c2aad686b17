"""One prepared GPU check (run by ``benchmarks/gpu_check.sh``): writes ``gpu_check.json`` and ``gpu_check.md``.

Sections (each recorded even when another fails):

- ``env``: device, torch/CUDA versions, the TF32 and SDPA backend flags.
- ``stage``: a 3-step training stage end to end through xstilts' own ``StageTrainer``: two
  steps, a checkpoint, the trainer dropped (a crash), then ``train_stage`` resumes from the
  checkpoint, trains step 3 and writes the final model; the device of every parameter and
  optimizer tensor after ``prepare`` is checked against the accelerator's device.
- ``throughput``: steady-state training steps of the XLM-R Large shape (24 × 1024, 16 heads,
  FFN 4096, the 250k vocabulary; random weights built from the config, nothing downloaded) at
  length 256 — batch 32 in fp32, TF32 and bf16, and the paper's batch 4 in bf16. Warm-up steps
  are run first and not timed. Reported: tokens/s, MFU, peak GPU memory, host syncs per step
  (``torch.cuda.set_sync_debug_mode("warn")`` warnings counted over the timed steps) and the
  attention kernels that ran (profiler op/kernel names with "attention" / "flash" / "fmha").
- ``eval``: zero-shot inference throughput of the stage's predict path (``models.predict``,
  bf16 cast once), examples/s at length 256.

MFU = model FLOP/s ÷ peak: training FLOPs per token = 6 × non-embedding parameters + 12 × layers
× hidden × length; the peak is the dense bf16 tensor rate, 989 TFLOP/s for H100 SXM / H200
(``gpu_bench.PEAK_BF16``), used as the basis for every precision, so fp32/TF32 MFU says how far
they are from the bf16 ceiling. Goal on an H100/H200: ≥ 45 % MFU at batch 32.

``--dry-run`` runs the same code on the CPU with a tiny shape in well under a minute (CI:
tests/test_gpu_check.py); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from benchmarks.gpu_bench import SHAPES, flops_per_token, peak_bf16

logger = logging.getLogger(__name__)

OUT_DEFAULT = Path(__file__).with_name("gpu_check")
PEAK_BASIS = "dense bf16 tensor peak (H100 SXM / H200: 989 TFLOP/s), the basis for every precision"

REAL: dict[str, Any] = {
    "shape": "xlmr-large", "seq_len": 256, "stage_shape": "xlmr-large", "stage_seq_len": 128, "stage_batch": 8,
    "runs": [  # (batch, precision, warm-up steps, timed steps)
        (32, "bf16", 5, 20), (32, "tf32", 3, 8), (32, "fp32", 2, 4), (4, "bf16", 5, 30)],
    "eval_examples": 2048, "eval_batch": 128, "profile": True,
}
DRY: dict[str, Any] = {
    "shape": "tiny", "seq_len": 16, "stage_shape": "tiny", "stage_seq_len": 16, "stage_batch": 2,
    "runs": [(4, "bf16", 1, 2), (2, "tf32", 1, 1)],  # the GPU run's code path; fp32 differs from tf32 by a flag
    "eval_examples": 32, "eval_batch": 16, "profile": False,  # the first run is profiled anyway
}


# --------------------------------------------------------------------------- building


@lru_cache(maxsize=1)
def xlmr_tokenizer() -> Any:
    """XLM-R's tokenizer from the offline copy shipped with the e5 assets (no download)."""
    import semantra_multilingual
    from transformers import XLMRobertaTokenizerFast

    path = Path(semantra_multilingual.__file__).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"
    return XLMRobertaTokenizerFast(tokenizer_file=str(path))


def build_model_dir(out: Path, shape: str) -> Path:
    """A local encoder directory: random weights of ``shape`` (seed 0) and XLM-R's tokenizer."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    if (out / "config.json").is_file():
        return out
    tok = xlmr_tokenizer()
    torch.manual_seed(0)
    model = XLMRobertaModel(XLMRobertaConfig(vocab_size=len(tok), **SHAPES[shape]), add_pooling_layer=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def pair_task(n: int, seq_len: int, tokenizer: Any, seed: int = 0) -> Any:
    """A sentence-pair task whose every example fills ``seq_len`` tokens (generated words)."""
    import random

    from xstilts.tasks.catalog import TaskSpec
    from xstilts.tasks.types import ClassificationExample
    from xstilts.train import TaskData

    rng = random.Random(seed)
    words = ["house", "river", "green", "talks", "slowly", "under", "bridge", "morning", "city", "light"]

    def side() -> str:
        return " ".join(rng.choice(words) for _ in range(seq_len))  # at least one token a word: truncated to fit

    train = [ClassificationExample(id=str(i), text_a=side(), text_b=side(), label=rng.choice(["0", "1", "2"]))
             for i in range(n)]
    return TaskData(TaskSpec(name="pairs", format="classification", role="both", languages=["en"], splits=["train"],
                             eval_split="train", metric="accuracy", primary_metric="accuracy", label_list=["0", "1", "2"]),
                    train=train)


def train_config(model_dir: Path, *, steps: int, batch: int, seq_len: int, precision: str, save_every: int = 0) -> Any:
    from xstilts.train import TrainConfig

    return TrainConfig(model=str(model_dir), tasks=[{"task": "pairs"}], learning_rate=1e-5, weight_decay=0.01,
                       warmup_ratio=0.1, max_steps=steps, batch_size=batch, max_length=seq_len, max_grad_norm=1.0,
                       seed=0, precision="fp32" if precision == "tf32" else precision, eval_every=0,
                       save_every=save_every, progress=False)


def set_tf32(on: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


# --------------------------------------------------------------------------- sections


def env_section() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": "cuda" if cuda else "cpu", "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor(),
            "peak_bf16_tflops": (peak_bf16(torch.cuda.get_device_name(0)) or 0) / 1e12 if cuda else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "sdp_flash": torch.backends.cuda.flash_sdp_enabled(), "sdp_mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "sdp_math": torch.backends.cuda.math_sdp_enabled()}


def _tensor_devices(trainer: Any) -> set[str]:
    """Devices of every parameter, buffer and optimizer-state tensor of a set-up StageTrainer."""
    import torch

    devs = {str(t.device) for t in [*trainer.prepared.parameters(), *trainer.prepared.buffers()]}
    for state in trainer.optimizer.state_dict()["state"].values():
        devs |= {str(v.device) for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
    return devs


def stage_section(cfg: dict[str, Any], work: Path, precision: str) -> dict[str, Any]:
    """Two steps, a checkpoint, a 'crash', then train_stage resumes and finishes step 3."""
    from xstilts.train import train_stage
    from xstilts.train.engine import StageTrainer

    model_dir = build_model_dir(work / f"model-{cfg['stage_shape']}", cfg["stage_shape"])
    task = pair_task(4 * cfg["stage_batch"], cfg["stage_seq_len"], xlmr_tokenizer())
    tc = train_config(model_dir, steps=3, batch=cfg["stage_batch"], seq_len=cfg["stage_seq_len"], precision=precision,
                      save_every=1)
    out = work / "stage"
    t0 = time.perf_counter()
    trainer = StageTrainer(tc, out, task_data={"pairs": task})
    trainer.setup()
    for _ in range(2):
        trainer.train_step()
    trainer.save_checkpoint()
    devices, expected = _tensor_devices(trainer), str(trainer.device)
    del trainer
    gc.collect()
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    res = train_stage(tc, out, task_data={"pairs": task})
    final = (out / "model").is_dir()
    ok = res.steps == 3 and final and devices <= {expected, f"{expected}:0"} | ({"cuda:0"} if expected == "cuda" else set())
    return {"ok": ok, "steps": res.steps, "checkpoints_before_resume": checkpoints, "final_model": final,
            "tensor_devices_after_prepare": sorted(devices), "accelerator_device": expected,
            "seconds": round(time.perf_counter() - t0, 1), "precision": precision}


def _count_syncs(fn: Callable[[], Any]) -> int:
    """Host-device synchronisations during ``fn()`` (CUDA only; 0 on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        fn()
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def _attention_kernels(trainer: Any) -> list[str]:
    """Names of the attention ops/kernels one training step ran (profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        trainer.train_step()
        _sync()
    keys = ("attention", "flash", "fmha", "sdpa", "scaled_dot_product")
    return sorted({e.key for e in prof.key_averages() if any(k in e.key.lower() for k in keys)})[:12]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _non_embedding_params(trainer: Any) -> int:
    return sum(p.numel() for n, p in trainer.model.encoder.named_parameters() if not n.startswith("embeddings."))


def throughput_run(cfg: dict[str, Any], work: Path, batch: int, precision: str, warm: int, timed: int,
                   profile: bool) -> dict[str, Any]:
    """Steady-state training of the check's shape: ``warm`` untimed steps, then ``timed`` timed ones."""
    import torch

    from xstilts.train.engine import StageTrainer

    model_dir = build_model_dir(work / f"model-{cfg['shape']}", cfg["shape"])
    steps = warm + timed + (1 if profile else 0)
    task = pair_task(batch * steps, cfg["seq_len"], xlmr_tokenizer())
    tc = train_config(model_dir, steps=steps, batch=batch, seq_len=cfg["seq_len"], precision=precision)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = StageTrainer(tc, work / f"tp-{batch}-{precision}", task_data={"pairs": task})
    trainer.setup()
    set_tf32(precision in ("tf32", "bf16"))
    for _ in range(warm):
        trainer.train_step()
    _sync()
    t0 = time.perf_counter()
    syncs = _count_syncs(lambda: [trainer.train_step() for _ in range(timed)])
    _sync()
    seconds = time.perf_counter() - t0
    kernels = _attention_kernels(trainer) if profile else []
    tps = timed * batch * cfg["seq_len"] / seconds
    cfg_model = trainer.model.encoder.config
    fpt = flops_per_token(_non_embedding_params(trainer), cfg_model.num_hidden_layers, cfg_model.hidden_size, cfg["seq_len"])
    peak = peak_bf16(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    row = {"batch": batch, "precision": precision, "seq_len": cfg["seq_len"], "warmup_steps": warm, "timed_steps": timed,
           "step_ms": round(1000 * seconds / timed, 2), "tokens_per_s": round(tps, 1),
           "model_tflops": round(tps * fpt / 1e12, 3), "mfu": round(tps * fpt / peak, 4) if peak else None,
           "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
           "host_syncs_per_step": round(syncs / timed, 2), "attention_kernels": kernels,
           "attn_implementation": getattr(cfg_model, "_attn_implementation", None)}
    del trainer
    gc.collect()
    return row


def eval_section(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Inference throughput of the stage's final model through models.predict (bf16 on a GPU)."""
    import torch

    from xstilts.models import MultiTaskModel
    from xstilts.models.predict import predict
    from xstilts.tasks.formats import FeaturizeOptions, get_format

    model, tok = MultiTaskModel.from_pretrained(work / "stage" / "model", heads=True)
    task = pair_task(cfg["eval_examples"], cfg["seq_len"], tok, seed=1)
    fmt = get_format("classification")
    feats = fmt.featurize(task.train, tok, FeaturizeOptions(max_length=cfg["seq_len"]), ["0", "1", "2"])
    precision = "bf16" if torch.cuda.is_available() else "fp32"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    head = next(iter(model.heads))
    predict(model, head, fmt, feats[: cfg["eval_batch"]], batch_size=cfg["eval_batch"], pad_token_id=tok.pad_token_id,
            device=device, precision=precision)  # warm-up
    _sync()
    t0 = time.perf_counter()
    predict(model, head, fmt, feats, batch_size=cfg["eval_batch"], pad_token_id=tok.pad_token_id, device=device,
            precision=precision)
    _sync()
    seconds = time.perf_counter() - t0
    return {"examples": len(feats), "seq_len": cfg["seq_len"], "batch": cfg["eval_batch"], "precision": precision,
            "model": cfg["stage_shape"], "examples_per_s": round(len(feats) / seconds, 1), "seconds": round(seconds, 2)}


# --------------------------------------------------------------------------- report


def render(results: dict[str, Any]) -> str:
    """The Markdown summary of a results dict."""
    env = results.get("env", {})
    out = [f"device: {env.get('device')} ({env.get('device_name')}); torch {env.get('torch')}, CUDA {env.get('cuda')}; "
           f"{'DRY RUN (CPU, tiny shape: numbers mean nothing)' if results.get('dry_run') else 'full check'}; "
           f"{results.get('seconds', 0):.0f} s.", "", f"MFU basis: {PEAK_BASIS}.", ""]
    st = results.get("stage", {})
    out += [f"Stage end to end (2 steps, checkpoint, crash, resume, step 3, final model): "
            f"{'OK' if st.get('ok') else 'FAILED'} — {json.dumps({k: st.get(k) for k in ('steps', 'checkpoints_before_resume', 'tensor_devices_after_prepare', 'error') if k in st})}", ""]
    out += ["| batch | precision | length | step ms | tokens/s | model TFLOP/s | MFU | peak GPU MB | host syncs/step | attention kernels |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("throughput", []):
        if "error" in r:
            out.append(f"| {r.get('batch')} | {r.get('precision')} | — | error: {r['error'].splitlines()[-1][:120]} | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a"
        out.append(f"| {r['batch']} | {r['precision']} | {r['seq_len']} | {r['step_ms']} | {r['tokens_per_s']:,.0f} | "
                   f"{r['model_tflops']} | {mfu} | {r['peak_gpu_mb']} | {r['host_syncs_per_step']} | "
                   f"{', '.join(r['attention_kernels'][:3]) or '—'} |")
    ev = results.get("eval", {})
    out += ["", f"Zero-shot inference ({ev.get('model')}, {ev.get('precision')}, length {ev.get('seq_len')}, batch "
            f"{ev.get('batch')}): {ev.get('examples_per_s')} examples/s" + (f" — error: {ev['error']}" if "error" in ev else ""), ""]
    return "\n".join(out)


def _guarded(results: dict[str, Any], key: str, fn: Callable[[], Any], save: Callable[[], None]) -> None:
    t0 = time.perf_counter()
    try:
        results[key] = fn()
        if isinstance(results[key], dict):
            results[key]["section_seconds"] = round(time.perf_counter() - t0, 1)
    except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
        logger.exception("gpu_check: %s failed", key)
        results[key] = {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"}
    save()


def run_check(out: Path, dry_run: bool = False) -> dict[str, Any]:
    """Run every section, writing ``gpu_check.json`` / ``gpu_check.md`` into ``out`` after each."""
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch (use --dry-run for the CPU machinery check)")
    cfg = DRY if dry_run else REAL
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"dry_run": dry_run, "config": {k: v for k, v in cfg.items()}, "throughput": []}

    def save() -> None:
        results["seconds"] = time.perf_counter() - started
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "gpu_check.md").write_text(render(results))

    with tempfile.TemporaryDirectory(prefix="xstilts-gpucheck-") as d:
        work = Path(d)
        _guarded(results, "env", env_section, save)
        _guarded(results, "stage", lambda: stage_section(cfg, work, "bf16" if torch.cuda.is_available() else "fp32"), save)
        for batch, precision, warm, timed in cfg["runs"]:
            row: dict[str, Any] = {}
            profile = cfg["profile"] or not results["throughput"]
            _guarded(row, "r", lambda: throughput_run(cfg, work, batch, precision, warm, timed, profile), lambda: None)
            results["throughput"].append(row["r"] if "error" not in row["r"] else {"batch": batch, "precision": precision, **row["r"]})
            save()
        _guarded(results, "eval", lambda: eval_section(cfg, work), save)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shape: checks the machinery (CI)")
    ap.add_argument("--out", default=str(OUT_DEFAULT), help="folder for gpu_check.json and gpu_check.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = run_check(Path(args.out), dry_run=args.dry_run)
    print(render(results))
    failed = [k for k in ("env", "stage", "eval") if "error" in results.get(k, {})]
    failed += [f"throughput {r['batch']}/{r['precision']}" for r in results["throughput"] if "error" in r]
    if not results.get("stage", {}).get("ok"):
        failed.append("stage (not ok)")
    print(f"wrote {Path(args.out) / 'gpu_check.json'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
