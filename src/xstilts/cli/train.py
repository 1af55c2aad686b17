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


# Listed in `xstilts train --help` (static: computing it would import torch; a test keeps it in
# step with TrainConfig's fields).
TRAIN_CONFIG_KEYS = {
    "model / tasks": "model, init_heads, tasks (a list of {task, languages, split, max_examples, extra_files, "
                     "extra_ratio, head, dev_split, dev_holdout}), sampler {kind, temperature, caps}, "
                     "mlm {files, probability, mask_prob, max_examples, max_length}",
    "optimisation": "learning_rate, warmup_ratio, weight_decay, num_epochs, max_steps, batch_size, grad_accum, "
                    "max_grad_norm, freeze_embeddings, pooling, compact_vocab, seed, precision",
    "featurisation": "max_length, doc_stride, max_query_length, group_by_length",
    "dev evaluation": "eval_every, eval_max_examples, eval_batch_size, final_model, early_stopping_patience",
    "saving / logging": "save_every, keep_last, keep_checkpoints, log_every, trackers, progress",
    "other": "data_dir, attn_implementation, gradient_checkpointing",
}
#: the CLI caps the end-of-training dev evaluation when nothing else says how many examples
DEFAULT_EVAL_MAX_EXAMPLES = 2000
_EPILOG = ("CONFIG keys (TrainConfig; options override them):\n\n" + "\n\n".join(
    f"{k}: {v}" for k, v in TRAIN_CONFIG_KEYS.items()))


@app.command("train", epilog=_EPILOG)
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
    split: str | None = typer.Option(None, "--split", help="Split to train on with --task (default: train; e.g. dev for tasks only available as dev)."),
    eval_max_examples: int | None = typer.Option(None, "--eval-max-examples", help=f"Dev examples per task for the dev evaluation (default: the config's, else {DEFAULT_EVAL_MAX_EXAMPLES}; 0: all)."),
    seed: int | None = typer.Option(None, "--seed"),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | bf16 | fp16"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Local data directory."),
    catalog: list[Path] | None = typer.Option(None, "--catalog", help=CATALOG_HELP),
    report_to: list[str] | None = typer.Option(None, "--report-to", help="Trackers for the training curves and dev "
                                               "scores: tensorboard | wandb | mlflow (repeatable; replaces the "
                                               "config's trackers)."),
) -> None:
    """Train one stage: single task, multi-task, +MLM, or a step of a sequential chain."""
    from xstilts.cli._suggest import check_train_request
    from xstilts.tasks.catalog import use_catalogs

    use_catalogs(catalog)
    check_train_request(model=model, tasks=task, precision=precision, data_dir=data_dir)  # before torch loads
    from xstilts.tracking import parse_report_to
    from xstilts.train import train_stage

    overrides = {"model": model, "max_steps": max_steps, "num_epochs": epochs, "batch_size": batch_size,
                 "learning_rate": lr, "max_length": max_length, "seed": seed, "precision": precision,
                 "data_dir": str(data_dir) if data_dir else None,
                 "trackers": parse_report_to(report_to) if report_to else None}
    cfg = _stage_config(config, overrides, task, max_examples, split)
    cfg = _cap_dev_eval(cfg, eval_max_examples, config)
    result = train_stage(cfg, out)
    if result.skipped:
        console.print(f"[yellow]already finished[/]: {out} ({result.steps} steps); nothing to do")
    _print_result(result)


def _cap_dev_eval(cfg: TrainConfig, eval_max_examples: int | None, config: Path | None) -> TrainConfig:
    """``--eval-max-examples`` (0: all) over the config; without either, the CLI's default cap, logged."""
    import logging

    from xstilts.train import make_train_config

    if eval_max_examples is not None:
        value = eval_max_examples or None
    elif cfg.eval_max_examples is None:
        value = DEFAULT_EVAL_MAX_EXAMPLES
        logging.getLogger("xstilts.cli").info(
            "dev evaluation capped at %d examples per task (--eval-max-examples N to change, 0 for all)", value)
    else:
        return cfg
    return make_train_config({**cfg.model_dump(), "eval_max_examples": value}, file=config)


def _stage_config(config: Path | None, overrides: dict[str, Any], task: list[str] | None,
                  max_examples: int | None, split: str | None = None) -> TrainConfig:
    """The stage's TrainConfig: the CONFIG file with the options over it, or the options alone."""
    from xstilts.errors import ConfigError
    from xstilts.train import load_train_config, make_train_config

    if split and not task:
        raise ConfigError("--split needs --task (a CONFIG names each task's split)", key="--split")
    if task:
        overrides["tasks"] = [{"task": t, **({"max_examples": max_examples} if max_examples else {}),
                               **({"split": split} if split else {})} for t in task]
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
