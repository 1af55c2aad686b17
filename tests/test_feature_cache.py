"""Tokenised-feature cache: Arrow on disk, content-hash keys, hits/misses, atomic writes."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from xstilts.tasks import cache
from xstilts.tasks.catalog import TaskSpec, get_task
from xstilts.tasks.cache import cache_stats, featurize_cached, features_key, reset_cache_stats
from xstilts.tasks.formats import FeaturizeOptions, get_format
from xstilts.tasks.types import Answer, ClassificationExample, QAExample

NLI = ["entailment", "neutral", "contradiction"]


def FakeTask(**changes: object) -> TaskSpec:  # noqa: N802 (reads like the class it replaced)
    """The catalog's xnli TaskSpec with ``changes`` (unvalidated: an unknown format stays unknown)."""
    return get_task("xnli").model_copy(update=changes)


def nli_examples(n: int = 6) -> list[ClassificationExample]:
    return [ClassificationExample(str(i), f"Satz Nummer {i}.", f"Hypothese {i}.", NLI[i % 3]) for i in range(n)]


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


def test_miss_then_hit_loads_same_features(tokenizer, tmp_path, monkeypatch):
    reset_cache_stats()
    task, examples, opts = FakeTask(), nli_examples(), FeaturizeOptions(max_length=32)
    ds = featurize_cached(task, examples, tokenizer, opts, cache_dir=tmp_path)
    assert cache_stats()["misses"] == 1 and cache_stats()["hits"] == 0
    assert len(ds) == len(examples) and ds[2]["labels"] == 2
    direct = get_format("classification").featurize(examples, tokenizer, opts, NLI)
    assert [dict(r) for r in ds] == direct
    (entry,) = entries(tmp_path)
    assert (entry / cache.META_FILE).is_file()

    # the second call must not tokenise
    fmt = get_format("classification")
    monkeypatch.setattr(fmt, "featurize", lambda *a, **k: pytest.fail("tokenised on a cache hit"))
    again = featurize_cached(task, list(examples), tokenizer, opts, cache_dir=tmp_path)
    assert cache_stats()["hits"] == 1 and cache_stats()["misses"] == 1
    assert again[:] == ds[:]
    assert again.cache_files and Path(again.cache_files[0]["filename"]).is_relative_to(entry)  # memory-mapped from disk


def test_rows_equal_the_format_features_on_a_miss_and_a_hit(tokenizer, tmp_path):
    """featurize_cached's rows (what zero-shot evaluation holds): the entry's rows, the format's own features, with
    datasets' types (from_list's), and the key as the dataset's fingerprint (no hashing of the table)."""
    import datasets

    reset_cache_stats()
    task, examples, opts = FakeTask(), nli_examples(), FeaturizeOptions(max_length=32)
    direct = get_format("classification").featurize(examples, tokenizer, opts, NLI)
    rows = featurize_cached(task, examples, tokenizer, opts, cache_dir=tmp_path).to_list()
    assert cache_stats()["misses"] == 1 and len(entries(tmp_path)) == 1 and rows == direct
    assert featurize_cached(task, examples, tokenizer, opts, cache_dir=tmp_path).to_list() == rows
    ds = featurize_cached(task, examples, tokenizer, opts, cache_dir=tmp_path)
    assert cache_stats()["hits"] == 2 and ds.to_list() == rows
    assert ds.features == datasets.Dataset.from_list(direct).features  # e.g. input_ids int32, as from_list
    assert ds._fingerprint == entries(tmp_path)[0].name.split("-", 1)[1]


def test_no_examples_give_an_empty_entry(tokenizer, tmp_path):
    task, opts = FakeTask(), FeaturizeOptions(max_length=32)
    assert featurize_cached(task, [], tokenizer, opts, cache_dir=tmp_path).to_list() == []
    assert len(featurize_cached(task, [], tokenizer, opts, cache_dir=tmp_path)) == 0


