"""`xstilts train`: train one stage from a YAML config (or quick options) and print its dev metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from xstilts.cli._app import app, console, handle_errors
from xstilts.tasks.catalog import CATALOG_HELP

if TYPE_CHECKING:  # pragma: no cover
    from xstilts.train import TrainResult
    from xstilts.train.config import TrainConfig


@app.command("train")
@handle_errors
def train(
    config: Path | None = typer.Argument(None, help="Stage config (YAML, TrainConfig keys)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory of the stage (resumed if it exists)."),
    model: str | None = typer.Option(None, "--model", help="Encoder name/path or an xstilts model dir (overrides the config)."),
    task: list[str] | None = typer.Option(None, "--task", help="Task to train (repeatable; overrides the config's tasks)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    epochs: float | None = typer.Option(None, "--epochs", help="Number of epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Examples per micro-batch (all processes)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    max_length: int | None = typer.Option(None, "--max-length", help="Maximum sequence length in tokens."),
    max_examples: int | None = typer.Option(None, "--max-examples", help="Train on at most this many examples per task."),
    seed: int | None = typer.Option(None, "--seed"),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | bf16 | fp16"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Local data directory."),
    catalog: list[Path] | None = typer.Option(None, "--catalog", help=CATALOG_HELP),
    report_to: list[str] | None = typer.Option(None, "--report-to", help="Trackers for the training curves and dev "
                                               "scores: tensorboard | wandb | mlflow (repeatable; replaces the "
                                               "config's trackers)."),
) -> None:
    """Train one stage: single task, multi-task, +MLM, or a step of a sequential chain."""
    from xstilts.tasks.catalog import use_catalogs
    from xstilts.tracking import parse_report_to
    from xstilts.train import train_stage

    use_catalogs(catalog)

    overrides = {"model": model, "max_steps": max_steps, "num_epochs": epochs, "batch_size": batch_size,
                 "learning_rate": lr, "max_length": max_length, "seed": seed, "precision": precision,
                 "data_dir": str(data_dir) if data_dir else None,
                 "trackers": parse_report_to(report_to) if report_to else None}
    cfg = _stage_config(config, overrides, task, max_examples)
    result = train_stage(cfg, out)
    if result.skipped:
        console.print(f"[yellow]already finished[/]: {out} ({result.steps} steps); nothing to do")
    _print_result(result)


def _stage_config(config: Path | None, overrides: dict[str, Any], task: list[str] | None,
                  max_examples: int | None) -> TrainConfig:
    """The stage's TrainConfig: the CONFIG file with the options over it, or the options alone."""
    from xstilts.errors import ConfigError
    from xstilts.train import load_train_config, make_train_config

    if task:
        overrides["tasks"] = [{"task": t, **({"max_examples": max_examples} if max_examples else {})} for t in task]
    if config is None:
        if not overrides.get("model") or not task:
            raise ConfigError("give a CONFIG file, or at least --model and --task", key="config")
        return make_train_config({k: v for k, v in overrides.items() if v is not None})
    cfg = load_train_config(config, overrides)
    if max_examples and not task:
        cfg = make_train_config({**cfg.model_dump(), "tasks": [{**t.model_dump(), "max_examples": max_examples}
                                                               for t in cfg.tasks]}, file=config)
    return cfg


def _print_result(result: TrainResult) -> None:
    from rich.table import Table

    table = Table(title=f"English dev metrics after {result.steps} steps")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, scores in result.dev_metrics.items():
        for metric, value in scores.items():
            table.add_row(name, metric, f"{value:.2f}")
    console.print(table)
    console.print(f"model: {result.model_dir}  ({result.seconds:.0f}s)")
