"""`xstilts report OUTPUT_DIR`: the HTML + Markdown report of a run's results."""

from __future__ import annotations

from pathlib import Path

import typer

from xstilts.cli._app import app, console, handle_errors
from xstilts.tasks.catalog import CATALOG_HELP


@app.command("report")
@handle_errors
def report(
    output_dir: Path = typer.Argument(..., help="OUTPUT_DIR of `xstilts run` (holds results.sqlite)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write (default OUTPUT_DIR/report/report.html); report.md and figures/ go beside it."),
    encoder: str | None = typer.Option(None, "--encoder", help="Model for embedding/sub-word similarity (default: the runs' model)."),
    similarity: bool = typer.Option(True, "--similarity/--no-similarity", help="Compute task/language/domain similarity (loads data and a model)."),
    compute_taskemb: bool = typer.Option(False, "--compute-taskemb", "--task-emb", help="First compute and cache Fisher TaskEmb of every single-task stage model (slow, once per model and task; the report itself only reads the cache)."),
    max_examples: int = typer.Option(200, "--max-examples", help="English examples per task for similarity measures."),
    low_resource: str | None = typer.Option(None, "--low-resource", help="Comma-separated language codes forming the low-resource subset (default: Joshi classes 0-2)."),
    n_boot: int = typer.Option(10_000, "--n-boot", help="Bootstrap resamples for confidence intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of bootstrap/permutation resampling and text samples."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Local data folder (default: the configured one)."),
    spec: Path | None = typer.Option(None, "--spec", help="Report only on this spec's current plan (a store may also hold stages of an edited or another spec)."),
    catalog: list[Path] | None = typer.Option(None, "--catalog", help=CATALOG_HELP),
) -> None:
    """Write the analysis report (gains, groupings, similarity, statistics) of OUTPUT_DIR."""
    from rich.table import Table

    from xstilts.analysis.report import ReportOptions, build_report
    from xstilts.tasks.catalog import use_catalogs

    use_catalogs(catalog)

    if compute_taskemb:
        _compute_taskemb(output_dir, data_dir, seed, spec)
    opts = ReportOptions(
        n_boot=n_boot, seed=seed, similarity=similarity, encoder=encoder,
        max_examples=max_examples, data_dir=str(data_dir) if data_dir else None,
        low_resource_languages=[c.strip() for c in low_resource.split(",") if c.strip()] if low_resource else None,
    )
    from xstilts.cli._app import task_progress

    with task_progress("report") as on_phase:
        result = build_report(output_dir, out, opts, spec=spec, on_phase=on_phase)
    table = Table(title="xstilts report", show_header=False)
    table.add_row("HTML", str(result.html))
    table.add_row("Markdown", str(result.markdown))
    table.add_row("figures", f"{len(result.figures)} PNG in {result.html.parent / 'figures'}")
    console.print(table)
    if result.notes:
        console.print(f"[yellow]{len(result.notes)} note(s)[/] about missing inputs (also in the report):")
        for n in result.notes:
            console.print(f"  • {n}", highlight=False)


def _compute_taskemb(output_dir: Path, data_dir: Path | None, seed: int, spec: Path | None) -> None:
    from xstilts.analysis.taskemb import TaskEmbSettings, compute_task_embeddings

    run = compute_task_embeddings(output_dir, settings=TaskEmbSettings(seed=seed), data_dir=data_dir, spec=spec)
    console.print(f"TaskEmb cached for {len(run.computed)} task(s): {', '.join(sorted(run.computed)) or 'none'}",
                  highlight=False)
    for task, why in sorted(run.failed.items()):
        console.print(f"  [yellow]TaskEmb of {task} failed:[/] {why}", highlight=False)
