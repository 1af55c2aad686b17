"""`xstilts run`, `xstilts status`, `xstilts results` (and the hidden `xstilts worker`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from xstilts.cli._app import app, console, err_console, handle_errors
from xstilts.tasks.catalog import CATALOG_HELP

_STATE_STYLE = {"done": "green", "running": "cyan", "waiting": "dim", "failed": "red"}


def _plan_table(rows: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, show_lines=False, highlight=False)
    for col in ("id", "kind", "setup", "target", "seeds", "inputs", "depends on", "state"):
        table.add_column(col, overflow="fold")
    for r in rows:
        state = r["state"]
        if r["progress"] and state == "running":
            p = r["progress"]
            state += f" (step {p.get('step', '?')}" + (f"/{p['max_steps']}" if p.get("max_steps") else "") + ")"
        if r["error"]:
            state += f": {r['error'][:60]}"
        deps = ",".join(d[:8] for d in r["depends_on"].split(",") if d)
        table.add_row(r["id"][:12], r["kind"], r["setup"], r["target"], r["seeds"], r["inputs"] or r["model"], deps,
                      f"[{_STATE_STYLE.get(r['state'], '')}]{state}[/]")
    return table


def _totals_line(t: dict[str, Any]) -> str:
    est = f"{t['examples_to_process']:,}" + (f" (+{t['unknown_size']} stage(s) of unknown size)" if t["unknown_size"] else "")
    return (f"{t['stages']} stages: [green]{t['done']} done[/], [cyan]{t['running']} running[/], "
            f"{t['waiting']} waiting, [red]{t['failed']} failed[/]; to run: {t['to_run']}; "
            f"estimated examples to process: {est}")


def _load(spec: Path, output_dir: Path | None, catalog: list[Path] | None = None,
          assignments: list[str] | None = None) -> Any:
    return _load_spec_and_plan(spec, output_dir, catalog, assignments)[1]


def _load_spec_and_plan(spec: Path, output_dir: Path | None, catalog: list[Path] | None = None,
                        assignments: list[str] | None = None) -> tuple[Any, Any]:
    """The validated spec (KEY=VALUE ``assignments`` and ``--output-dir`` over the file) and its plan."""
    from xstilts.cli._overrides import parse_assignments
    from xstilts.experiments import load_spec, plan_stages
    from xstilts.tasks.catalog import use_catalogs

    use_catalogs(catalog)  # before the spec is checked against the catalog (workers inherit it)
    overrides = parse_assignments(assignments or [])
    if output_dir:
        overrides["output_dir"] = str(output_dir.resolve())
    loaded = load_spec(spec, overrides=overrides or None)
    return loaded, plan_stages(loaded)


def _summary(store: Any, plan: Any) -> None:
    from rich.table import Table

    from xstilts.experiments.results import summary_frame

    frame = summary_frame(store, plan)
    if frame.empty:
        console.print("no zero-shot results yet.")
        return
    table = Table(title="average zero-shot score (primary metric, mean over languages and seeds)")
    names = list(frame.index.names)
    for n in names:
        table.add_column(n)
    for setup in frame.columns:
        table.add_column(str(setup), justify="right")
    for idx, row in frame.iterrows():
        keys = idx if isinstance(idx, tuple) else (idx,)
        table.add_row(*[str(k) for k in keys], *[("—" if v != v else f"{v:.1f}") for v in row.tolist()])
    console.print(table)


@app.command()
@handle_errors
def run(
    spec: Path = typer.Argument(..., help="Experiment spec (YAML)."),
    assignments: list[str] | None = typer.Argument(None, metavar="KEY=VALUE",
                                                   help="Overrides of the spec: dotted keys, YAML values, validated "
                                                        "like the file (seeds=[0,1] hyperparameters.target.max_steps=50)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved spec and every stage's "
                                      "settings (YAML); run nothing."),
    workers: int = typer.Option(1, "--workers", "-w", help="Worker processes (one GPU each when GPUs exist)."),
    launcher: str = typer.Option("local", "--launcher", help="local | slurm"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and totals; run nothing."),
    devices_per_stage: int = typer.Option(1, "--devices-per-stage", help="GPUs per stage (>1: accelerate launch)."),
    output_dir: Path | None = typer.Option(None, "--out", "-o", "--output-dir", help="Override the spec's output_dir "
                                           "(where the run writes)."),
    slurm_partition: str | None = typer.Option(None, "--slurm-partition", help="Slurm partition (launcher slurm)."),
    slurm_timeout_min: int = typer.Option(24 * 60, "--slurm-timeout-min", help="Slurm job time limit (minutes)."),
    max_jobs: int = typer.Option(0, "--max-jobs", help="Slurm: submit at most this many jobs (0: all; "
                                 "submit again for the rest once they ran)."),
    check_data: bool = typer.Option(False, "--check-data",
                                    help="Parse every input file completely before running (by default large files "
                                         "are checked by their first records)."),
    catalog: list[Path] | None = typer.Option(None, "--catalog", help=CATALOG_HELP + " Also a spec's catalogs: key."),
    report_to: list[str] | None = typer.Option(None, "--report-to", help="Trackers for every stage: tensorboard | "
                                               "wandb | mlflow (training curves, dev and zero-shot scores; "
                                               "repeatable; TensorBoard logs under each stage dir)."),
) -> None:
    """Run an experiment spec: plan its stages, train and evaluate what is not done yet.

    Before anything trains, every file the unfinished stages will read is checked (exists,
    UTF-8, parses): all problems are reported at once and nothing runs."""
    import sys

    from xstilts.cli._suggest import check_choice
    from xstilts.experiments import open_store
    from xstilts.experiments.results import plan_rows, plan_totals

    check_choice("launcher", launcher, ("local", "slurm"))
    if report_to:
        import os

        from xstilts.tracking import ENV_VAR, parse_report_to

        os.environ[ENV_VAR] = ",".join(parse_report_to(report_to))  # the executor and its workers read it
    loaded, plan = _load_spec_and_plan(spec, output_dir, catalog, assignments)
    if print_config:
        console.print(_config_yaml(loaded, plan), highlight=False, soft_wrap=True, markup=False)
        return
    if dry_run:
        from xstilts.experiments.store import store_path

        store = open_store(plan.output_dir) if store_path(plan.output_dir).is_file() else None
        rows = plan_rows(plan, store)
        console.print(_plan_table(rows, f"plan of {spec} → {plan.output_dir}"))
        console.print(_totals_line(plan_totals(rows)))
        return
    _preflight(plan, full=check_data, local=launcher == "local")
    command = " ".join(["xstilts", *sys.argv[1:]])
    if launcher == "slurm":
        from xstilts.experiments.slurm import submit_slurm

        params: dict[str, Any] = {"timeout_min": slurm_timeout_min}
        if slurm_partition:
            params["slurm_partition"] = slurm_partition
        sub = submit_slurm(plan, max_jobs=max_jobs or None, gpus_per_stage=devices_per_stage,
                           slurm_parameters=params, command=command)
        ids = [g.job_id for g in sub.groups]
        console.print(f"{sum(len(g.stage_ids) for g in sub.groups)} stage(s) in {len(ids)} job(s)"
                      + (f" ({ids[0]} .. {ids[-1]}), each after the jobs of its upstream stages (afterok)" if ids else "")
                      + (f"; {sub.held_back} job(s) held back: run this again once these ran" if sub.held_back else ""))
        console.print(f"submitted; follow with [bold]xstilts status {spec}[/] on this host, which records finished "
                      f"jobs' results (logs: {sub.folder})")
        return

    from xstilts.cli._progress import RunProgress
    from xstilts.experiments.runner import run_local

    progress = RunProgress(plan, workers=workers)
    progress.start()
    states = run_local(plan, workers=workers, devices_per_stage=devices_per_stage, on_tick=progress.tick,
                       command=command)
    progress.finish()
    store = open_store(plan.output_dir)
    _summary(store, plan)
    failed = [sid for sid, st in states.items() if st == "failed"]
    out = _shown(plan.output_dir)
    console.print(f"results: {out / 'results.sqlite'} — export with [bold]xstilts results {spec}[/]; "
                  f"report with [bold]xstilts report {out}[/]")
    if failed:
        console.print(f"[red]{len(failed)} stage(s) failed[/]: {', '.join(failed)} — see [bold]xstilts status {spec}[/]; "
                      "run again to retry them.")
        raise typer.Exit(1)


@app.command()
@handle_errors
def status(
    spec: Path = typer.Argument(..., help="Experiment spec (YAML)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", "--out", help="Override the spec's output_dir "
                                           "(as for `xstilts run`)."),
    catalog: list[Path] | None = typer.Option(None, "--catalog", help=CATALOG_HELP),
) -> None:
    """Show every stage of a spec's plan with its state (done / running / waiting / failed)."""
    from xstilts.experiments import open_store
    from xstilts.experiments.results import plan_rows, plan_totals
    from xstilts.experiments.store import store_path

    plan = _load(spec, output_dir, catalog)
    from xstilts.experiments.slurm import collect_if_submitted

    collect_if_submitted(plan)  # Slurm jobs' results: recorded here, by this one host
    store = open_store(plan.output_dir) if store_path(plan.output_dir).is_file() else None
    rows = plan_rows(plan, store)
    console.print(_plan_table(rows, f"{spec} → {plan.output_dir}"))
    console.print(_totals_line(plan_totals(rows)))
    if store is not None:
        _summary(store, plan)


