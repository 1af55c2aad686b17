"""Loading any encoder: Hugging Face hub ids, local directories, the offline ``e5-small``,
and xstilts model directories (their ``encoder/``).

Hub loading is real (``from_pretrained``) but never hangs offline: the Hugging Face cache is
tried first; when the model is not cached, ``HF_HUB_OFFLINE`` (or ``local_files_only``) makes
it fail at once, and otherwise the hub endpoint is probed with a short timeout before any
download is attempted. Every failure is a :class:`~xstilts.errors.ModelLoadError` that says
what to do.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import hashlib
import inspect
import json
import logging
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xstilts import paths
from xstilts.errors import ModelLoadError
from xstilts.hub import hub_endpoint, hub_offline, hub_reachable  # noqa: F401 (re-exported by models)
from xstilts.paths import ENCODER_SUBDIR, XSTILTS_MODEL_FILE

log = logging.getLogger(__name__)

#: model types whose checkpoints are encoder-decoders: only the encoder is loaded
_ENCODER_ONLY_CLASSES = {"mt5": "MT5EncoderModel", "t5": "T5EncoderModel", "umt5": "UMT5EncoderModel"}


@dataclass(frozen=True)
class ResolvedModel:
    """Where an encoder comes from: a local directory, or a hub id (``local`` is None)."""

    name: str  # what the user asked for
    local: Path | None  # directory holding config.json (an xstilts dir's encoder/)
    hub_id: str | None
    xstilts_dir: Path | None = None  # set when ``name`` is an xstilts model directory


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def resolve_model(name_or_path: str | Path) -> ResolvedModel:
    """Decide what ``name_or_path`` names, without loading weights or touching the network.

    Order: the alias ``e5-small`` (built on demand), an existing directory (an xstilts model
    dir -> its ``encoder/``; a plain HF dir with ``config.json``), otherwise a hub id.
    """
    from xstilts.models.e5 import E5_ALIAS, e5_small_dir, is_e5_small_built, prepare_e5_small

    name = str(name_or_path)
    if name == E5_ALIAS:
        path = e5_small_dir() if is_e5_small_built() else prepare_e5_small()
        return ResolvedModel(name, path, None)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / XSTILTS_MODEL_FILE).is_file():
            enc = path / ENCODER_SUBDIR
            if not (enc / "config.json").is_file():
                raise ModelLoadError(f"{path} is an xstilts model directory but {enc}/config.json is missing (incomplete save?)")
            return ResolvedModel(name, enc, None, xstilts_dir=path)
        if (path / "config.json").is_file():
            return ResolvedModel(name, path, None)
        raise ModelLoadError(
            f"{path} is not a model directory: expected config.json (a transformers model saved with "
            f"save_pretrained) or {XSTILTS_MODEL_FILE} (an xstilts model)"
        )
    if path.exists():
        raise ModelLoadError(f"{path} is a file, not a model directory (expected a directory with config.json)")
    if _looks_like_path(name):
        raise ModelLoadError(f"model directory {path} does not exist")
    return ResolvedModel(name, None, name)


def _not_cached_message(name: str, reason: str) -> str:
    return (
        f"model '{name}' is not in the Hugging Face cache and {reason}. "
        f"Either download it on a machine with network access and point xstilts at the local "
        f"directory (e.g. `hf download {name} --local-dir DIR`, then use DIR as the model), "
        f"or use the offline encoder: run `xstilts models prepare e5-small` and use the model 'e5-small'"
    )


def _model_class(config: Any) -> Any:
    import transformers

    cls_name = _ENCODER_ONLY_CLASSES.get(getattr(config, "model_type", ""))
    if cls_name is not None:
        return getattr(transformers, cls_name)
    from transformers import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except KeyError as exc:
        raise ModelLoadError(f"model type '{config.model_type}' has no transformers encoder class") from exc


def _load_from(source: str, name: str, local_files_only: bool) -> tuple[Any, Any]:
    """from_pretrained the config, encoder and tokenizer from ``source`` (dir or cached hub id)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    cls = _model_class(config)
    kwargs: dict[str, Any] = {"config": config, "local_files_only": local_files_only}
    if "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False  # heads pool themselves; an unused pooler breaks DDP
    try:
        model = cls.from_pretrained(source, **kwargs)
    except TypeError:  # a class whose __init__ takes **kwargs but not add_pooling_layer
        kwargs.pop("add_pooling_layer", None)
        model = cls.from_pretrained(source, **kwargs)
    try:
        tokenizer = _load_tokenizer(source, local_files_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model '{name}': no usable tokenizer in {source} ({exc})") from exc
    return model, tokenizer


#: tokenizers loaded from local directories, by (dir, tokenizer files' size and mtime), with the
#: backend's size when loaded: loading XLM-R's rebuilds its 250k-piece vocabulary from the JSON
#: in Python (seconds); each caller gets a copy (see :func:`_copy_tokenizer`)
_TOKENIZERS: dict[tuple[Any, ...], tuple[Any, tuple[int, ...]]] = {}
_TOKENIZERS_KEPT = 2
#: attributes a transformers tokenizer sets once, in ``__init__``, and only reads afterwards
#: (XLM-R's 250k (piece, score) list): every copy shares them
_READ_ONLY_ATTRS = ("_vocab", "_merges")
_SHARE_BACKEND: contextvars.ContextVar[bool] = contextvars.ContextVar("xstilts_share_tokenizer_backend", default=False)


@contextlib.contextmanager
def shared_tokenizer_backends() -> Iterator[None]:
    """Within this block, tokenizers loaded from a directory loaded before share that one's
    backend (Rust) tokenizer instead of copying it (XLM-R: ~1 s a copy), for callers that only
    encode and never change the backend (no ``add_tokens``, no new normaliser): zero-shot
    evaluation, whose tokenizer never leaves it. Outside it every caller gets its own backend."""
    token = _SHARE_BACKEND.set(True)
    try:
        yield
    finally:
        _SHARE_BACKEND.reset(token)


def _backend_size(tokenizer: Any) -> tuple[int, ...]:
    """The backend's vocabulary size with and without added tokens: what ``add_tokens`` changes."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return (len(tokenizer),)
    return backend.get_vocab_size(with_added_tokens=True), backend.get_vocab_size(with_added_tokens=False)


def _copy_tokenizer(tokenizer: Any, share_backend: bool) -> Any:
    """A deep copy of ``tokenizer`` that shares its read-only vocabulary lists and, with
    ``share_backend``, its backend tokenizer (a plain deepcopy of XLM-R's takes ~2 s)."""
    shared = [getattr(tokenizer, name, None) for name in _READ_ONLY_ATTRS]
    if share_backend:
        shared.append(getattr(tokenizer, "_tokenizer", None))
    return copy.deepcopy(tokenizer, {id(value): value for value in shared if value is not None})


#: environment switch of the on-disk tokenizer snapshots ("0", "false", "no" or "off": none)
TOKENIZER_SNAPSHOTS_ENV = "XSTILTS_TOKENIZER_SNAPSHOTS"
#: bump when what a snapshot holds changes (invalidates every snapshot)
_SNAPSHOT_VERSION = 2
#: files of a model directory that no tokenizer reads (weights: GBs), left out of a snapshot's key
_WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".onnx_data",
                              ".ckpt", ".index", ".ot", ".gguf", ".tflite", ".npz", ".pkl", ".joblib"})
