"""Grid cost: what the shared, content-hashed plan saves over running every cell from scratch.

For a spec, "from scratch" means each (model, setup, target, seed) cell trains its own
intermediate chain, its own target model and evaluates it, sharing nothing. The plan's
numbers are its actual stages. Training examples are counted per training stage as
``examples × epochs`` (or ``max_steps × batch``); where a stage reads a full hub dataset
(the paper's grid) its size is the published train-split size in ``TRAIN_SIZES``.

The tokenisation cache is measured by featurising the quickstart's training and
evaluation data twice into a fresh cache directory: the first pass tokenises, the second
loads the memory-mapped Arrow entries.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO

logger = logging.getLogger(__name__)

#: published train-split sizes (examples) of hub datasets the paper's grid trains on, from the
#: datasets' cards / papers; used only to count the paper grid's training work
TRAIN_SIZES = {
    "anli_plus": 162_865 + 392_702 + 549_367,  # ANLI R1-R3 + MNLI + SNLI
    "mnli": 392_702, "qqp": 363_846, "squad_v1": 87_599, "squad_v2": 130_319, "hellaswag": 39_905,
    "cosmosqa": 25_262, "commonsenseqa": 9_741, "ccg": 38_015, "pawsx": 49_401, "panx": 20_000,
    "udpos": 21_253, "tydiqa": 3_696, "xnli": 392_702, "mlqa": 87_599, "xquad": 87_599,
}


def _train_examples(stage: Any) -> int:
    from xstilts.experiments.plan import estimated_examples

    est = estimated_examples(stage)
    if est is not None:
        return est
    s = stage.settings
    total = 0
    for t in s.get("tasks", []):
        size = TRAIN_SIZES.get(t["task"].replace("-", "_"))
        if size is None:
            logger.warning("no train size known for %s; counted as 0", t["task"])
            continue
        total += min(size, t.get("max_examples") or size) * len(t.get("languages", ["en"]))
    return int(total * s.get("num_epochs", 1.0))


def plan_costs(spec_path: Path) -> dict[str, Any]:
    from xstilts.experiments import load_spec, plan_stages

    plan = plan_stages(load_spec(spec_path))
    stages = plan.stages
    ancestors: dict[str, set[str]] = {}
    for s in stages.values():  # topological order
        acc: set[str] = set()
        for d in s.depends_on:
            acc |= {d} | ancestors.get(d, set())
        ancestors[s.id] = acc
    train_ex = {sid: (_train_examples(s) if s.kind != "eval" else 0) for sid, s in stages.items()}
    scratch_stages = scratch_examples = 0
    for s in stages.values():
        if s.kind != "eval":
            continue
        for _label in s.labels:  # one from-scratch pipeline per cell this evaluation serves
            scratch_stages += 1 + len(ancestors[s.id])
            scratch_examples += sum(train_ex[a] for a in ancestors[s.id])
    ours = sum(train_ex.values())
    once_stages, once_examples = _intermediate_once(stages, ancestors, train_ex)
    return {"kind": "plan", "spec": str(spec_path.relative_to(REPO)), "stages": len(stages),
            "stages_by_kind": {k: len(plan.of_kind(k)) for k in ("intermediate", "target", "eval")},
            "stages_from_scratch": scratch_stages, "train_examples": ours, "train_examples_from_scratch": scratch_examples,
            "saved_share": 1 - ours / scratch_examples if scratch_examples else 0.0,
            "stages_intermediate_once": once_stages, "train_examples_intermediate_once": once_examples,
            "saved_share_vs_intermediate_once": 1 - ours / once_examples if once_examples else 0.0}


def _intermediate_once(stages: dict[str, Any], ancestors: dict[str, set[str]], train_ex: dict[str, int]) -> tuple[int, int]:
    """The honest baseline: what a careful hand-run grid costs, training each setup's intermediate
    chain once per (model, setup, seed) and reusing it for every target (as jiant's scripts do), but
    sharing nothing across setups (a chain's common prefix, the baseline's target models) or cells."""
    chains: dict[tuple[str, str, int], set[str]] = {}
    per_cell: set[tuple[str, str, str | None, int, str]] = set()
    for s in stages.values():
        if s.kind != "eval":
            continue
        for lab in s.labels:
            key = (lab.model, lab.setup, lab.seed)
            chains.setdefault(key, set()).update(a for a in ancestors[s.id] if stages[a].kind == "intermediate")
            per_cell.update((lab.model, lab.setup, lab.target, lab.seed, a) for a in ancestors[s.id] if stages[a].kind == "target")
            per_cell.add((lab.model, lab.setup, lab.target, lab.seed, s.id))
    n_stages = sum(len(c) for c in chains.values()) + len(per_cell)
    n_examples = sum(train_ex[a] for c in chains.values() for a in c) + sum(train_ex[cell[-1]] for cell in per_cell)
    return n_stages, n_examples


def cache_costs(spec_path: Path, data_dir: str | None) -> dict[str, Any]:
    """Featurise every training/eval data set of the quickstart twice into a fresh cache."""
    from xstilts import paths
    from xstilts.experiments import load_spec, plan_stages
    from xstilts.models import load_encoder
    from xstilts.tasks import cache
    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.formats import FeaturizeOptions
    from xstilts.tasks.loading import load_examples

    plan = plan_stages(load_spec(spec_path))
    jobs: set[tuple[str, str, str, int | None, int]] = set()
    for s in plan.stages.values():
        st = s.settings
        if s.kind == "eval":
            task = get_task(st["task"])
            if task.format == "retrieval":
                continue
            for lang in st["languages"]:
                jobs.add((task.name, lang, st.get("split") or task.eval_split, st.get("max_examples"), st.get("max_length") or 128))
        else:
            for t in st.get("tasks", []):
                for lang in t.get("languages", ["en"]):
                    jobs.add((t["task"], lang, t.get("split", "train"), t.get("max_examples"), st.get("max_length", 128)))
    _, tokenizer = load_encoder(plan.stages[next(iter(plan.stages))].settings.get("model", "e5-small")
                                if plan.of_kind("intermediate") else "e5-small")
    loaded = []
    for name, lang, split, cap, length in sorted(jobs, key=str):
        try:
            loaded.append((get_task(name), load_examples(name, lang, split, data_dir=data_dir, max_examples=cap, seed=0), length))
        except Exception as exc:  # noqa: BLE001 - a missing file only shrinks the measurement
            logger.warning("skipping %s/%s/%s: %s", name, lang, split, exc)
    with tempfile.TemporaryDirectory(prefix="xstilts-bench-cache-") as tmp:
        root = Path(tmp)
        timings = []
        for _ in range(2):
            cache.reset_cache_stats()
            t0 = time.perf_counter()
            for task, exs, length in loaded:
                cache.featurize_cached(task, exs, tokenizer, FeaturizeOptions(max_length=length), cache_dir=root)
            timings.append((time.perf_counter() - t0, cache.cache_stats()))
    (first, _), (second, stats2) = timings
    return {"kind": "cache", "spec": str(spec_path.relative_to(REPO)), "entries": len(loaded), "first_seconds": first,
            "second_seconds": second, "saved_share": 1 - second / first if first else 0.0,
            "hits": int(stats2["hits"]), "misses": int(stats2["misses"]), "cache_dir_default": str(paths.features_cache_dir())}


def grid_costs(data_dir: str | None) -> list[dict[str, Any]]:
    rows = []
    for name in ("configs/paper.yaml", "configs/quickstart.yaml"):
        rows.append(plan_costs(REPO / name))
    rows.append(cache_costs(REPO / "configs/quickstart.yaml", data_dir))
    return rows
