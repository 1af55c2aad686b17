"""`xstilts tasks`: the task catalog (table) and `xstilts tasks show NAME`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from xstilts.cli._app import app, console, handle_errors
from xstilts.tasks.catalog import CATALOG_HELP

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from xstilts.tasks.catalog import TaskSpec

tasks_app = typer.Typer(
    help="The task catalog: formats, roles, languages, metrics, local data.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(tasks_app, name="tasks")

DATA_DIR_HELP = "Folder with local data (default: $XSTILTS_DATA_DIR, else ../shared/data)."


@tasks_app.callback(invoke_without_command=True)
@handle_errors
def tasks_table(
    ctx: typer.Context,
    role: Optional[str] = typer.Option(None, "--role", "-r", help="Only tasks usable as: intermediate | target."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    catalog: Optional[list[Path]] = typer.Option(None, "--catalog", help=CATALOG_HELP),
) -> None:
    """List every task of the catalog (plain `xstilts tasks`)."""
    from xstilts.tasks.catalog import use_catalogs

    use_catalogs(catalog)
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from xstilts.paths import resolve_data_dir
    from xstilts.tasks import list_tasks, local_availability

    directory = resolve_data_dir(data_dir)
    specs = list_tasks(role)
    rows = []
    for spec in specs:
        found = local_availability(spec, directory)
        langs = sorted({lang for lang, _ in found})
        rows.append((spec, langs, len(found)))
    if as_json:
        payload = [
            {"name": s.name, "format": s.format, "role": s.role, "languages": len(s.languages), "metric": s.metric,
             "local_languages": langs, "local_splits": n}
            for s, langs, n in rows
        ]
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{len(specs)} tasks  (local data: {directory or 'no data dir'})")
    for col, justify in (("name", "left"), ("format", "left"), ("role", "left"), ("#langs", "right"),
                         ("metric", "left"), ("local data", "left")):
        table.add_column(col, justify=justify, no_wrap=col in ("name", "format"))
    for spec, langs, _ in rows:
        if not langs:
            local = "[dim]—[/]"
        elif len(langs) == len(spec.languages):
            local = f"[green]all {len(langs)}[/]"
        else:
            shown = ", ".join(langs[:6]) + (", …" if len(langs) > 6 else "")
            local = f"[yellow]{len(langs)}[/]: {shown}"
        table.add_row(spec.name, spec.format, spec.role, str(len(spec.languages)), spec.metric, local)
    console.print(table)


@tasks_app.command("show")
@handle_errors
def tasks_show(
    name: str = typer.Argument(..., help="Task name (or alias), e.g. xnli, panx, squad_v1."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the catalog entry as JSON."),
    catalog: Optional[list[Path]] = typer.Option(None, "--catalog", help=CATALOG_HELP),
) -> None:
    """Show one task's catalog entry and which of its languages/splits are found locally."""
    from xstilts.paths import resolve_data_dir
    from xstilts.tasks import get_task, local_availability
    from xstilts.tasks.catalog import use_catalogs

    use_catalogs(catalog)

    spec = get_task(name)
    directory = resolve_data_dir(data_dir)
    found = local_availability(spec, directory)
    if as_json:
        payload = spec.model_dump()
        payload["local_found"] = {f"{lang}/{split}": str(path) for (lang, split), path in sorted(found.items())}
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    console.print(_task_grid(spec))
    if found:
        console.print(_local_table(spec, found, directory))
    else:
        console.print(f"[dim]no local data for {spec.name} in {directory or '(no data dir)'}[/]")


def _task_rows(spec: TaskSpec) -> list[tuple[str, str]]:
    """(field, value) rows describing one catalog entry."""
    rows = [
        ("name", spec.name + (f"  (aliases: {', '.join(spec.aliases)})" if spec.aliases else "")),
        ("format", spec.format),
        ("role", spec.role),
        ("metric", f"{spec.metric} (primary: {spec.primary_metric})"),
        ("splits", f"{', '.join(spec.splits)} (zero-shot: {spec.eval_split})"),
        ("train languages", ", ".join(spec.train_languages)),
        *([("trained on", spec.train_task)] if spec.train_task else []),
        ("labels", ", ".join(spec.label_list) if spec.label_list else "—"),
        ("domain", spec.domain or "—"),
        (f"languages ({len(spec.languages)})", ", ".join(spec.languages)),
        *[(f"{bench} ({len(langs)})", ", ".join(langs)) for bench, langs in spec.benchmarks.items()],
        ("hub", _hub_text(spec)),
    ]
    if spec.local:
        paths = "; ".join(f"{s}: {', '.join(spec.local.templates(s))}" for s in spec.local.paths)
        rows.append(("local", f"reader {spec.local.reader}  {paths}"))
    rows.append(("description", spec.description))
    from xstilts.tasks.catalog import task_origin

    if (origin := task_origin(spec)) is not None:
        rows.append(("catalog", str(origin)))
    if spec.citation:
        rows.append(("citation", spec.citation))
    return rows


def _hub_text(spec: TaskSpec) -> str:
    if not spec.hub:
        return "—"
    cfg = spec.hub.config or ("per language" if spec.hub.configs else "—")
    extra = "".join(f" + {h.id}" for h in spec.hub.also)
    return f"{spec.hub.id}{extra}  config: {cfg}"


def _task_grid(spec: TaskSpec) -> Table:
    from rich.table import Table

    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    for key, value in _task_rows(spec):
        info.add_row(key, value)
    return info


def _local_table(spec: TaskSpec, found: dict[tuple[str, str], Path], directory: Path | None) -> Table:
    from rich.table import Table

    table = Table(title=f"local data in {directory}")
    table.add_column("language")
    for split in spec.splits:
        table.add_column(split)
    for lang in spec.languages:
        if any((lang, split) in found for split in spec.splits):
            table.add_row(lang, *["[green]✓[/]" if (lang, split) in found else "[dim]—[/]" for split in spec.splits])
    return table