#: a file larger than this enters the key by name, size and mtime instead of its content
_HASHED_BYTES = 64 * 2**20
#: subdirectories ``from_pretrained`` reads for a local directory (transformers' CHAT_TEMPLATE_DIR)
_TOKENIZER_SUBDIRS = ("additional_chat_templates",)
#: snapshots kept (least recently used removed first; XLM-R's takes 15 MB)
_SNAPSHOTS_KEPT = 16
_STALE_TMP_SECONDS = 24 * 3600
_UNTRUSTED_WARNED: set[str] = set()


def _snapshots_on() -> bool:
    return os.environ.get(TOKENIZER_SNAPSHOTS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def _library_identity() -> tuple[Any, ...]:
    """What unpickling depends on besides the files: the snapshot layout, the transformers and
    tokenizers versions, Python's, and (for a development install, whose version stays the same
    across commits) the size and mtime of transformers' tokenizer base modules."""
    import tokenizers
    import transformers

    base = Path(transformers.__file__).parent
    sources = [(f.name, f.stat().st_size, f.stat().st_mtime_ns)
               for f in (base / "tokenization_utils_base.py", base / "tokenization_utils_tokenizers.py") if f.is_file()]
    return (_SNAPSHOT_VERSION, transformers.__version__, tokenizers.__version__, tuple(sys.version_info[:2]), *sources)


def _key_files(directory: Path) -> list[Path]:
    files = [f for f in directory.iterdir() if f.is_file()]
    for sub in _TOKENIZER_SUBDIRS:
        if (directory / sub).is_dir():
            files += [f for f in (directory / sub).rglob("*") if f.is_file()]
    return sorted(f for f in files if f.suffix not in _WEIGHT_SUFFIXES)


def tokenizer_snapshot_key(directory: str | Path, local_files_only: bool = True) -> str:
    """The key of ``directory``'s tokenizer snapshot: a hash of :func:`_library_identity`,
    ``local_files_only`` (``from_pretrained`` records it), and the content of the files
    ``from_pretrained`` may read: every top-level file but weights (tokenizer.json,
    tokenizer_config.json, special tokens, a sentencepiece model, config.json, which names the
    tokenizer class when tokenizer_config does not) and ``additional_chat_templates/``. A file over
    64 MiB enters by name, size and mtime. XLM-R's files take ~0.05 s to hash. Raises OSError when
    a file cannot be read."""
    directory = Path(directory)
    h = hashlib.sha256(json.dumps([*_library_identity(), local_files_only]).encode())
    for file in _key_files(directory):
        stat = file.stat()
        name = file.relative_to(directory).as_posix()
        if stat.st_size > _HASHED_BYTES:
            h.update(f"\x00{name}\x00{stat.st_size}\x00{stat.st_mtime_ns}\x00".encode())
            continue
        with open(file, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").digest()
        h.update(f"\x00{name}\x00{stat.st_size}\x00".encode())
        h.update(digest)
    return h.hexdigest()


def _snapshot_file(key: str) -> Path:
    return paths.tokenizers_cache_dir() / f"{key}.pkl"


def _trusted(file: Path) -> bool:
    """Whether ``file`` and its directory belong to this user and nobody else can write them:
    unpickling runs code, so a snapshot another user could have written is never read."""
    if not hasattr(os, "getuid"):
        return True
    for path in (file.parent, file):
        stat = path.stat()
        if stat.st_uid != os.getuid() or stat.st_mode & 0o022:
            if str(path) not in _UNTRUSTED_WARNED:
                _UNTRUSTED_WARNED.add(str(path))
                log.warning("not reading tokenizer snapshots from %s: it belongs to another user or others can "
                            "write it (unpickling runs code). Snapshots stay off until it is yours alone "
                            "(chmod go-w), or set %s=0.", path, TOKENIZER_SNAPSHOTS_ENV)
            return False
    return True


def _read_snapshot(key: str, source: str) -> Any | None:
    """The tokenizer pickled under ``key``, its paths moved to ``source`` (what
    ``from_pretrained(source)`` records), or None when there is none or it cannot be used."""
    from transformers import PreTrainedTokenizerBase

    file = _snapshot_file(key)
    try:
        if not _trusted(file):
            return None
        fh = open(file, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:  # not readable (permissions, the cache root is a file...): as if absent
        log.debug("no tokenizer snapshot read from %s (%s)", file, exc)
        return None
    try:
        with fh:
            tokenizer = pickle.load(fh)  # noqa: S301 (this user's own cache file, written by _write_snapshot)
    except Exception as exc:  # truncated, or pickled by an incompatible class: load from the files
        log.warning("ignoring the unreadable tokenizer snapshot %s (%s: %s); loading %s from its files",
                    file, type(exc).__name__, exc, source)
        return None
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        log.warning("ignoring the tokenizer snapshot %s: it holds a %s, not a tokenizer", file, type(tokenizer).__name__)
        return None
    with contextlib.suppress(OSError):
        os.utime(file)  # recently used: kept by _evict
    _move_paths(tokenizer, str(tokenizer.name_or_path), source)
    tokenizer.name_or_path = source
    return tokenizer


def _move_paths(tokenizer: Any, old: str, new: str) -> None:
    """Point the attributes and ``init_kwargs`` that name ``old`` (the directory the snapshot
    was loaded from: ``name_or_path``, a ``vocab_file``...) or a file in it at ``new``."""
    root = old.rstrip(os.sep)
    if not root or old == new:
        return
    for store in (vars(tokenizer), getattr(tokenizer, "init_kwargs", None)):
        if not isinstance(store, dict):
            continue
        for name, value in list(store.items()):
            if isinstance(value, str) and value == old:
                store[name] = new
            elif isinstance(value, str) and value.startswith(root + os.sep):
                store[name] = new.rstrip(os.sep) + value[len(root):]


def _evict(root: Path, keep: Path) -> None:
    """Remove all but the :data:`_SNAPSHOTS_KEPT` most recently used snapshots, and temporary
    files a killed writer left behind."""
    now = time.time()
    snapshots = []
    for file in root.iterdir():
        with contextlib.suppress(OSError):
            mtime = file.stat().st_mtime
            if file.name.startswith(".tmp-") and now - mtime > _STALE_TMP_SECONDS:
                file.unlink()
            elif file.suffix == ".pkl" and file != keep:
                snapshots.append((mtime, file))
    for _, file in sorted(snapshots)[: max(0, len(snapshots) + 1 - _SNAPSHOTS_KEPT)]:
        with contextlib.suppress(OSError):
            file.unlink()


def _write_snapshot(tokenizer: Any, key: str) -> None:
    """Pickle a tokenizer just loaded by ``from_pretrained`` under ``key``, atomically. Best
    effort: a full disk or an unpicklable tokenizer only costs the next load its speed. Only
    transformers' own classes are pickled (a class defined elsewhere may not unpickle in another
    process)."""
    if not type(tokenizer).__module__.startswith("transformers."):
        return
    root = paths.tokenizers_cache_dir()
    tmp: str | None = None
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pkl", dir=root)  # 0600
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(tokenizer, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, _snapshot_file(key))
        tmp = None
        _evict(root, _snapshot_file(key))
    except Exception as exc:
        log.info("no tokenizer snapshot written under %s (%s: %s)", root, type(exc).__name__, exc)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _from_pretrained_or_snapshot(source: str, local_files_only: bool) -> Any:
    """``AutoTokenizer.from_pretrained(source)`` for a local directory, read from a snapshot.

    ``from_pretrained`` of XLM-R's tokenizer takes 2.8-4 s (transformers 5 parses its 17 MB
    tokenizer.json in Python and rebuilds the 250k-piece vocabulary); unpickling the tokenizer it
    returned takes ~1 s (2-core Xeon). The first load of a directory's tokenizer files pickles the
    result (~0.2 s more, 15 MB) under :func:`xstilts.paths.tokenizers_cache_dir`, keyed by
    :func:`tokenizer_snapshot_key` (the files' content, not their path: a tokenizer saved unchanged
    into every stage's model directory shares one snapshot); later loads of the same files
    unpickle it. Snapshots are read only from that cache dir, and only when it and the file belong
    to this user and nobody else can write them. ``XSTILTS_TOKENIZER_SNAPSHOTS=0`` turns them off.
    """
    from transformers import AutoTokenizer

    if not _snapshots_on():
        return AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    try:
        key = tokenizer_snapshot_key(source, local_files_only)
    except OSError as exc:  # a file of the directory cannot be read: from_pretrained says whether it matters
        log.debug("no tokenizer snapshot key for %s (%s)", source, exc)
        return AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    tokenizer = _read_snapshot(key, source)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        _write_snapshot(tokenizer, key)
    return tokenizer


def tokenizer_snapshot_path(directory: str | Path) -> Path:
    """Where the snapshot of ``directory``'s tokenizer files is (or would be) kept. Raises
    OSError when a file cannot be read."""
    return _snapshot_file(tokenizer_snapshot_key(directory))


def ensure_tokenizer_snapshot(directory: str | Path) -> Path | None:
    """The snapshot file of ``directory``'s tokenizer, written (by loading the tokenizer from its
    files) when there is none yet. None when snapshots are off or none could be written."""
    if not _snapshots_on():
        return None
    try:
        file = tokenizer_snapshot_path(directory)
    except OSError:
        return None
    if not file.is_file():
        from transformers import AutoTokenizer

        _write_snapshot(AutoTokenizer.from_pretrained(str(directory), local_files_only=True), file.stem)
    return file if file.is_file() else None


def save_tokenizer(tokenizer: Any, directory: str | Path) -> None:
    """``tokenizer.save_pretrained(directory)`` without the truncation and padding its backend
    recorded from its last call. transformers writes them into tokenizer.json (and a reload makes
    them defaults in ``init_kwargs``), so a stage that had last cut QA windows at 192 tokens saved
    a tokenizer that differs from one that had last encoded tags at 96; every call sets its own
    anyway. The same tokenizer now saves the same files, whatever it encoded last (and their
    snapshot is shared). The caller's tokenizer keeps its state."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "no_truncation"):
        tokenizer.save_pretrained(directory)
        return
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        tokenizer.save_pretrained(directory)
    finally:
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)


def _load_tokenizer(source: str, local_files_only: bool) -> Any:
    from transformers import AutoTokenizer

    path = Path(source)
    if not path.is_dir():
        return AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    key = (str(path.resolve()), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.glob("*token*"))))
    cached = _TOKENIZERS.get(key)
    if cached is not None and _backend_size(cached[0]) != cached[1]:  # a sharer changed the backend
        log.warning("the cached tokenizer of %s was changed in place (added tokens?); loading it again", source)
        cached = None
    if cached is None:
        tokenizer = _from_pretrained_or_snapshot(source, local_files_only)
        _TOKENIZERS.pop(key, None)
        while len(_TOKENIZERS) >= _TOKENIZERS_KEPT:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        cached = _TOKENIZERS[key] = (tokenizer, _backend_size(tokenizer))
    return _copy_tokenizer(cached[0], _SHARE_BACKEND.get())


def load_encoder(name_or_path: str | Path, *, local_files_only: bool | None = None) -> tuple[Any, Any]:
    """Load an encoder and its tokenizer.

    ``name_or_path``: a hub id (``xlm-roberta-base``, ``xlm-roberta-large``,
    ``bert-base-multilingual-cased``, ``intfloat/multilingual-e5-small``, ``google/mt5-base`` ...),
    a directory saved with ``save_pretrained``, the alias ``e5-small`` (the offline build,
    prepared on first use), or an xstilts model directory (its ``encoder/``). mT5/T5/umT5
    checkpoints load through their ``*EncoderModel`` class (the encoder alone).

    ``local_files_only``: True never touches the network; None (default) uses the cache
    first and the hub only when it is reachable and ``HF_HUB_OFFLINE`` is not set.

    Returns ``(encoder, tokenizer)``; raises :class:`ModelLoadError` (within seconds when
    offline) with instructions when the model cannot be loaded.
    """
    resolved = resolve_model(name_or_path)
    name = resolved.name
    try:
        if resolved.local is not None:
            return _load_from(str(resolved.local), name, local_files_only=True)

        hub_id = resolved.hub_id
        assert hub_id is not None
        try:  # 1. the HF cache, no network at all
            return _load_from(hub_id, name, local_files_only=True)
        except ModelLoadError:
            raise
        except (OSError, ValueError) as exc:
            log.debug("'%s' not (fully) cached: %s", hub_id, exc)
        if local_files_only:
            raise ModelLoadError(_not_cached_message(hub_id, "local_files_only was requested"))
        if hub_offline():
            raise ModelLoadError(_not_cached_message(hub_id, "HF_HUB_OFFLINE is set"))
        if not hub_reachable():
            raise ModelLoadError(_not_cached_message(hub_id, f"the hub ({hub_endpoint()}) cannot be reached"))
        log.info("downloading '%s' from %s", hub_id, hub_endpoint())
        return _load_from(hub_id, name, local_files_only=False)
    except ModelLoadError:
        raise
    except Exception as exc:  # never let a raw transformers/hub traceback through
        raise ModelLoadError(f"could not load model '{name}': {type(exc).__name__}: {exc}") from exc


def encoder_hidden_size(config: Any) -> int:
    """Width of the encoder's output (``hidden_size``; ``d_model`` for T5-style configs)."""
    for attr in ("hidden_size", "d_model", "dim"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise ModelLoadError(f"cannot tell the hidden size of a '{getattr(config, 'model_type', '?')}' encoder")


def encoder_num_layers(config: Any) -> int:
    """Number of transformer layers of the encoder."""
    for attr in ("num_hidden_layers", "num_layers", "n_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise ModelLoadError(f"cannot tell the number of layers of a '{getattr(config, 'model_type', '?')}' encoder")


def read_xstilts_model_json(directory: str | Path) -> dict[str, Any]:
    """Parse ``DIR/xstilts_model.json``; ModelLoadError naming the file when it is malformed."""
    path = Path(directory) / XSTILTS_MODEL_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read xstilts model metadata ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("heads", []), list):
        raise ModelLoadError(f"{path}: expected an object with a 'heads' list")
    return meta
