"""Fast checks of a command's names and paths, before anything heavy is imported or loaded.

Every check here reads only the task catalog and the language table (no torch, no model), so a
typo fails in well under a second with a "did you mean" suggestion (:class:`UnknownNameError`
computes it) instead of after the model has loaded. The layers below check the same things
again; these checks only move the failure earlier.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from xstilts.errors import DataNotFoundError, UnknownNameError

# mirrors xstilts.models.predict.PRECISIONS (importing it would import torch); a test keeps them equal
PRECISIONS = ("fp32", "bf16", "fp16")
# mirrors xstilts.evaluate.zero_shot.POOLINGS / xstilts.metrics.retrieval.MARGINS (same test)
POOLINGS = ("mean", "cls")
MARGINS = ("ratio", "distance", "absolute")
# model names that are neither a directory nor a hub id
MODEL_ALIASES = ("e5-small",)


def check_choice(kind: str, value: str | None, valid: Iterable[str]) -> None:
    """UnknownNameError (with a suggestion) unless ``value`` is None or one of ``valid``."""
    valid = tuple(valid)
    if value is not None and value not in valid:
        raise UnknownNameError(kind, value, valid)


def check_model(name: str | None) -> None:
    """A model name that is no directory and no hub id but close to an alias (``e5-smal``)
    fails here, with the alias suggested; anything else is left to the model loader."""
    if name is None or name in MODEL_ALIASES or "/" in name or Path(name).expanduser().exists():
        return
    import difflib

    if difflib.get_close_matches(name.lower(), MODEL_ALIASES, n=1, cutoff=0.75):
        raise UnknownNameError("model", name, list(MODEL_ALIASES) + ["<a model directory>", "<a hub id>"])


def check_data_dir(data_dir: str | Path | None, *, what: str = "--data-dir") -> Path | None:
    """A data directory that was asked for must exist and hold something: DataNotFoundError
    naming it otherwise (an empty folder would evaluate nothing and look like success)."""
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(f"data dir not found: {path} ({what}: no such folder)" if not path.exists()
                                else f"data dir {path} ({what}) is a file, not a folder")
    if not any(path.iterdir()):
        raise DataNotFoundError(f"data dir {path} ({what}) is empty: expected a folder per task "
                                "(e.g. xnli/dev.de.tsv; `xstilts tasks show TASK` lists a task's files)")
    return path


def check_task(name: str) -> object:
    """The catalog's TaskSpec for ``name`` (UnknownNameError with a suggestion)."""
    from xstilts.tasks.catalog import get_task

    return get_task(name)


def check_languages(task: str, languages: str | None, split: str | None = None) -> list[str]:
    """Catalog codes for ``languages`` of ``task`` (``all``, a benchmark name, or a comma list of
    codes or English names: ``German`` -> ``de``); checks the split too."""
    from xstilts.tasks.catalog import check_language, check_split

    spec = check_task(task)
    if split is not None:
        check_split(spec, split)  # type: ignore[arg-type]
    if languages is None:
        return []
    key = languages.strip().lower()
    if key == "all":
        return list(spec.languages)  # type: ignore[attr-defined]
    if key in spec.benchmarks:  # type: ignore[attr-defined]
        return list(spec.benchmarks[key])  # type: ignore[attr-defined]
    return [check_language(spec, x.strip()) for x in languages.split(",") if x.strip()]  # type: ignore[arg-type]


def check_eval_request(*, model: str, task: str, languages: str, split: str | None, precision: str,
                       pooling: str, margin: str | None, data_dir: Path | None) -> None:
    """Everything of ``xstilts eval`` that can be checked without torch, in the order a user reads it."""
    check_languages(task, languages, split)
    check_choice("precision", precision, PRECISIONS)
    check_choice("pooling", pooling, POOLINGS)
    check_choice("margin", margin, MARGINS)
    check_model(model)
    check_data_dir(data_dir)


def check_train_request(*, model: str | None, tasks: list[str] | None, precision: str | None,
                        data_dir: Path | None) -> None:
    """The names and data dir of ``xstilts train``'s options, before torch is imported."""
    for name in tasks or []:
        check_task(name)
    check_choice("precision", precision, PRECISIONS)
    check_model(model)
    check_data_dir(data_dir)
