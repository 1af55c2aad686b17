"""On-disk tokenizer snapshots (``models.loading``): a directory's tokenizer is built by
``from_pretrained`` once per content of its files, then unpickled, and the result is the tokenizer
``from_pretrained`` gives."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest

#: text in several scripts (Latin with diacritics, CJK, Cyrillic, Devanagari, Arabic, Thai)
TEXTS = ["Zürich liegt am Zürichsee.", "東京は日本の首都です。", "Москва — столица России.",
         "नमस्ते दुनिया", "القاهرة عاصمة مصر", "กรุงเทพมหานคร", "  two  spaces\tand a tab "]


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """A fresh cache root, an empty in-memory tokenizer cache, and the sources of every
    ``AutoTokenizer.from_pretrained`` after it."""
    from tests.helpers import count_tokenizer_loads
    from xstilts.models import loading

    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(loading.TOKENIZER_SNAPSHOTS_ENV, raising=False)
    return count_tokenizer_loads(monkeypatch)


def _load(directory: Path):
    from xstilts.models import loading

    loading._TOKENIZERS.clear()  # a new process: nothing loaded in memory
    return loading._load_tokenizer(str(directory), True)


def _state(tokenizer) -> dict:
    state = {k: v for k, v in vars(tokenizer).items() if k not in ("_tokenizer", "name_or_path")}
    state["init_kwargs"] = {k: v for k, v in state["init_kwargs"].items() if k != "name_or_path"}
    return {"class": type(tokenizer), "backend": tokenizer.backend_tokenizer.to_str(), **state}


def _encodings(tokenizer) -> list:
    single = tokenizer(TEXTS, return_offsets_mapping=True)
    pair = tokenizer(TEXTS, TEXTS[::-1], truncation="only_second", max_length=16, return_offsets_mapping=True)
    return [single.input_ids, single.offset_mapping, pair.input_ids, pair.offset_mapping]


def _snapshots(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "home" / "tokenizers").glob("*.pkl"))


def test_the_second_load_is_unpickled_and_equals_from_pretrained(tiny_model_dir, counted, tmp_path):
    from transformers import AutoTokenizer

    first = _load(tiny_model_dir)
    assert counted == [str(tiny_model_dir)] and len(_snapshots(tmp_path)) == 1
    second = _load(tiny_model_dir)
    assert counted == [str(tiny_model_dir)]  # not built again
    fresh = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert _state(second) == _state(fresh) == _state(first)
    assert second.name_or_path == fresh.name_or_path == str(tiny_model_dir)
    assert second.init_kwargs.get("name_or_path") == fresh.init_kwargs.get("name_or_path")
    assert _encodings(second) == _encodings(fresh)


def test_a_snapshot_is_keyed_by_the_files_content_not_their_path(tiny_model_dir, counted, tmp_path):
    from transformers import AutoTokenizer

    first = shutil.copytree(tiny_model_dir, tmp_path / "first")
    _load(first)
    copy = shutil.copytree(first, tmp_path / "elsewhere")
    shutil.rmtree(first)  # nothing of the first directory is needed, nor named, by the copy's tokenizer
    from_copy = _load(copy)
    assert counted == [str(first)]
    assert _state(from_copy) == _state(AutoTokenizer.from_pretrained(str(copy)))  # init_kwargs included
    assert from_copy.name_or_path == str(copy) and str(first) not in repr(vars(from_copy))

    config = copy / "tokenizer_config.json"  # a changed file is another tokenizer
    data = json.loads(config.read_text())
    data["model_max_length"] = 77
    config.write_text(json.dumps(data))
    changed = _load(copy)
    assert counted == [str(first), str(copy), str(copy)] and changed.model_max_length == 77
    assert len(_snapshots(tmp_path)) == 2


def test_the_tokenizer_saved_by_a_stage_has_the_key_of_the_one_it_loaded(tiny_model_dir, counted, tmp_path):
    """A model loaded from a directory and saved again (each stage of a chain) writes tokenizer
    files with the same key, so every stage after the first finds the snapshot."""
    from xstilts.models import MultiTaskModel
    from xstilts.models.loading import tokenizer_snapshot_key

    source = tiny_model_dir
    keys = []
    for stage, max_length in enumerate((96, 192, 384)):
        model, tok = MultiTaskModel.from_pretrained(str(source))
        tok(TEXTS, TEXTS, truncation="only_second", max_length=max_length, stride=max_length // 4,
            return_overflowing_tokens=True)  # what the stage encoded last: recorded by the backend
        source = tmp_path / f"stage{stage}"
        model.save(source, tokenizer=tok)
        assert tok.backend_tokenizer.truncation["max_length"] == max_length  # the caller's state is kept
        keys.append(tokenizer_snapshot_key(source / "encoder"))
        assert '"truncation":null' in (source / "encoder" / "tokenizer.json").read_text().replace(" ", "").replace("\n", "")
    assert keys[0] == keys[1] == keys[2]


def test_files_a_tokenizer_may_read_are_in_the_key(tiny_model_dir, tmp_path):
    from xstilts.models.loading import tokenizer_snapshot_key

    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    key = tokenizer_snapshot_key(copy)
    (copy / "additional_chat_templates").mkdir()
    (copy / "additional_chat_templates" / "tool.jinja").write_text("{{ messages }}")
    assert tokenizer_snapshot_key(copy) != key
    assert tokenizer_snapshot_key(copy, local_files_only=False) != tokenizer_snapshot_key(copy)


def test_weights_are_not_part_of_the_key(tiny_model_dir, tmp_path):
    from xstilts.models.loading import tokenizer_snapshot_key

    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    key = tokenizer_snapshot_key(copy)
    (copy / "extra.safetensors").write_bytes(b"not read by a tokenizer")
    assert tokenizer_snapshot_key(copy) == key
    (copy / "added_tokens.json").write_text("{}")
    assert tokenizer_snapshot_key(copy) != key


@pytest.mark.parametrize("content", [b"truncated", pickle.dumps({"not": "a tokenizer"})])
def test_an_unusable_snapshot_is_replaced_by_a_load_from_the_files(tiny_model_dir, counted, tmp_path, caplog, content):
    expected = _encodings(_load(tiny_model_dir))
    (snapshot,) = _snapshots(tmp_path)
    snapshot.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="xstilts.models.loading"):
        again = _load(tiny_model_dir)
    assert "tokenizer snapshot" in caplog.text and str(snapshot) in caplog.text
    assert len(counted) == 2 and _encodings(again) == expected
    _load(tiny_model_dir)  # rewritten: the next load unpickles it
    assert len(counted) == 2


def test_a_tokenizer_changed_by_a_sharer_is_reloaded_pristine_from_its_snapshot(tiny_model_dir, counted):
    from xstilts.models import loading

    loading._TOKENIZERS.clear()
    with loading.shared_tokenizer_backends():
        size = len(loading._load_tokenizer(str(tiny_model_dir), True))
        sharer = loading._load_tokenizer(str(tiny_model_dir), True)
        sharer.add_tokens(["<changed-by-a-sharer>"])  # against the contract: the cache reloads
        after = loading._load_tokenizer(str(tiny_model_dir), True)
    assert len(counted) == 1 and len(after) == size


def test_snapshots_can_be_turned_off(tiny_model_dir, counted, tmp_path, monkeypatch):
    from xstilts.models import loading

    monkeypatch.setenv(loading.TOKENIZER_SNAPSHOTS_ENV, "0")
    _load(tiny_model_dir)
    _load(tiny_model_dir)
    assert len(counted) == 2 and _snapshots(tmp_path) == []


def test_an_unusable_cache_dir_costs_only_speed(tiny_model_dir, counted, tmp_path, monkeypatch, caplog):
    home = tmp_path / "a-file"
    home.write_text("XSTILTS_HOME is a file: no cache dir can be made under it")
    monkeypatch.setenv("XSTILTS_HOME", str(home))
    with caplog.at_level(logging.WARNING, logger="xstilts.models.loading"):
        tokenizer = _load(tiny_model_dir)
    assert tokenizer("a tiny test").input_ids and len(counted) == 1 and not caplog.text


def test_a_full_disk_leaves_no_partial_snapshot(tiny_model_dir, counted, tmp_path, monkeypatch):
    import errno

    from xstilts.models import loading

    def full(obj, fh, protocol=None):
        fh.write(b"half a pickle")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loading.pickle, "dump", full)
    tokenizer = _load(tiny_model_dir)
    assert tokenizer("a tiny test").input_ids and len(counted) == 1
    assert list((tmp_path / "home" / "tokenizers").iterdir()) == []


def test_a_directory_not_owned_by_this_user_alone_is_not_read(tiny_model_dir, counted, tmp_path, caplog):
    _load(tiny_model_dir)
    (tmp_path / "home" / "tokenizers").chmod(0o777)  # anyone could have put a pickle there
    with caplog.at_level(logging.WARNING, logger="xstilts.models.loading"):
        _load(tiny_model_dir)
    assert len(counted) == 2 and "others can write it" in caplog.text


def test_an_unreadable_directory_file_falls_back_to_from_pretrained(tiny_model_dir, counted, monkeypatch):
    from xstilts.models import loading

    def unreadable(*args, **kwargs):
        raise PermissionError("a file of the directory cannot be read")

    monkeypatch.setattr(loading, "tokenizer_snapshot_key", unreadable)
    assert _load(tiny_model_dir)("a tiny test").input_ids and len(counted) == 1


def test_old_snapshots_and_a_killed_writer_s_files_are_removed(tiny_model_dir, counted, tmp_path, monkeypatch):
    import os

    from xstilts.models import loading

    root = tmp_path / "home" / "tokenizers"
    root.mkdir(parents=True, mode=0o700)
    for i in range(3):
        (root / f"old{i}.pkl").write_bytes(b"")
        os.utime(root / f"old{i}.pkl", (1000 + i, 1000 + i))
    (root / ".tmp-killed.pkl").write_bytes(b"")
    os.utime(root / ".tmp-killed.pkl", (1000, 1000))
    monkeypatch.setattr(loading, "_SNAPSHOTS_KEPT", 3)
    _load(tiny_model_dir)
    (new,) = [p.name for p in root.iterdir() if not p.name.startswith("old")]
    assert sorted(p.name for p in root.iterdir()) == sorted(["old1.pkl", "old2.pkl", new])  # the oldest went


def test_a_new_process_unpickles_the_snapshot(tiny_model_dir, counted, tmp_path):
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "from transformers import AutoTokenizer\n"
            "from xstilts.models.loading import _load_tokenizer\n"
            "if sys.argv[2] == 'snapshot':\n"
            "    AutoTokenizer.from_pretrained = None  # any call fails\n"
            "print(_load_tokenizer(sys.argv[1], True)(sys.argv[3]).input_ids)\n")
    env = {**os.environ, "XSTILTS_HOME": str(tmp_path / "home"), "XSTILTS_TOKENIZER_SNAPSHOTS": "1"}
    out = [subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), how, TEXTS[1]], env=env, check=True,
                          capture_output=True, text=True).stdout for how in ("files", "snapshot")]
    assert out[0] == out[1] and out[0].startswith("[0,")


def test_ensure_tokenizer_snapshot_writes_it_once(tiny_model_dir, counted, tmp_path, monkeypatch):
    from xstilts.models import loading

    file = loading.ensure_tokenizer_snapshot(tiny_model_dir)
    assert file is not None and file == loading.ensure_tokenizer_snapshot(tiny_model_dir) and len(counted) == 1
    assert _snapshots(tmp_path) == [file]
    _load(tiny_model_dir)  # the next load unpickles it
    assert len(counted) == 1
    monkeypatch.setenv(loading.TOKENIZER_SNAPSHOTS_ENV, "off")
    assert loading.ensure_tokenizer_snapshot(tiny_model_dir) is None


def test_paths_into_the_first_directory_are_moved_to_the_one_loaded():
    from types import SimpleNamespace

    from xstilts.models.loading import _move_paths

    tok = SimpleNamespace(name_or_path="/a/model", vocab_file="/a/model/spiece.model", other="/a/model-2/x",
                          init_kwargs={"name_or_path": "/a/model", "vocab_file": "/a/model/spiece.model", "n": 3})
    _move_paths(tok, "/a/model", "/b/copy")
    assert (tok.name_or_path, tok.vocab_file, tok.other) == ("/b/copy", "/b/copy/spiece.model", "/a/model-2/x")
    assert tok.init_kwargs == {"name_or_path": "/b/copy", "vocab_file": "/b/copy/spiece.model", "n": 3}
