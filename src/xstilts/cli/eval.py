"""`xstilts eval`: zero-shot evaluation of a model on every language of a target task; `xstilts rescore`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from xstilts.cli._app import app, console, handle_errors
from xstilts.tasks.catalog import CATALOG_HELP

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from xstilts.evaluate import EvalReport


def _scores_table(report: EvalReport) -> Table:
    """One row per language (and the average) of every metric of ``report``."""
    from rich.table import Table

    metrics = list(report.average) or sorted({m for s in report.per_language.values() for m in s})
    table = Table(title=f"{report.task} ({report.split}) — {report.model or ''}")
    table.add_column("language")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column("n", justify="right")
    for lang, scores in report.per_language.items():
        table.add_row(lang, *(f"{scores.get(m, float('nan')):.2f}" for m in metrics), str(report.n_examples.get(lang, "")))
    if report.per_language:
        table.add_section()
        table.add_row(f"average ({len(report.per_language)})", *(f"{report.average.get(m, float('nan')):.2f}" for m in metrics), "",
                      style="bold")
    return table


def _print_report(report: EvalReport, out: Path | None) -> None:
    from xstilts.paths import METRICS_FILE, PREDICTIONS_DIR

    console.print(_scores_table(report))
    for lang, reason in report.skipped.items():
        console.print(f"[yellow]skipped[/] {lang}: {reason}", highlight=False, soft_wrap=True)
    ret = report.settings.get("retrieval")
    if ret:
        console.print(f"retrieval: layer {ret['layer']}/{ret['num_layers']}, {ret['pooling']} pooling, {ret['similarity']}, "
                      f"{ret['direction']}" + (f", prefix {ret['prefix']!r}" if ret.get("prefix") else ""), highlight=False)
    if report.wall_time_s is not None:
        console.print(f"wall time: {report.wall_time_s:.1f} s", highlight=False)
    if out is not None:
        console.print(f"wrote [bold]{out / METRICS_FILE}[/] and {out / PREDICTIONS_DIR}/<lang>.jsonl", highlight=False)


@app.command("eval")
@handle_errors
def eval_cmd(
    model: str = typer.Option(..., "--model", "-m", help="xstilts model dir, a transformers AutoModelFor* dir (its head and id2label), or (retrieval) e5-small / a hub id / an encoder dir."),
    task: str = typer.Option(..., "--task", "-t", help="Target task name (see `xstilts tasks`)."),
    languages: str = typer.Option("all", "--languages", "-l", help="'all', 'xtreme', 'xtreme-r' or a comma list (de,fr)."),
    split: str | None = typer.Option(None, "--split", help="dev | test (default: the task's eval split)."),
    max_examples: int | None = typer.Option(None, "--max-examples", help="Seeded subsample per language (recorded)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subsample."),
    batch_size: int = typer.Option(64, "--batch-size", help="Features per forward pass."),
    max_length: int | None = typer.Option(None, "--max-length", help="Maximum sequence length in tokens (default: the task's featurisation)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (autocast; fp16 needs a GPU). bf16 is ~2x faster on CPUs with bf16 instructions."),
    device: str = typer.Option("auto", "--device", help="auto (the GPU if torch sees one) | cpu | cuda | cuda:N."),
    layer: int | None = typer.Option(None, "--layer", help="Retrieval: layer numbered as XTREME's --specific_layer (0 = first transformer layer = hidden_states[1]; default 7 of 12, 13 of 24)."),
    pooling: str = typer.Option("mean", "--pooling", help="Retrieval: mean | cls."),
    margin: str | None = typer.Option(None, "--margin", help="Retrieval: ratio | distance | absolute (default: plain cosine)."),
    both_directions: bool = typer.Option(False, "--both-directions", help="Retrieval: also score non-English -> English (accuracy_xx_to_en); accuracy is XTREME's English -> non-English."),
    prefix: str = typer.Option("", "--prefix", help="Retrieval: text prepended to every sentence (e.g. 'query: ' for e5)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output dir for metrics.json + predictions/ (default: eval-<task>)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Benchmark data dir (default: ../shared/data or $XSTILTS_DATA_DIR)."),
    head: str | None = typer.Option(None, "--head", help="The model's head to use (default: the one named after the task or its train task); its labels must be the task's."),
    save_inputs: bool = typer.Option(False, "--save-inputs", help="Prediction rows also hold each example's input text (they always hold id, prediction and gold)."),
    catalog: list[Path] | None = typer.Option(None, "--catalog", help=CATALOG_HELP),
    report_to: list[str] | None = typer.Option(None, "--report-to", help="Also report the scores per language to "
                                               "tensorboard | wandb | mlflow (repeatable; TensorBoard logs under OUT)."),
) -> None:
    """Evaluate a model zero-shot on every requested language of a task, in one process."""
    from xstilts.cli._suggest import check_eval_request
    from xstilts.tasks.catalog import use_catalogs as _use_catalogs

    _use_catalogs(catalog)  # names, languages, precision, model and data dir fail here, before torch loads
    check_eval_request(model=model, task=task, languages=languages, split=split, precision=precision,
                       pooling=pooling, margin=margin, data_dir=data_dir)
    from xstilts.evaluate import RetrievalSettings, zero_shot_eval
    from xstilts.tasks.catalog import use_catalogs
    from xstilts.tracking import log_eval_report, parse_report_to

    use_catalogs(catalog)
    trackers = parse_report_to(report_to)  # a missing tracker package fails here, before the model loads

    out_dir = out if out is not None else Path(f"eval-{task}")
    rs = RetrievalSettings(layer=layer, pooling=pooling, margin=margin, both_directions=both_directions, prefix=prefix)
    report = zero_shot_eval(model, task, languages, split=split, data_dir=data_dir, max_examples=max_examples, seed=seed,
                            batch_size=batch_size, out_dir=out_dir, retrieval=rs, precision=precision, device=device,
                            head=head, save_inputs=save_inputs, max_length=max_length)
    log_eval_report(report, trackers, out_dir)
    _print_report(report, out_dir)


@app.command("rescore")
@handle_errors
def rescore_cmd(
    out_dir: Path = typer.Argument(..., help="Output dir of a previous `xstilts eval`."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Benchmark data dir (default: the one recorded)."),
    write: bool = typer.Option(False, "--write", help="Rewrite metrics.json with the recomputed scores."),
    catalog: list[Path] | None = typer.Option(None, "--catalog", help=CATALOG_HELP + " (Default: the one recorded.)"),
) -> None:
    """Recompute every score of an evaluation from its predictions files and the gold data."""
    from xstilts.evaluate import rescore
    from xstilts.tasks.catalog import use_catalogs

    use_catalogs(catalog)

    report = rescore(out_dir, data_dir=data_dir, write=write)
    _print_report(report, out_dir if write else None)
