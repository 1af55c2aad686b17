"""Render ``results.json`` as the Markdown table in ``benchmarks/RESULTS.md``."""

from __future__ import annotations

from typing import Any


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _med(side: dict[str, Any], key: str, nd: int = 1) -> str:
    s = side.get(key)
    if not s:
        return "—"
    return f"{s['median']:.{nd}f} ({s['min']:.{nd}f}–{s['max']:.{nd}f})"


def _ratio(row: dict[str, Any]) -> str:
    return f"**{_fmt(row['ratio_median'])}×** ({_fmt(row['ratio_min'])}–{_fmt(row['ratio_max'])})"


def _pct(side: dict[str, Any]) -> str:
    v = side.get("mfu", {}).get("median") if isinstance(side.get("mfu"), dict) else None
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else "n/a"


def _scores(ours: dict[str, Any], base: dict[str, Any], key: str) -> str:
    """``a / b`` of a score both sides report (median), ``≠`` marked when they differ beyond 0.01."""
    a, b = (ours.get(key) or {}).get("median"), (base.get(key) or {}).get("median")
    if a is None or b is None:
        return "—"
    return f"{a:.2f} / {b:.2f}" + ("" if abs(a - b) <= 0.01 else " ≠")


def _padding_bound(base: dict[str, Any]) -> str:
    """``bound× (a % → b % real)`` from the baseline side's token counts (— when not recorded)."""
    real, padded, sort = (((base.get(k) or {}).get("median")) for k in ("tokens", "padded_tokens", "sorted_padded_tokens"))
    if not real or not padded or not sort:
        return "—"
    return f"{padded / sort:.2f}× ({100 * real / padded:.0f} % → {100 * real / sort:.0f} % real)"