def test_key_changes_with_every_input(tokenizer):
    task, examples, opts = FakeTask(), nli_examples(), FeaturizeOptions()
    base = features_key(task, examples, tokenizer, opts)
    assert base == features_key(FakeTask(name="another"), nli_examples(), tokenizer, FeaturizeOptions())
    changed = [
        features_key(task, examples, tokenizer, FeaturizeOptions(max_length=64)),
        features_key(task, examples, tokenizer, dataclasses.replace(opts, label_all_subtokens=True)),
        features_key(FakeTask(label_list=["contradiction", "neutral", "entailment"]), examples, tokenizer, opts),
        features_key(FakeTask(format="retrieval"), examples, tokenizer, opts),
        features_key(task, examples[:-1], tokenizer, opts),
        features_key(task, examples[:-1] + [dataclasses.replace(examples[-1], label="neutral")], tokenizer, opts),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_key_depends_on_tokenizer_vocab(tokenizer):
    from transformers import XLMRobertaTokenizerFast

    from tests.helpers import xlmr_tokenizer_file

    task, examples, opts = FakeTask(), nli_examples(), FeaturizeOptions()
    # two tokenizers of their own: the session's shared one may have been changed by earlier tests
    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()))
    fresh = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()))
    # a call leaves truncation/padding state in the backend: it must not change the key
    tokenizer("a b c", truncation=True, max_length=3, padding="max_length")
    cache._TOKENIZER_FINGERPRINTS.clear()
    k = features_key(task, examples, tokenizer, opts)
    assert features_key(task, examples, fresh, opts) == k  # same tokenizer, another object
    fresh.add_tokens(["<xstilts-new-token>"])  # changed in place: the key must follow
    assert features_key(task, examples, fresh, opts) != k
    fresh.add_tokens(["<xstilts-other-token>"])
    fresh.truncation_side = "left"
    assert len({k, features_key(task, examples, fresh, opts)}) == 2


def test_options_change_gives_new_entry(tokenizer, tmp_path):
    reset_cache_stats()
    task = FakeTask(name="squad_v1", format="extractive_qa", label_list=None)
    ex = [QAExample("q1", "Paris is the capital of France.", "What is the capital?", [Answer("Paris", 0)])]
    a = featurize_cached(task, ex, tokenizer, FeaturizeOptions(max_length=64, doc_stride=16), cache_dir=tmp_path)
    b = featurize_cached(task, ex, tokenizer, FeaturizeOptions(max_length=48, doc_stride=16), cache_dir=tmp_path)
    assert cache_stats()["misses"] == 2 and len(entries(tmp_path)) == 2
    assert a[0]["offset_mapping"][0] == [-1, -1] and a[0]["start_positions"] == b[0]["start_positions"] > 0
    # the cached Dataset works directly with collate and decode
    fmt = get_format("extractive_qa")
    batch = fmt.collate([a[i] for i in range(len(a))], tokenizer.pad_token_id)
    assert batch["start_positions"].tolist() == a["start_positions"][:]
    start = np.full((len(a), 64), -5.0)
    end = np.full((len(a), 64), -5.0)
    start[0, a[0]["start_positions"]] = end[0, a[0]["end_positions"]] = 5.0
    assert fmt.decode(ex, a, {"start_logits": start, "end_logits": end}) == {"q1": "Paris"}


def test_lost_race_uses_winner_entry(tokenizer, tmp_path, monkeypatch):
    """Another process renames its entry into place first: ours is discarded, theirs is loaded."""
    real_rename = os.rename

    def rename_after_rival(src, dst):
        import shutil

        shutil.copytree(src, dst)  # the rival's complete entry appears just before our rename
        return real_rename(src, dst)  # fails: target exists and is not empty

    monkeypatch.setattr(cache.os, "rename", rename_after_rival)
    ds = featurize_cached(FakeTask(), nli_examples(), tokenizer, FeaturizeOptions(), cache_dir=tmp_path)
    assert len(ds) == 6
    assert len(entries(tmp_path)) == 1 and not list(tmp_path.glob(".tmp-*"))


def test_damaged_entry_is_rebuilt(tokenizer, tmp_path):
    featurize_cached(FakeTask(), nli_examples(), tokenizer, FeaturizeOptions(), cache_dir=tmp_path)
    (entry,) = entries(tmp_path)
    for f in entry.glob("*.arrow"):
        f.unlink()
    reset_cache_stats()
    ds = featurize_cached(FakeTask(), nli_examples(), tokenizer, FeaturizeOptions(), cache_dir=tmp_path)
    assert len(ds) == 6 and cache_stats()["misses"] == 1


def _worker(cache_dir: str, queue) -> None:
    from tests.helpers import xlmr_tokenizer

    ds = featurize_cached(FakeTask(), nli_examples(40), xlmr_tokenizer(), FeaturizeOptions(), cache_dir=cache_dir)
    queue.put(ds["input_ids"])


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_concurrent_processes(tokenizer, tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1] == results[2]
    assert len(entries(tmp_path)) == 1 and not list(tmp_path.glob(".tmp-*"))


def test_default_cache_dir_and_unknown_format(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_HOME", str(tmp_path))
    featurize_cached(FakeTask(), nli_examples(2), tokenizer, None)
    assert len(entries(tmp_path / "features")) == 1
    from xstilts.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="format"):
        featurize_cached(FakeTask(format="span"), nli_examples(2), tokenizer, None)
