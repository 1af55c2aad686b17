"""`xstilts summarize`: a study's README summary block, generated from its results.csv and analysis.yaml."""

from __future__ import annotations

from pathlib import Path

import typer

from xstilts.cli._app import app, console, handle_errors


@app.command("summarize")
@handle_errors
def summarize_cmd(
    study_dir: Path = typer.Argument(..., help="A study folder (results.csv, analysis.yaml, README.md)."),
    measure: bool = typer.Option(False, "--measure", help="First write the derived measures (similarity.csv, "
                                 "lexsim.csv, ...) of the extras analysis.yaml names, from the local data."),
    write_readme: bool = typer.Option(False, "--write-readme", help="Replace the README's block between "
                                      "<!-- summary:begin --> and <!-- summary:end --> (else: print the block)."),
    check: bool = typer.Option(False, "--check", help="Exit 1 with a diff when the README's block differs from a "
                               "fresh summary."),
) -> None:
    """Compute a study's summary (gains with seed-level tests, groups, interaction, contrasts, extras)."""
    from xstilts.analysis import study_summary
    from xstilts.errors import ConfigError

    if write_readme and check:
        raise ConfigError("--write-readme and --check exclude each other (write, then check in a later call)",
                          key="--check")
    if measure:
        for path in study_summary.run_measures(study_dir):
            console.print(f"wrote {path}", highlight=False, markup=False)
    if check:
        diff = study_summary.check_readme(study_dir)
        if diff:
            typer.echo(diff, nl=False)
            console.print(f"{study_dir / study_summary.README_FILE}: the summary block is stale; run "
                          f"`xstilts summarize {study_dir} --write-readme`", highlight=False, markup=False)
            raise typer.Exit(1)
        console.print(f"{study_dir / study_summary.README_FILE}: the summary block is up to date", markup=False)
    elif write_readme:
        changed = study_summary.write_readme(study_dir)
        state = "rewritten" if changed else "already up to date"
        console.print(f"{study_dir / study_summary.README_FILE}: summary block {state}", highlight=False, markup=False)
    else:
        typer.echo(study_summary.summarize(study_dir), nl=False)
