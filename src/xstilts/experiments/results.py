"""Views of a plan's results: stage states for ``status``, the per-target × per-setup summary,
and exports (csv / parquet / json) for ``xstilts results``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xstilts.errors import ConfigError, UnknownNameError
from xstilts.experiments.plan import Plan, estimated_examples
from xstilts.experiments.store import ResultsStore

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("table", "csv", "parquet", "json")


def plan_rows(plan: Plan, store: ResultsStore | None = None) -> list[dict[str, Any]]:
    """One row per stage: id, kind, setup(s), target, seed, inputs, depends on, state, progress, error."""
    info = {r["stage_id"]: r for r in store.stage_rows(plan.stages)} if store is not None else {}
    rows = []
    for st in plan:
        r = info.get(st.id, {})
        s = st.settings
        if st.kind == "eval":
            inputs = f"{s['task']}/{s['split']} × {len(s['languages'])} lang" + (f" (≤{s['max_examples']})" if s.get("max_examples") else "")
        else:
            inputs = ", ".join(f"{t['task']}/{t.get('split', 'train')}" + (f"≤{t['max_examples']}" if t.get("max_examples") else "")
                               for t in s.get("tasks", []))
            if s.get("mlm"):
                inputs += " + MLM"
        model = s.get("model", "")
        rows.append({
            "id": st.id, "kind": st.kind, "setup": ",".join(st.setups()), "target": st.target or "",
            "seeds": ",".join(str(x) for x in sorted({lab.seed for lab in st.labels})),
            "model": model if not str(model).startswith("stage:") else "",
            "inputs": inputs, "depends_on": ",".join(st.depends_on), "state": r.get("state", "waiting"),
            "progress": json.loads(r["progress"]) if r.get("progress") else None,
            "error": (r.get("error") or "").strip().splitlines()[0] if r.get("error") and r.get("state") == "failed" else "",
            "estimated_examples": estimated_examples(st),
        })
    return rows


def plan_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by state and the examples still to process (known estimates only)."""
    out: dict[str, Any] = {"stages": len(rows)}
    for state in ("waiting", "running", "done", "failed"):
        out[state] = sum(1 for r in rows if r["state"] == state)
    todo = [r for r in rows if r["state"] != "done"]
    out["to_run"] = len(todo)
    out["examples_to_process"] = sum(r["estimated_examples"] or 0 for r in todo)
    out["unknown_size"] = sum(1 for r in todo if r["estimated_examples"] is None)
    return out


def primary_metric(task: str) -> str:
    try:
        from xstilts.tasks.catalog import get_task

        return get_task(task).primary_metric
    except UnknownNameError:
        return "f1"


def summary_split(task: str, rows: pd.DataFrame) -> str:
    """The one split a target is summarised on when it was evaluated on several (``eval_splits``):
    the catalog's ``eval_split`` when present, else test, else the first."""
    splits = sorted(rows["split"].astype(str).unique())
    try:
        from xstilts.tasks.catalog import get_task

        wanted = get_task(task).eval_split
    except UnknownNameError:
        wanted = "test"
    return next((s for s in (wanted, "test") if s in splits), splits[0])


def summary_frame(store: ResultsStore, plan: Plan) -> pd.DataFrame:
    """Average zero-shot score (primary metric, mean over languages, then over seeds) per
    target (rows) × setup (columns); one block per model when there are several."""
    import pandas as pd

    df = store.metrics_frame([s.id for s in plan.of_kind("eval")])
    if df.empty:
        return pd.DataFrame()
    keep = df[df.apply(lambda r: r["metric"] == primary_metric(r["target"]), axis=1)]
    keep = keep[keep["split"] == keep["target"].map(lambda t: summary_split(t, keep[keep["target"] == t]))]
    per_seed = keep.groupby(["model", "target", "setup", "seed"], as_index=False)["value"].mean()
    cell = per_seed.groupby(["model", "target", "setup"], as_index=False)["value"].mean()
    index = ["target"] if cell["model"].nunique() == 1 else ["model", "target"]
    table = cell.pivot_table(index=index, columns="setup", values="value")
    setups = [s for s in plan.setup_names if s in table.columns]
    if index == ["target"]:
        table = table.reindex([t for t in plan.target_names if t in table.index])
    return table[setups]


def export_results(store: ResultsStore, plan: Plan | None, fmt: str, out: Path | None) -> pd.DataFrame:
    """The plan's metric rows (all rows of the store when ``plan`` is None), written to ``out``
    as csv / parquet / json when given; returns the frame."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown format '{fmt}'. Valid: {', '.join(EXPORT_FORMATS)}", key="--format")
    df = store.metrics_frame([s.id for s in plan.of_kind("eval")] if plan is not None else None)
    if out is None:
        return df
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("csv", "table"):
        df.to_csv(out, index=False)
    elif fmt == "parquet":
        df.to_parquet(out, index=False)
    elif fmt == "json":
        df.to_json(out, orient="records", indent=1)
    return df
