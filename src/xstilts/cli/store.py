"""`xstilts store rebuild`: a new results store from the stage directories of an output dir."""

from __future__ import annotations

from pathlib import Path

import typer

from xstilts.cli._app import app, console, handle_errors

store_app = typer.Typer(help="The results store (OUTPUT_DIR/results.sqlite).", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("rebuild")
@handle_errors
def store_rebuild(
    output_dir: Path = typer.Argument(..., help="The run's output_dir (holds results.sqlite and stages/)."),
    spec: list[Path] = typer.Option([], "--spec", "-s",
                                    help="Spec(s) using this output dir: restores stages that have no stage.json "
                                         "and every label (setup name) of the specs (repeatable)."),
) -> None:
    """Rebuild results.sqlite from the stage directories' records (DONE, metrics.json, OUTCOME.json).

    Finished stages come back done with their metrics; the others wait and resume from their
    checkpoints on the next run. The old store file is kept as results.sqlite.old-<time>.
    """
    from xstilts.experiments import load_spec, plan_stages
    from xstilts.experiments.rebuild import rebuild_store

    plans = [plan_stages(load_spec(s, overrides={"output_dir": str(output_dir.resolve())})) for s in spec]
    report = rebuild_store(output_dir, plans)
    for moved in report.moved_aside:
        console.print(f"kept the old file as {moved}")
    console.print(f"rebuilt {report.store}: {report.stages} stage(s), [green]{report.done} done[/], "
                  f"{report.stages - report.done} to run")
    if report.unknown:
        console.print(f"[yellow]{len(report.unknown)} stage dir(s) say nothing of what they are[/] (no stage.json; "
                      f"e.g. {', '.join(report.unknown[:3])}): pass the spec(s) that made them with --spec.")
