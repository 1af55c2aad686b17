"""`xstilts langs`: the language table (codes, family, genus, script, Joshi resource class)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from xstilts.cli._app import app, console, handle_errors

NULL = "—"


@app.command("langs")
@handle_errors
def langs(
    family: Optional[str] = typer.Option(None, "--family", "-f", help="Only this language family, e.g. 'Indo-European'."),
    genus: Optional[str] = typer.Option(None, "--genus", "-g", help="Only this WALS genus, e.g. 'Slavic'."),
    script: Optional[str] = typer.Option(None, "--script", "-s", help="Only this script, e.g. 'Cyrillic'."),
    resource_class: Optional[int] = typer.Option(
        None, "--resource-class", "-r", help="Only this Joshi et al. (2020) resource class, 0-5."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List languages with their codes, family, genus, script and resource class."""
    from dataclasses import asdict

    from rich.table import Table

    from xstilts.languages import languages_by

    rows = languages_by(family=family, genus=genus, script=script, resource_class=resource_class)
    if as_json:
        payload = [{**asdict(lang), "aliases": list(lang.aliases)} for lang in rows]
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return

    table = Table(title=f"{len(rows)} languages", show_lines=False)
    for col, justify in (
        ("code", "left"), ("639-3", "left"), ("name", "left"), ("family", "left"),
        ("genus", "left"), ("script", "left"), ("class", "right"),
    ):  # fmt: skip
        table.add_column(col, justify=justify, no_wrap=col in ("code", "639-3"))
    for lang in rows:
        table.add_row(
            lang.code,
            lang.iso639_3,
            lang.name,
            lang.family or NULL,
            lang.genus or NULL,
            lang.script or NULL,
            NULL if lang.resource_class is None else str(lang.resource_class),
        )
    console.print(table)
