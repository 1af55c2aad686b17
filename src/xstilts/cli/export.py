"""`xstilts export`: one head of a model or stage as a standard transformers AutoModelFor* directory."""

from __future__ import annotations

from pathlib import Path

import typer

from xstilts.cli._app import app, console, handle_errors


@app.command("export")
@handle_errors
def export_cmd(
    source: Path = typer.Argument(..., help="A finished stage directory (with model/) or an xstilts model directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the transformers model into (replaced)."),
    head: str | None = typer.Option(None, "--head", help="The head to export (default: the model's only head)."),
    push_to_hub: str | None = typer.Option(None, "--push-to-hub", help="Also upload to this hub repo (needs the hub)."),
) -> None:
    """Write a single-head model as an AutoModelFor{SequenceClassification,TokenClassification,
    QuestionAnswering,MultipleChoice} directory (labels, tokenizer, model card), loadable with
    transformers alone and checked to give the same outputs."""
    from xstilts.models.hf_export import export_hf
    from xstilts.tasks.catalog import task_labels

    res = export_hf(source, out, head=head, labels=task_labels, push_to_hub=push_to_hub)
    console.print(f"wrote [bold]{res.out_dir}[/]: {res.architecture} (head '{res.head}'"
                  + (f", labels {', '.join(res.labels)}" if res.labels else "") + ")", highlight=False)
    console.print(f"load with transformers.{res.auto_class}.from_pretrained('{res.out_dir}'); outputs checked equal "
                  f"(max difference {res.max_abs_diff:.1e})", highlight=False)
    if res.pushed_to:
        console.print(f"pushed to the hub repo [bold]{res.pushed_to}[/]")
