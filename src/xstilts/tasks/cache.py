"""Tokenised-feature cache: Arrow datasets on disk, memory-mapped, shared by every stage and run.

``featurize_cached`` keys the features by a content hash of everything they depend on:
the tokenizer's identity (class, ``name_or_path``, vocabulary size, a hash of its
backend/vocabulary), the format (and its featurisation version), the task's label list,
the :class:`FeaturizeOptions`, and the content of the examples. A cached entry is a
directory named by the key under :func:`xstilts.paths.features_cache_dir` holding one Arrow
file (``features.arrow``, written by ``datasets``' ``ArrowWriter``, read back memory-mapped
with ``datasets.Dataset.from_file``) and a small JSON of what it holds. Entries are written
to a temporary directory and renamed into place, so several processes can featurise the
same data at once: the first rename wins and the others load the winner's entry.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xstilts import paths
from xstilts.tasks.formats import FeaturizeOptions, get_format

if TYPE_CHECKING:  # pragma: no cover
    from xstilts.tasks.catalog import TaskSpec

logger = logging.getLogger(__name__)

#: bump when the layout of cached entries changes (invalidates every entry)
CACHE_VERSION = 2  # 2: one Arrow file written by datasets' ArrowWriter (1: a save_to_disk directory)
META_FILE = "xstilts_features.json"
FEATURES_FILE = "features.arrow"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 24 * 3600


@dataclasses.dataclass
class CacheStats:
    """Counters of this process's cache look-ups (read by benchmarks)."""

    hits: int = 0
    misses: int = 0
    tokenize_seconds: float = 0.0
    load_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


_STATS = CacheStats()
_STATS_LOCK = threading.Lock()
_TOKENIZER_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def cache_stats() -> dict[str, float]:
    """A copy of this process's hit/miss counters and the time spent tokenising / loading."""
    with _STATS_LOCK:
        return _STATS.as_dict()


def reset_cache_stats() -> None:
    """Zero the counters (benchmarks call this before a measured run)."""
    with _STATS_LOCK:
        _STATS.hits = _STATS.misses = 0
        _STATS.tokenize_seconds = _STATS.load_seconds = 0.0


#: the call state a fast tokenizer's JSON records first (``"truncation":...,"padding":...``)
_CALL_STATE = re.compile(r'"truncation":(?:null|\{(?:[^{}]|\{[^{}]*\})*\}),"padding":(?:null|\{(?:[^{}]|\{[^{}]*\})*\})')


