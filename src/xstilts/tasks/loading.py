"""Loading a task's examples for one (language, split): from a local data dir or the hub.

``source="auto"`` reads local files when they exist and otherwise goes to the Hugging Face
hub through ``datasets.load_dataset`` — failing fast, with a message saying how to pass
``--data-dir``, when the machine is offline.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from xstilts.errors import DataNotFoundError, UnknownNameError, XStiltsError
from xstilts.hub import hub_offline_reason
from xstilts.paths import resolve_data_dir
from xstilts.tasks.catalog import HubSource, TaskSpec, check_language, check_split, get_task, list_tasks
from xstilts.tasks.formats import Format, HubRows, get_format
from xstilts.tasks.readers import get_reader
from xstilts.tasks.types import Example

logger = logging.getLogger(__name__)


# small cache of parsed local files: (reader, path, mtime, size, options) -> examples
_CACHE: OrderedDict[tuple[Any, ...], list[Example]] = OrderedDict()
_CACHE_SIZE = 16


# --------------------------------------------------------------------------- local


def local_files(task: str | TaskSpec, language: str, split: str, data_dir: str | Path | None = None) -> list[Path]:
    """The local files of (task, language, split) under the data dir (they may not exist)."""
    spec = get_task(task)
    directory = resolve_data_dir(data_dir)
    if spec.local is None:
        return []
    return spec.local.resolve(directory, language, split)


def local_availability(task: str | TaskSpec, data_dir: str | Path | None = None) -> dict[tuple[str, str], Path]:
    """``{(language, split): first file}`` for every language/split whose local files all exist
    (a user catalog's absolute paths need no data dir)."""
    spec = get_task(task)
    directory = resolve_data_dir(data_dir)
    found: dict[tuple[str, str], Path] = {}
    if spec.local is None:
        return found
    if directory is not None and not directory.is_dir():
        directory = None
    for language in spec.languages:
        for split in spec.splits:
            files = spec.local.resolve(directory, language, split)
            if files and len(files) == len(spec.local.templates(split)) and all(f.is_file() for f in files):
                found[(language, split)] = files[0]
    return found


def _cache_key(spec: TaskSpec, language: str, file: Path) -> tuple[Any, ...]:
    assert spec.local is not None
    stat = file.stat()
    return (spec.local.reader, str(file), stat.st_mtime_ns, stat.st_size, tuple(spec.label_list or ()),
            language, repr(sorted(spec.local.options.items())))


def _read_parts(spec: TaskSpec, language: str, files: Sequence[Path], use_cache: bool = True) -> list[list[Example]]:
    """The examples of each file (cached by path, mtime and size when ``use_cache``)."""
    assert spec.local is not None
    reader = get_reader(spec.local.reader)
    parts: list[list[Example]] = []
    for file in files:
        key = _cache_key(spec, language, file)
        cached = _CACHE.get(key) if use_cache else None
        if cached is None:
            cached = reader(file, label_list=spec.label_list, language=language, **spec.local.options)
            if use_cache:
                _CACHE[key] = cached
                while len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(key)
        parts.append(list(cached))
    return parts


def _concat(files: Sequence[Path], parts: list[list[Example]]) -> list[Example]:
    """Concatenate per-file examples, prefixing ids with the file stem where they collide."""
    examples: list[Example] = []
    seen: set[str] = set()
    for file, part in zip(files, parts):
        if any(ex.id in seen for ex in part):
            part = [replace(ex, id=f"{file.stem}-{ex.id}") for ex in part]
        seen.update(ex.id for ex in part)
        examples.extend(part)
    return examples


def _read_local(spec: TaskSpec, language: str, files: Sequence[Path], use_cache: bool = True) -> list[Example]:
    return _concat(files, _read_parts(spec, language, files, use_cache))


def _selective(reader: Callable[..., Any]) -> bool:
    """Whether ``reader`` can return only chosen records (a ``keep`` argument: see ``read_token_tsv``)."""
    try:
        return "keep" in inspect.signature(reader).parameters
    except (TypeError, ValueError):
        return False


def _read_local_subsample(spec: TaskSpec, language: str, files: Sequence[Path], max_examples: int,
                          seed: int) -> list[Example] | None:
    """``subsample(_read_local(...), max_examples, seed)`` read without building the examples that
    are not kept, where the reader can (one file, a reader with ``keep``, the file not already
    parsed in this process); None where it cannot."""
    assert spec.local is not None
    reader = get_reader(spec.local.reader)
    if len(files) != 1 or "keep" in spec.local.options or not _selective(reader):
        return None
    if _cache_key(spec, language, files[0]) in _CACHE:
        return None  # parsed already: subsampling the cached examples is cheaper
    return reader(files[0], label_list=spec.label_list, language=language, **spec.local.options,
                  keep=lambda n: subsample_indices(n, max_examples, seed))


# --------------------------------------------------------------------------- hub


def convert_hub_rows(spec: TaskSpec, hub: HubSource, rows: Any, language: str) -> list[Example]:
    """Examples of ``spec``'s format from the rows of a ``datasets.Dataset`` of ``hub``."""
    fmt = get_format(spec.format)
    return fmt.examples_from_hub(HubRows(rows, hub.fields, hub.options, hub.id), spec.label_list, language)


def _load_hub(spec: TaskSpec, language: str, split: str) -> list[Example]:
    if spec.hub is None:
        raise DataNotFoundError(
            f"task '{spec.name}' has no hub source and no local files for {language}/{split}; "
            f"put its files under a data dir ({_expected_local(spec, language, split)}) and pass --data-dir."
        )
    reason = hub_offline_reason()
    if reason is not None:
        raise DataNotFoundError(_offline_message(spec, language, split, reason))
    import datasets

    examples: list[Example] = []
    for hub in [spec.hub, *spec.hub.also]:
        if split not in hub.splits:
            continue
        if not hub.covers(language):
            raise DataNotFoundError(f"hub source {hub.id} of task '{spec.name}' has no data for language '{language}'")
        lang3 = spec.local.file_code(language) if spec.local else language
        config = hub.config_for(language, lang3)
        hub_splits = hub.splits[split]
        for hub_split in [hub_splits] if isinstance(hub_splits, str) else hub_splits:
            logger.info("loading %s (config %s, split %s) from the hub", hub.id, config, hub_split)
            try:
                rows = datasets.load_dataset(hub.id, config, split=hub_split)
            except Exception as exc:  # network/auth/missing config: surface as a user error
                raise DataNotFoundError(f"could not load {hub.id} config={config} split={hub_split}: {exc}") from exc
            examples.extend(convert_hub_rows(spec, hub, rows, language))
    if not examples:
        raise DataNotFoundError(f"the hub source of '{spec.name}' has no split '{split}'")
    return examples


def _expected_local(spec: TaskSpec, language: str, split: str) -> str:
    if spec.local is None or not spec.local.templates(split):
        return "none defined in the catalog"
    lang3 = spec.local.file_code(language)
    return ", ".join(t.format(lang=language, lang3=lang3) for t in spec.local.templates(split))


def _offline_message(spec: TaskSpec, language: str, split: str, reason: str) -> str:
    """What is missing when the hub is unreachable: a split the catalog defines no local file
    for (only the hub has it), or the files the data dir lacks."""
    if spec.local is None or not spec.local.templates(split):
        local = [s for s in spec.splits if spec.local is not None and spec.local.templates(s)]
        return (f"{spec.name}/{language}/{split} comes only from the Hugging Face hub, which is unreachable "
                f"({reason}): the catalog defines no local file for {spec.name}'s '{split}' split"
                + (f" (local files exist for: {', '.join(local)})" if local else "")
                + ". Use a split with local files, or a user catalog (--catalog) whose entry maps the split to a file.")
    return (f"{spec.name}/{language}/{split} is not in the local data dir and the Hugging Face hub is "
            f"unreachable ({reason}). Expected local file(s): {_expected_local(spec, language, split)}. "
            f"Put them under the data dir (--data-dir DIR or XSTILTS_DATA_DIR).")


# --------------------------------------------------------------------------- public API


def subsample_indices(n: int, max_examples: int | None, seed: int = 0) -> list[int]:
    """The positions :func:`subsample` keeps out of ``n`` examples, ascending."""
    if max_examples is None or max_examples >= n:
        return list(range(n))
    if max_examples < 0:
        raise XStiltsError(f"max_examples must be >= 0, got {max_examples}")
    return sorted(random.Random(seed).sample(range(n), max_examples))


def subsample(examples: Sequence[Example], max_examples: int | None, seed: int = 0) -> list[Example]:
    """At most ``max_examples`` examples chosen with ``random.Random(seed)``, in their original order."""
    return [examples[i] for i in subsample_indices(len(examples), max_examples, seed)]


def load_examples(task: str | TaskSpec, language: str, split: str, data_dir: str | Path | None = None,
                  source: Literal["auto", "local", "hub"] = "auto", max_examples: int | None = None,
                  seed: int = 0) -> list[Example]:
    """Examples of ``task`` for one language and split.

    ``source``: "local" reads files under the data dir (``--data-dir`` / ``XSTILTS_DATA_DIR`` /
    ``../shared/data``); "hub" uses ``datasets.load_dataset``; "auto" prefers local files.
    ``max_examples`` subsamples deterministically (``seed``), keeping the original order; a
    reader that can (token TSV: PAN-X, UD-POS) builds only the examples kept.
    Raises UnknownNameError (task/language/split), DataNotFoundError, DataError.
    """
    spec = get_task(task)
    language = check_language(spec, language)
    split = check_split(spec, split)
    if source not in ("auto", "local", "hub"):
        raise UnknownNameError("source", str(source), ["auto", "local", "hub"])
    examples: list[Example] | None = None
    if source in ("auto", "local"):
        files = local_files(spec, language, split, data_dir)
        if files and all(f.is_file() for f in files):
            if max_examples is not None:  # only the examples kept, where the reader can
                picked = _read_local_subsample(spec, language, files, max_examples, seed)
                if picked is not None:
                    return picked
            examples = _read_local(spec, language, files)
        elif source == "local":
            directory = resolve_data_dir(data_dir)
            raise DataNotFoundError(
                f"no local data for {spec.name}/{language}/{split} in data dir {directory}: expected "
                f"{_expected_local(spec, language, split)}. Pass --data-dir DIR to the folder holding it."
            )
    if examples is None:
        examples = _load_hub(spec, language, split)
    return subsample(examples, max_examples, seed)


@dataclass
class CheckResult:
    """One line of ``xstilts data check``: a (task, language, split) found locally."""

    task: str
    language: str
    split: str
    files: list[str]
    n_examples: int | None
    labelled: bool | None
    error: str | None = None
    file_counts: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _shown_paths(files: Sequence[Path], directory: Path | None) -> list[str]:
    """Files relative to the data dir when under it, else as they are (a user catalog's)."""
    out = []
    for f in files:
        try:
            out.append(str(f.relative_to(directory)) if directory is not None else str(f))
        except ValueError:
            out.append(str(f))
    return out


def check_local_data(data_dir: str | Path | None = None, tasks: Sequence[str] | None = None,
                     on_task: Any = None) -> list[CheckResult]:
    """Read every (task, language, split) with local files; record counts and problems, never stop.

    ``on_task(done, total, name)`` is called before each (task, language, split) is read, with
    the number read so far and the total (a progress display).

    A file shared by several tasks (``panx`` and ``panx_en``) is parsed once. Tasks of user
    catalogs whose paths are absolute are checked without a data dir (and, when asked for by
    ``tasks``, report a missing file as a problem).
    """
    from xstilts.tasks.catalog import user_catalogs

    directory = resolve_data_dir(data_dir)
    usable = directory is not None and directory.is_dir()
    shown = directory if directory else "(none given, ../shared/data absent)"
    if not usable and not user_catalogs():
        raise DataNotFoundError(f"data dir not found: {shown}; pass --data-dir DIR")
    if not usable:
        logger.warning("data dir not found: %s; checking only the tasks of user catalogs (their own paths)", shown)
    specs = [get_task(t) for t in tasks] if tasks else list_tasks()
    results: list[CheckResult] = []
    where = directory if usable else None
    total = sum(len(local_availability(spec, where)) for spec in specs) if on_task is not None else 0

    done = [0]

    def item(name: str) -> None:
        if on_task is not None:
            on_task(done[0], total, name)
            done[0] += 1

    for spec in specs:
        results.extend(_check_task(spec, where, missing_is_problem=bool(tasks), on_item=item))
    return results


def _check_task(spec: TaskSpec, directory: Path | None, missing_is_problem: bool = False,
                on_item: Any = None) -> list[CheckResult]:
    """The check results of every (language, split) of one task found locally; with
    ``missing_is_problem``, a task with no local file at all is one problem naming what was looked for."""
    found = local_availability(spec, directory)
    if not found:
        return [_nothing_found(spec, directory)] if missing_is_problem and spec.local is not None else []
    results: list[CheckResult] = []
    for (language, split), _ in sorted(found.items(),
                                       key=lambda kv: (spec.languages.index(kv[0][0]), spec.splits.index(kv[0][1]))):
        files = spec.local.resolve(directory, language, split)  # type: ignore[union-attr]
        rel = _shown_paths(files, directory)
        if on_item is not None:
            on_item(f"{spec.name}/{language}/{split}")
        try:
            parts = _read_parts(spec, language, files, use_cache=False)
            examples = _concat(files, parts)
            labelled = get_format(spec.format).is_labelled(examples[0]) if examples else None
            counts = {r: len(p) for r, p in zip(rel, parts)}
            results.append(CheckResult(spec.name, language, split, rel, len(examples), labelled, None, counts))
        except XStiltsError as exc:
            results.append(CheckResult(spec.name, language, split, rel, None, None, str(exc)))
        except Exception as exc:  # a reader bug must not hide the other results
            results.append(CheckResult(spec.name, language, split, rel, None, None, f"{type(exc).__name__}: {exc}"))
    return results


def _nothing_found(spec: TaskSpec, directory: Path | None) -> CheckResult:
    """The one problem of a task asked for by name that has no local file at all."""
    assert spec.local is not None
    language, split = spec.languages[0], spec.eval_split
    files = spec.local.resolve(directory, language, split)
    where = ", ".join(map(str, files)) if files else f"{_expected_local(spec, language, split)} (no data dir)"
    return CheckResult(spec.name, language, split, _shown_paths(files, directory), None, None,
                       f"no local files of any language/split; e.g. {language}/{split}: looked for {where}")


# --------------------------------------------------------------------------- readable predictions


def readable_rows(examples: Sequence[Example], rows: Sequence[dict[str, Any]], *, fmt: Format,
                  inputs: bool = False) -> list[dict[str, Any]]:
    """Prediction rows (``{"id", "prediction", ...}``) with each example's ``gold`` (and, with
    ``inputs``, its ``input`` fields) added as ``fmt`` writes them (:meth:`Format.gold_json`,
    :meth:`Format.input_json`), so errors can be read without joining files.
    Rows whose id is no example's (mined retrieval pairs) get ``gold: null``."""
    by_id = {ex.id: ex for ex in examples}
    out = []
    for row in rows:
        ex = by_id.get(str(row["id"]))
        extra: dict[str, Any] = {"gold": fmt.gold_json(ex) if ex is not None else None}
        if inputs and ex is not None:
            extra["input"] = fmt.input_json(ex)
        out.append({**row, **extra})
    return out
