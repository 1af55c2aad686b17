"""`xstilts data check`: read every local dataset, count examples, report every problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from xstilts.cli._app import app, console, handle_errors
from xstilts.tasks.catalog import CATALOG_HELP

data_app = typer.Typer(help="Local benchmark data: check what is there and that it parses.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
@handle_errors
def data_check(
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder with local data (default: $XSTILTS_DATA_DIR, else ../shared/data)."
    ),
    task: Optional[list[str]] = typer.Option(None, "--task", "-t", help="Only these tasks (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    catalog: Optional[list[Path]] = typer.Option(None, "--catalog", help=CATALOG_HELP),
) -> None:
    """Read every task/language/split found locally; print counts and problems.

    Keeps going past problems and reports them all; exits 1 if any was found. Tasks of a
    user catalog (--catalog) are checked too, from the paths their entries give.
    """
    from dataclasses import asdict

    from rich.table import Table

    from xstilts.paths import resolve_data_dir
    from xstilts.tasks.catalog import use_catalogs
    from xstilts.tasks.loading import check_local_data

    from xstilts.cli._app import task_progress
    from xstilts.errors import DataNotFoundError

    use_catalogs(catalog)
    if data_dir is not None and not catalog:  # a user catalog's tasks may not need one
        from xstilts.cli._suggest import check_data_dir

        check_data_dir(data_dir)
    directory = resolve_data_dir(data_dir)
    with task_progress("checking local data", enabled=not as_json) as on_task:
        results = check_local_data(directory, tasks=task or None, on_task=on_task)
    if not results:
        raise DataNotFoundError(f"no task data found in {directory}: expected a folder per task (e.g. "
                                "xnli/dev.de.tsv; `xstilts tasks show TASK` lists a task's files)")
    problems = [r for r in results if not r.ok]
    if as_json:
        payload = {
            "data_dir": str(directory),
            "n_checked": len(results),
            "n_problems": len(problems),
            "results": [asdict(r) for r in results],
        }
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        table = Table(title=f"local data in {directory}")
        for col, justify in (("task", "left"), ("language", "left"), ("split", "left"), ("examples", "right"),
                             ("labels", "left"), ("status", "left")):
            table.add_column(col, justify=justify)
        for r in results:
            status = "[green]ok[/]" if r.ok else f"[red]{r.error}[/]"
            count = "" if r.n_examples is None else f"{r.n_examples:,}"
            labels = "" if r.labelled is None else ("yes" if r.labelled else "[yellow]none[/]")
            table.add_row(r.task, r.language, r.split, count, labels, status)
        console.print(table)
        tasks_found = len({r.task for r in results})
        console.print(f"{len(results)} task/language/split combinations in {tasks_found} tasks; "
                      f"{len(problems)} problem(s).")
    if problems:
        raise typer.Exit(1)