def render_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        "# Benchmark results",
        "",
        f"Made by `{results['command'].strip()}` (mode `{results['mode']}`) on {results['started']} UTC, "
        f"{results.get('total_seconds', 0) / 60:.1f} min in all.",
        "",
        f"Machine: {m.get('cpu') or 'CPU'} ({m.get('cpu_count')} cores, bf16 instructions: {m.get('cpu_bf16')}), "
        f"GPU: {m.get('cuda') or 'none'}; python {m.get('python')}, torch {m.get('torch')}, transformers {m.get('transformers')}, "
        f"datasets {m.get('datasets')}, accelerate {m.get('accelerate')}.",
        "",
        "Ratios are xstilts ÷ baseline, computed per repetition pair (the two sides alternate, each in a fresh "
        "process); the median is shown with the range over repetitions. Absolute numbers are medians (min–max).",
        "",
    ]
    b = results["benchmarks"]
    if "train" in b:
        out += ["## Training throughput (one target stage, PAN-X English NER)", "",
                "| setting | ratio (median, range) | xstilts examples/s | Trainer examples/s | xstilts tokens/s | Trainer tokens/s | dev F1 xstilts | dev F1 Trainer | peak RSS MB xstilts | peak RSS MB Trainer |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in b["train"]:
            o, t = r["ours"], r["baseline"]
            out.append(f"| {r['name']} | {_ratio(r)} | "
                       f"{_med(o, 'examples_per_s')} | {_med(t, 'examples_per_s')} | {_med(o, 'tokens_per_s', 0)} | {_med(t, 'tokens_per_s', 0)} | "
                       f"{_med(o, 'dev_f1')} | {_med(t, 'dev_f1')} | {_med(o, 'peak_rss_mb', 0)} | {_med(t, 'peak_rss_mb', 0)} |")
        s = b["train"][0]["settings"]
        out += ["", f"Settings: model {s['model']}, {s['n_train']} training sentences (1 epoch), batch {s['batch_size']}, "
                f"max length {s['max_length']}, lr {s['lr']}, AdamW wd 0.01, warm-up 10 %, dev = first {s['n_dev']} PAN-X en dev sentences.",
                ""]
    gpu = b.get("gpu")
    out += ["## GPU training (XLM-R Large shape, random weights, bf16; vs Trainer; MFU)", ""]
    if not gpu or gpu[0].get("skipped"):
        out += [f"{(gpu or [{}])[0].get('skipped', 'not run')}: rows left empty, not estimated.", ""]
    else:
        out += [f"Device: {gpu[0].get('device')}.", "",
                "| setting | ratio tokens/s (median, range) | xstilts tokens/s | Trainer tokens/s | xstilts MFU | Trainer MFU | xstilts model TFLOP/s | peak GPU MB xstilts | peak GPU MB Trainer |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in gpu:
            o, t = r["ours"], r["baseline"]
            out.append(f"| {r['name']} | {_ratio(r)} | "
                       f"{_med(o, 'tokens_per_s', 0)} | {_med(t, 'tokens_per_s', 0)} | {_pct(o)} | {_pct(t)} | "
                       f"{_med(o, 'model_tflops')} | {_med(o, 'peak_gpu_mb', 0)} | {_med(t, 'peak_gpu_mb', 0)} |")
        s = gpu[0]["settings"]
        out += ["", f"Settings: batch {s['batch_size']}, {s['steps']} steps, every sequence exactly its length; MFU = "
                "(6 × non-embedding parameters + 12 × layers × hidden × length) × tokens/s ÷ the device's peak dense bf16 FLOP/s "
                "(`benchmarks/gpu_bench.py`; n/a for a device not in its table).", ""]
    if "eval" in b:
        out += ["## Zero-shot evaluation throughput (XQuAD + PAN-X, every local language)", "",
                "| setting | ratio (median, range) | padding bound | xstilts examples/s | baseline examples/s | XQuAD F1 xstilts / baseline | PAN-X F1 xstilts / baseline | peak RSS MB xstilts | peak RSS MB baseline |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in b["eval"]:
            o, t = r["ours"], r["baseline"]
            out.append(f"| {r['name']} | {_ratio(r)} | {_padding_bound(t)} | "
                       f"{_med(o, 'examples_per_s')} | {_med(t, 'examples_per_s')} | {_scores(o, t, 'score_xquad')} | "
                       f"{_scores(o, t, 'score_panx')} | {_med(o, 'peak_rss_mb', 0)} | {_med(t, 'peak_rss_mb', 0)} |")
        s = b["eval"][0]["settings"]
        out += ["", f"Baseline: per language, `Trainer.predict` on the same features (XQuAD: 384-token windows, stride 128; PAN-X) and the same decoder, batch {s['batch_size']}. "
                "Scores: the average over languages of each task's primary metric on both sides (untrained heads: "
                "they check that both sides compute the same thing; a difference is marked ≠). "
                "Padding bound: the tokens the baseline's batches hold (per language, in dataset order, each batch padded to its "
                "longest feature) ÷ the tokens of the same features in one length-sorted stream per task, cut into batches "
                "of at most that size where they waste the fewest tokens (what xstilts runs), "
                "with the real tokens' share of each; the ratio xstilts would reach from length sorting alone at the baseline's "
                "tokens/s (both sides run every real token through every layer). "
                "Memory: on the CPU xstilts's inference loop sets glibc's malloc to reuse freed activations "
                "(`models/cpu_memory.py`); the baseline runs with glibc's defaults, except in the row *vs baseline with "
                "xstilts's malloc settings*, where it gets the same settings from its process's start.", ""]
        first = [f"{r['name']} {_med(r['ours'], 'tokenizer_first_load_s', 1)} s" for r in b["eval"]
                 if r["ours"].get("tokenizer_first_load_s")]
        if first:
            out += ["Tokenizer: the baseline runs `AutoTokenizer.from_pretrained` inside its clock; xstilts loads the "
                    "snapshot that the first load of the same files wrote (`models/loading.py`), written here before its "
                    "clock, as in every stage after the first to load those files. That first load (`from_pretrained` + "
                    "pickling), measured untimed: " + "; ".join(first) + ".", ""]
    if "retrieval" in b:
        out += ["## Retrieval (Tatoeba, e5-small)", "", "| languages | pairs | sentences/s | seconds | average accuracy | peak RSS MB |", "|---|---|---|---|---|---|"]
        for r in b["retrieval"]:
            x = r["result"]
            out.append(f"| {x['languages']} | {x['pairs']} | {_fmt(x['sentences_per_s'], 0)} | {_fmt(x['seconds'], 0)} | {_fmt(x['average_accuracy'], 1)} | {_fmt(x.get('peak_rss_mb'), 0)} |")
        out.append("")
    if "grid" in b:
        out += ["## Grid cost (plan sharing and the tokenisation cache)", "",
                "Two baselines: *intermediate once* trains each setup's intermediate chain once per (model, setup, seed) "
                "and reuses it for every target, as a careful hand-run grid does (the honest comparison); *from scratch* "
                "retrains the chain for every cell.", "",
                "| spec | stages (plan) | stages (intermediate once) | stages (from scratch) | training examples (plan) "
                "| (intermediate once) | (from scratch) | saved vs intermediate once | saved vs from scratch |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in b["grid"]:
            if r.get("kind") != "plan":
                continue
            once = r.get("train_examples_intermediate_once")
            out.append(f"| {r['spec']} | {r['stages']} | {r.get('stages_intermediate_once', 'n/a')} | {r['stages_from_scratch']} "
                       f"| {r['train_examples']:,} | {once:,} | {r['train_examples_from_scratch']:,} "
                       f"| {r.get('saved_share_vs_intermediate_once', 0.0):.1%} | {r['saved_share']:.0%} |"
                       if once is not None else
                       f"| {r['spec']} | {r['stages']} | n/a | {r['stages_from_scratch']} | {r['train_examples']:,} | n/a "
                       f"| {r['train_examples_from_scratch']:,} | n/a | {r['saved_share']:.0%} |")
        for r in b["grid"]:
            if r.get("kind") == "cache":
                out += ["", f"Tokenisation cache, second run of the quickstart's data ({r['entries']} feature sets): "
                        f"{r['first_seconds']:.1f}s tokenising on the first run, {r['second_seconds']:.1f}s loading on the second "
                        f"({r['saved_share']:.0%} of the tokenisation time saved; {r['hits']} hits, {r['misses']} misses)."]
        out.append("")
    out += _store_section(b.get("store")) + _gpu_check_section()
    return "\n".join(out) + "\n"


def _store_section(rows: list[dict[str, Any]] | None) -> list[str]:
    """Results-store claim time (``benchmarks/store_bench.py``)."""
    if not rows:
        return []
    out = ["## Results store: claim time (`benchmarks/store_bench.py`)", "",
           "| stages | workers | claim query | claims/s | p50 ms | p95 ms | idle look ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['stages']:,} | {r['workers']} | {r['impl']} | {_fmt(r['claims_per_s'], 1)} | {_fmt(r['p50_ms'])} | "
                   f"{_fmt(r['p95_ms'])} | {_fmt(r['idle_look_ms'])} |")
    out += ["", "Worker processes claim and complete zero-length stages of a synthetic grid (intermediate → 10 "
            "targets → 2 evals each) for a fixed window; *old* is the claim query before the O(1) rewrite "
            "(kept in the benchmark only); an idle look finds nothing ready.", ""]
    return out


def _gpu_check_section() -> list[str]:
    """The last ``benchmarks/gpu_check.sh`` summary, or the note that it has not run on a GPU."""
    from pathlib import Path

    summary = Path(__file__).with_name("gpu_check") / "gpu_check.md"
    if summary.is_file() and "device: cuda" in summary.read_text():
        return ["## GPU check (`benchmarks/gpu_check.sh`)", "", summary.read_text().strip(), ""]
    return ["## GPU check (`benchmarks/gpu_check.sh`)", "",
            "gpu_check.sh has not run on a GPU: no GPU was lent to the sessions that built it. Its dry mode "
            "(`benchmarks/gpu_check.sh --dry-run`, CPU, tiny shape) runs in CI (tests/test_gpu_check.py).", ""]
