"""Run the benchmark suite and write ``benchmarks/results.json`` + ``benchmarks/RESULTS.md``.

    python -m benchmarks.run                 # default mode: e5-small on CPU, about an hour on 2 idle cores
    python -m benchmarks.run --mode quick    # a tiny model, a minute or two: checks the machinery
    python -m benchmarks.run --mode full     # more data and repetitions, every Tatoeba pair
    python -m benchmarks.run --only train,eval
    python -m benchmarks.run --only store    # results-store claim time, 10k and 50k stages, 16 workers

Every comparison is a ratio measured side by side in this run (alternating sides, several
repetitions, median and range); see ``benchmarks/common.py``. GPU rows are filled only when
a GPU is present; they are never estimated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, interleaved, machine_info, run_side

#: training rows: xstilts (compact vocabulary on) vs Trainer; compact off vs Trainer (what the
#: compact vocabulary is worth); compact on vs a Trainer given the same trimmed vocabulary and
#: xstilts's batch order (what is left: the loop itself). Each variant overrides the config.
TRAIN_VARIANTS: list[dict[str, Any]] = [
    {},
    {"compact_vocab": False, "label": "compact off"},
    {"trimmed": True, "label": "vs Trainer with trimmed vocabulary + xstilts batch order"},
]

#: eval row: the baseline given the malloc settings xstilts applies on the CPU
#: (``models/cpu_memory.py``), from its process's start: what the settings are worth to anyone;
#: fp32 only (bf16 activations are half as large and hardly fault: 0.67M faults either way)
EVAL_MALLOC_VARIANT: dict[str, Any] = {"baseline_malloc": True, "precisions": ["fp32"],
                                       "label": "20 examples per language, vs baseline with xstilts's malloc settings"}

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "store": {"sizes": [2000], "workers": 4, "seconds": 1.0},
        "train": {"model": "tiny", "n_train": 256, "n_dev": 100, "batch_size": 16, "max_length": 128, "lr": 1e-3, "seed": 0,
                  "precisions": ["fp32"], "reps": 2, "variants": TRAIN_VARIANTS},
        "eval": {"model": "e5-small", "max_examples": 20, "batch_size": 32, "reps": 1},
        "retrieval": {"model": "e5-small", "max_examples": 20, "batch_size": 128},
        "gpu": {"shape": "tiny", "seq_lens": [64], "batch_size": 8, "steps": 6, "reps": 1, "allow_cpu": True},
    },
    "default": {
        "store": {"sizes": [10000, 50000], "workers": 16, "seconds": 3.0},
        # 3 training repetitions: a median that one slow process cannot move (a shared 2-core
        # machine sometimes runs a whole process ~30 % slower: 51.8 vs 69-73 examples/s, same job)
        "train": {"model": "e5-small", "n_train": 1000, "n_dev": 200, "batch_size": 16, "max_length": 128, "lr": 2e-4, "seed": 0,
                  "precisions": ["bf16", "fp32"], "reps": 3, "variants": TRAIN_VARIANTS},
        "eval": {"model": "e5-small", "max_examples": 20, "batch_size": 32, "reps": 2, "precisions": ["fp32", "bf16"],
                 "variants": [{}, {"max_examples": 300, "reps": 1}, EVAL_MALLOC_VARIANT]},
        "retrieval": {"model": "e5-small", "max_examples": 50, "batch_size": 128},
        "gpu": {"shape": "xlmr-large", "seq_lens": [128, 256], "batch_size": 32, "steps": 60, "reps": 2},
    },
    "full": {
        "store": {"sizes": [10000, 50000], "workers": 16, "seconds": 10.0},
        "train": {"model": "e5-small", "n_train": 1000, "n_dev": 1000, "batch_size": 16, "max_length": 128, "lr": 2e-4, "seed": 0,
                  "precisions": ["bf16", "fp32"], "reps": 5, "variants": TRAIN_VARIANTS},
        "eval": {"model": "e5-small", "max_examples": 300, "batch_size": 32, "reps": 5, "precisions": ["fp32", "bf16"],
                 "variants": [{"max_examples": 20}, {}, {**EVAL_MALLOC_VARIANT, "max_examples": 20}]},
        "retrieval": {"model": "e5-small", "max_examples": None, "batch_size": 128},
        "gpu": {"shape": "xlmr-large", "seq_lens": [128, 256], "batch_size": 32, "steps": 200, "reps": 3},
    },
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _per_precision(bench: str, cfg: dict[str, Any], data_dir: str | None, what: str, name: str,
                   vary_seed: bool = False) -> list[dict[str, Any]]:
    """One interleaved comparison per precision in ``cfg["precisions"]`` and variant in
    ``cfg["variants"]`` (config overrides; ``label`` names the row, ``reps`` its repetitions,
    ``precisions`` limits it to those of the mode's precisions)."""
    rows = []
    for variant in cfg.get("variants", [{}]):
        for precision in cfg.get("precisions", ["fp32"]):
            if precision not in variant.get("precisions", [precision]):
                log(f"{bench}: {variant.get('label', variant)} only in {', '.join(variant['precisions'])}: not in {precision}")
                continue
            conf = {k: v for k, v in cfg.items() if k not in ("precisions", "reps", "variants")} | {
                k: v for k, v in variant.items() if k not in ("label", "reps", "precisions")} | {
                "precision": precision, "data_dir": data_dir}
            label = variant.get("label") or what.format(**conf)
            log(f"{bench}: {conf['model']} {precision}, {label}")
            comp = interleaved(bench, conf, variant.get("reps", cfg["reps"]), "examples_per_s",
                               name=f"{name} {conf['model']} {precision}, {label} (CPU)", log=log, vary_seed=vary_seed)
            rows.append(comp.summary() | {"settings": conf, "variant": variant.get("label", "")})
    return rows


def bench_train(cfg: dict[str, Any], data_dir: str | None) -> list[dict[str, Any]]:
    return _per_precision("train", cfg, data_dir, "{n_train} PAN-X en sentences, batch {batch_size}", "train",
                          vary_seed=True)


def bench_eval(cfg: dict[str, Any], data_dir: str | None) -> list[dict[str, Any]]:
    return _per_precision("eval", cfg, data_dir, "{max_examples} examples per language", "zero-shot eval")


def bench_retrieval(cfg: dict[str, Any], data_dir: str | None) -> list[dict[str, Any]]:
    conf = dict(cfg) | {"data_dir": data_dir}
    log(f"retrieval: Tatoeba, every language, {conf['max_examples'] or 'all'} pairs each")
    res = run_side("retrieval", "ours", conf)
    log(f"  {res['languages']} languages, {res['sentences_per_s']:.0f} sentences/s, accuracy {res['average_accuracy']:.1f}")
    return [{"name": "tatoeba retrieval e5-small (CPU)", "settings": conf, "result": res}]


def bench_gpu(cfg: dict[str, Any], data_dir: str | None) -> list[dict[str, Any]]:
    import tempfile

    import torch

    from benchmarks.gpu_bench import build_model_dir

    if not torch.cuda.is_available() and not cfg.get("allow_cpu"):
        log("gpu: no GPU visible to torch: rows left empty, not estimated")
        return [{"name": "gpu", "skipped": "no GPU was available to this run"}]
    rows = []
    with tempfile.TemporaryDirectory(prefix="xstilts-gpubench-") as d:
        model_dir = build_model_dir(Path(d) / cfg["shape"], cfg["shape"])
        for seq_len in cfg["seq_lens"]:
            conf = {k: v for k, v in cfg.items() if k not in ("seq_lens", "reps", "allow_cpu")} | {
                "seq_len": seq_len, "n_train": cfg["batch_size"] * cfg["steps"], "model_dir": str(model_dir),
                "data_dir": data_dir, "precision": "bf16"}
            where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (machinery check only)"
            log(f"gpu: {cfg['shape']} bf16, length {seq_len}, batch {cfg['batch_size']}, {cfg['steps']} steps on {where}")
            comp = interleaved("gpu", conf, cfg["reps"], "tokens_per_s", name=f"train {cfg['shape']} bf16 len {seq_len}", log=log)
            rows.append(comp.summary() | {"settings": {k: v for k, v in conf.items() if k != "model_dir"}, "device": where})
    return rows


def bench_store(cfg: dict[str, Any], data_dir: str | None) -> list[dict[str, Any]]:
    from benchmarks.store_bench import store_rows

    log(f"store: claim time, {cfg['workers']} worker processes, {cfg['sizes']} stages")
    return store_rows(cfg["sizes"], cfg["workers"], seconds=cfg["seconds"], log=log)


def bench_grid(cfg: dict[str, Any], data_dir: str | None) -> list[dict[str, Any]]:
    from benchmarks.grid_bench import grid_costs

    log("grid: plan sharing and tokenisation cache")
    return grid_costs(data_dir)


def write_markdown(results: dict[str, Any], path: Path) -> None:
    from benchmarks.report import render_markdown

    path.write_text(render_markdown(results))


def with_precisions(mode: dict[str, dict[str, Any]], precisions: str) -> dict[str, dict[str, Any]]:
    """``mode`` with every comparison that runs per precision (train, eval) run in ``precisions``
    (a comma list of fp32 / bf16) instead; ValueError for anything else."""
    chosen = [p.strip() for p in precisions.split(",") if p.strip()]
    bad = [p for p in chosen if p not in ("fp32", "bf16")]
    if not chosen or bad:
        raise ValueError(f"--precisions takes fp32 and/or bf16 (comma-separated), got {precisions!r}")
    return {name: cfg | {"precisions": chosen} if "precisions" in cfg else cfg for name, cfg in mode.items()}


def _warn_emulated_bf16(mode: dict[str, dict[str, Any]]) -> None:
    import torch

    from xstilts.models.predict import cpu_has_bf16_instructions

    wants = any("bf16" in cfg.get("precisions", []) for cfg in mode.values())
    if wants and not torch.cuda.is_available() and not cpu_has_bf16_instructions():
        log("warning: this CPU has no bf16 instructions (AVX512-BF16/AMX): the bf16 rows compare two emulated "
            "paths and take several times as long as fp32; --precisions fp32 skips them")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="default")
    ap.add_argument("--only", default="train,eval,retrieval,grid,gpu,store",
                    help="comma-separated subset of train,eval,retrieval,grid,gpu,store")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks"), help="folder for results.json and RESULTS.md")
    ap.add_argument("--merge", action="store_true", help="keep the other benchmarks' entries of an existing results.json")
    ap.add_argument("--precisions", default=None,
                    help="comma-separated precisions of the train and eval comparisons (default: the mode's, "
                         "fp32,bf16); fp32 alone on a CPU without bf16 instructions, where bf16 is emulated (hours)")
    args = ap.parse_args(argv)
    from xstilts.paths import resolve_data_dir

    data_dir = str(resolve_data_dir(args.data_dir)) if resolve_data_dir(args.data_dir) else None
    mode = MODES[args.mode]
    if args.precisions is not None:
        try:
            mode = with_precisions(mode, args.precisions)
        except ValueError as exc:
            ap.error(str(exc))
    _warn_emulated_bf16(mode)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    started = time.time()
    results: dict[str, Any] = {
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": args.mode,
        "machine": machine_info(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
        "benchmarks": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge and (out / "results.json").is_file():
        previous = json.loads((out / "results.json").read_text())
        results["benchmarks"] = {k: v for k, v in previous.get("benchmarks", {}).items() if k not in only}
        results["command"] = previous.get("command", "") + " ; " + results["command"]
        results["started"] = previous.get("started", results["started"])
        prev_total = float(previous.get("total_seconds", 0.0))
    else:
        prev_total = 0.0

    def save() -> None:
        results["total_seconds"] = prev_total + time.time() - started
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        write_markdown(results, out / "RESULTS.md")

    fns = {"train": bench_train, "eval": bench_eval, "retrieval": bench_retrieval, "grid": bench_grid, "gpu": bench_gpu,
           "store": bench_store}
    for name in only:
        if name not in fns:
            ap.error(f"unknown benchmark {name!r}; choose from {', '.join(fns)}")
        t0 = time.time()
        results["benchmarks"][name] = fns[name](mode.get(name, {}), data_dir)
        log(f"{name}: {time.time() - t0:.0f}s")
        save()  # after every benchmark: a later failure loses nothing measured
    log(f"wrote {out / 'results.json'} and {out / 'RESULTS.md'} in {results['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
