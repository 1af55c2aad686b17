"""Views of a plan's results: stage states for ``status``, the per-target × per-setup summary,
and exports (csv / parquet / json) for ``xstilts results``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xstilts.errors import ConfigError, UnknownNameError
from xstilts.experiments.plan import Plan, Stage, estimated_examples
from xstilts.experiments.store import ResultsStore

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("table", "csv", "parquet", "json")
#: ``split`` of the rows of intermediate tasks' English dev scores (``export_results(intermediate_dev=True)``)
INTERMEDIATE_DEV_SPLIT = "intermediate_dev"


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


def last_intermediate_stages(plan: Plan) -> dict[tuple[str, str, int], Stage]:
    """``{(model, setup, seed): stage}``: the last intermediate stage of every setup's chain
    (the one no other stage of that setup starts from); the baseline has none."""
    groups: dict[tuple[str, str, int], list[Stage]] = {}
    for stage in plan.of_kind("intermediate"):
        for lab in stage.labels:
            groups.setdefault((lab.model, lab.setup, lab.seed), []).append(stage)
    out = {}
    for cell, stages in groups.items():
        upstream = {d for s in stages for d in s.depends_on}
        out[cell] = next(s for s in reversed(stages) if s.id not in upstream)
    return out


def _stage_dev_scores(plan: Plan, row: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """A finished training stage's English dev scores, trained tasks' and carried heads'
    (``{task: {metric: value}}``), from its stored result, else its ``DONE`` record."""
    if row is None or row.get("state") != "done":
        return {}
    result = json.loads(row["result"]) if row.get("result") else {}
    if "dev_metrics" not in result or "carried_dev_metrics" not in result:  # an older result: DONE has both
        from xstilts.train.records import read_done

        done = read_done(plan.stage_dir(row["stage_id"]))
        if done is not None:
            result = {"dev_metrics": done.dev_metrics, "carried_dev_metrics": done.carried_dev_metrics}
    return {**(result.get("dev_metrics") or {}), **(result.get("carried_dev_metrics") or {})}


def intermediate_dev_frame(store: ResultsStore, plan: Plan) -> pd.DataFrame:
    """The English dev scores recorded by every setup's last intermediate stage (its trained
    tasks' and the heads it carried from earlier chain steps: the forgetting measure), as
    metric rows: ``target`` = the intermediate task, ``language`` "en", ``split``
    :data:`INTERMEDIATE_DEV_SPLIT`, the stage's id. A task the stage did not train (not in its
    ``StageRecord.tasks``) is a carried head."""
    import pandas as pd

    from xstilts.experiments.store import METRIC_COLUMNS

    last = last_intermediate_stages(plan)
    rows_by_id = {r["stage_id"]: r for r in store.stage_rows({s.id for s in last.values()})}
    rows = [{"model": model, "setup": setup, "target": task, "language": "en", "seed": seed,
             "split": INTERMEDIATE_DEV_SPLIT, "metric": metric, "value": float(value), "stage_id": stage.id}
            for (model, setup, seed), stage in last.items()
            for task, scores in _stage_dev_scores(plan, rows_by_id.get(stage.id)).items()
            for metric, value in sorted(scores.items()) if isinstance(value, (int, float))]
    return pd.DataFrame(rows, columns=METRIC_COLUMNS).astype({"seed": int, "value": float})


#: metric name of the item-count rows (:func:`item_count_frame`)
ITEM_COUNT_METRIC = "n_examples"


def item_count_frame(store: ResultsStore, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated (stage, labels, language) of ``metrics`` with ``metric`` =
    :data:`ITEM_COUNT_METRIC`: the number of items its score averages over, as the eval stage
    recorded it (``n_examples`` in its result; QA: questions, tagging: sentences, retrieval:
    sentence pairs)."""
    import pandas as pd

    from xstilts.experiments.store import METRIC_COLUMNS

    if metrics.empty:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    results = {r["stage_id"]: json.loads(r["result"]) if r.get("result") else {}
               for r in store.stage_rows(set(metrics["stage_id"]))}
    keys = metrics.drop_duplicates(["stage_id", "model", "setup", "target", "language", "seed", "split"])
    rows = []
    for r in keys.itertuples(index=False):
        n = (results.get(r.stage_id) or {}).get("n_examples", {}).get(r.language)
        if n is not None:
            rows.append({"model": r.model, "setup": r.setup, "target": r.target, "language": r.language, "seed": r.seed,
                         "split": r.split, "metric": ITEM_COUNT_METRIC, "value": float(n), "stage_id": r.stage_id})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS).astype({"seed": int, "value": float})


def _append(df: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    if more.empty:
        return df
    return more if df.empty else pd.concat([df, more], ignore_index=True)


def export_results(store: ResultsStore, plan: Plan | None, fmt: str, out: Path | None, *,
                   intermediate_dev: bool = False, counts: bool = False) -> pd.DataFrame:
    """The plan's metric rows (all rows of the store when ``plan`` is None), written to ``out``
    as csv / parquet / json when given; returns the frame. ``counts`` appends the rows of
    :func:`item_count_frame` (items per evaluated language), ``intermediate_dev`` those of
    :func:`intermediate_dev_frame` (needs ``plan``)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown format '{fmt}'. Valid: {', '.join(EXPORT_FORMATS)}", key="--format")
    df = store.metrics_frame([s.id for s in plan.of_kind("eval")] if plan is not None else None)
    if counts:
        df = _append(df, item_count_frame(store, df))
    if intermediate_dev:
        if plan is None:
            raise ConfigError("intermediate dev scores need a spec's plan (which stage ends each setup)",
                              key="--intermediate-dev")
        df = _append(df, intermediate_dev_frame(store, plan))
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