def _vocab_hash(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256()
    if backend is not None:
        # the serialised backend (XLM-R: 17 MB, ~0.1 s to hash; parsing and re-dumping it took
        # ~1.5 s) without the truncation/padding of the last call, which it also records
        text = backend.to_str()
        head = _CALL_STATE.sub('"truncation":null,"padding":null', text[:4096], count=1)
        h.update(b"backend\x00")
        h.update(head.encode("utf-8"))
        h.update(text[4096:].encode("utf-8"))
    else:  # a slow tokenizer: its vocabulary and special tokens
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode("utf-8"))
        h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable hash of what makes a tokenizer produce the ids it does (not where it was loaded from).

    Hashing XLM-R's backend takes ~0.3 s, so the result is memoised per backend tokenizer (per
    object for a slow tokenizer) and recomputed when the tokenizer's class, size or truncation
    side changes (``add_tokens`` and the like).
    """
    memo_check = (type(tokenizer), len(tokenizer), getattr(tokenizer, "truncation_side", None))
    # memoised per backend: copies that share one (models.loading.shared_tokenizer_backends) hash it once
    owner = getattr(tokenizer, "backend_tokenizer", None) or tokenizer
    try:
        memo = _TOKENIZER_FINGERPRINTS.get(owner)
    except TypeError:  # not weak-referenceable / hashable
        memo = None
    if memo is not None and memo[0] == memo_check:
        return memo[1]
    identity = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        # not ``name_or_path``: the same tokenizer saved into every stage's model dir must share
        # one cache entry; class + vocabulary hash + size decide the ids
        "vocab_size": len(tokenizer),
        "truncation_side": getattr(tokenizer, "truncation_side", None),
        "vocab_hash": _vocab_hash(tokenizer),
    }
    fp = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    try:
        _TOKENIZER_FINGERPRINTS[owner] = (memo_check, fp)
    except TypeError:
        pass
    return fp


def examples_fingerprint(examples: Sequence[Any]) -> str:
    """A hash of the examples' content (type and every field, in order)."""
    h = hashlib.sha256()
    h.update(str(len(examples)).encode())
    for ex in examples:
        record = dataclasses.asdict(ex) if dataclasses.is_dataclass(ex) else dict(vars(ex))
        h.update(type(ex).__name__.encode())
        h.update(json.dumps(record, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def features_key(task: TaskSpec, examples: Sequence[Any], tokenizer: Any, options: FeaturizeOptions) -> str:
    """The cache key of ``examples`` featurised for ``task`` with ``tokenizer`` and ``options``."""
    fmt = get_format(task.format)
    parts = {
        "cache_version": CACHE_VERSION,
        "format": fmt.name,
        "format_version": getattr(fmt, "version", 1),
        "label_list": list(task.label_list) if task.label_list is not None else None,
        "options": dataclasses.asdict(options),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "examples": examples_fingerprint(examples),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _clean_stale_tmp(root: Path) -> None:
    now = time.time()
    for p in root.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _load(entry: Path):
    """The entry's features as a ``datasets.Dataset`` memory-mapped from its Arrow file."""
    import datasets

    t0 = time.perf_counter()
    ds = datasets.Dataset.from_file(str(entry / FEATURES_FILE))
    with _STATS_LOCK:
        _STATS.load_seconds += time.perf_counter() - t0
    return ds


def _write_features(features: Sequence[dict[str, Any]], path: Path, key: str) -> None:
    """``features`` as one Arrow file, typed as ``datasets.Dataset.from_list`` types them (both go
    through datasets' ``OptimizedTypedSequence``), the key recorded as the dataset's fingerprint.
    (``from_list`` + ``save_to_disk`` took ~26 ms an entry, most of it hashing the new table for
    a fingerprint the key already is: 1.5 s of a 59-language evaluation of 20 examples each.)"""
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    if not features:  # no columns to type: an empty Arrow stream (what from_list([]) holds)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([])):
            return
    columns = {name: [f.get(name) for f in features] for name in features[0]}
    with ArrowWriter(path=str(path), fingerprint=key, **_strict_types()) as writer:
        writer.write_batch(columns)
        writer.finalize()


@functools.cache
def _strict_types() -> dict[str, Any]:
    """ArrowWriter's keyword making mixed types an error, as in from_list (datasets >= 4.7 would
    otherwise store them as JSON; older versions have no such option and always raise)."""
    from datasets.arrow_writer import ArrowWriter

    return {"on_mixed_types": None} if "on_mixed_types" in inspect.signature(ArrowWriter).parameters else {}


def featurize_cached(
    task: TaskSpec,
    examples: Sequence[Any],
    tokenizer: Any,
    options: FeaturizeOptions | None = None,
    *,
    cache_dir: Path | str | None = None,
):
    """Featurise ``examples`` for ``task`` with its format, or load the cached features.

    Returns a memory-mapped ``datasets.Dataset`` whose rows are the format's feature dicts (a
    miss writes the entry first, then maps it). ``cache_dir`` defaults to
    :func:`xstilts.paths.features_cache_dir`.
    """
    options = options if options is not None else FeaturizeOptions()
    root = Path(cache_dir) if cache_dir is not None else paths.features_cache_dir()
    fmt = get_format(task.format)
    key = features_key(task, examples, tokenizer, options)
    entry = root / f"{fmt.name}-{key}"

    if entry.is_dir():
        try:
            ds = _load(entry)
        except Exception as err:  # a damaged entry (e.g. files removed by hand): rebuild it
            logger.warning("features cache entry %s is unreadable (%s); rebuilding it", entry, err)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with _STATS_LOCK:
                _STATS.hits += 1
            logger.debug("features cache hit: task=%s, %d examples -> %s", task.name, len(examples), entry)
            return ds

    with _STATS_LOCK:
        _STATS.misses += 1
    logger.info("features cache miss: tokenising %d examples of task=%s (%s)", len(examples), task.name, fmt.name)
    t0 = time.perf_counter()
    features = fmt.featurize(examples, tokenizer, options, task.label_list)
    with _STATS_LOCK:
        _STATS.tokenize_seconds += time.perf_counter() - t0

    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{key[:12]}-", dir=root))
    try:
        _write_features(features, tmp / FEATURES_FILE, key)
        meta = {
            "task": task.name,
            "format": fmt.name,
            "n_examples": len(examples),
            "n_features": len(features),
            "options": dataclasses.asdict(options),
            "tokenizer": {
                "class": type(tokenizer).__name__,
                # not ``name_or_path``: the same tokenizer saved into every stage's model dir must share
                # one cache entry; class + vocabulary hash + size decide the ids
                "fingerprint": tokenizer_fingerprint(tokenizer),
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            logger.info("features cache: another process wrote %s first; using its entry", entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _load(entry)  # memory-mapped from its file (~1 ms)


__all__ = [
    "CacheStats",
    "cache_stats",
    "examples_fingerprint",
    "features_key",
    "featurize_cached",
    "reset_cache_stats",
    "tokenizer_fingerprint",
]