@app.command()
@handle_errors
def results(
    spec: Path = typer.Argument(..., help="Experiment spec (YAML)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | parquet | json"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file (default: stdout for csv/json)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Override the spec's output_dir."),
    catalog: list[Path] | None = typer.Option(None, "--catalog", help=CATALOG_HELP),
    intermediate_dev: bool = typer.Option(False, "--intermediate-dev",
                                          help="Also the English dev scores of each setup's last intermediate "
                                               "stage (its tasks and the heads it carried from earlier chain "
                                               "steps: forgetting), as rows with target = the intermediate task, "
                                               "language en, split intermediate_dev."),
    counts: bool = typer.Option(False, "--counts",
                                help="Also the number of items each score averages over, as rows with "
                                     "metric n_examples (per evaluated language)."),
) -> None:
    """Export the metrics of a spec's stages (one row per model/setup/target/language/seed/metric)."""
    from xstilts.errors import DataNotFoundError
    from xstilts.experiments import open_store
    from xstilts.experiments.results import export_results
    from xstilts.experiments.store import store_path

    from xstilts.cli._suggest import check_choice

    check_choice("format", fmt, ("table", "csv", "parquet", "json"))
    plan = _load(spec, output_dir, catalog)
    from xstilts.experiments.slurm import collect_if_submitted

    collect_if_submitted(plan)  # Slurm jobs' results: recorded here, by this one host
    if not store_path(plan.output_dir).is_file():
        raise DataNotFoundError(f"{plan.output_dir}: no results yet; run `xstilts run {spec}` first")
    store = open_store(plan.output_dir)
    if fmt == "parquet" and out is None:
        from xstilts.errors import ConfigError

        raise ConfigError("parquet needs --out FILE", key="--out")
    df = export_results(store, plan, fmt, out, intermediate_dev=intermediate_dev, counts=counts)
    if out is not None:
        console.print(f"wrote {len(df)} rows to {out}")
    elif fmt == "table":
        _summary(store, plan)
        console.print(f"{len(df)} metric rows; use --format csv|json|parquet --out FILE for all of them.")
    elif fmt == "csv":
        console.print(df.to_csv(index=False), end="", highlight=False, soft_wrap=True)
    else:
        console.print(df.to_json(orient="records", indent=1), highlight=False, soft_wrap=True)


@app.command(hidden=True)
@handle_errors
def worker(
    spec: Path = typer.Argument(..., help="Experiment spec (YAML)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", "--out"),
) -> None:
    """One store-claiming worker for a spec's plan (what `run --workers` and Slurm jobs run)."""
    from xstilts.experiments import open_store, run_worker

    plan = _load(spec, output_dir)
    with open_store(plan.output_dir) as store:
        store.register_plan(plan, retry_failed=False)
    summary = run_worker(plan)
    console.print(f"{summary.worker}: ran {len(summary.ran)}, failed {len(summary.failed)}")


def _preflight(plan: Any, *, full: bool, local: bool) -> None:
    """Check the inputs of every stage not yet done (ConfigError listing all problems)."""
    from xstilts.experiments import open_store
    from xstilts.experiments.preflight import preflight
    from xstilts.experiments.store import store_path

    states: dict[str, str] = {}
    if store_path(plan.output_dir).is_file():
        with open_store(plan.output_dir) as store:
            states = store.states(plan.stages)
    # the spinner shares the log handler's console (stderr), so a log line never lands on its line
    with err_console.status("checking the plan's input files" + (" (full parse)" if full else "")):
        preflight(plan, states=states, full=full, cuda=None if local else True)  # logs what it checked


def _config_yaml(spec: Any, plan: Any) -> str:
    """The resolved spec and every stage's settings, as YAML (``run --print-config``)."""
    import yaml

    stages = {sid: {"kind": st.kind, "description": st.description, "depends_on": list(st.depends_on),
                    "settings": st.settings} for sid, st in plan.stages.items()}
    data = {"spec": spec.model_dump(mode="json", exclude_none=True), "output_dir": str(plan.output_dir),
            "data_dir": str(plan.data_dir) if plan.data_dir else None, "stages": stages}
    return yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False, allow_unicode=True, width=120)


def _shown(path: Path) -> Path:
    """``path`` as a user would type it from here: relative to the working directory when under it."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve())
    except ValueError:
        return p
