"""Loading examples: local files, deterministic subsampling, name checks, the hub path offline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from xstilts.errors import DataNotFoundError, UnknownNameError, XStiltsError
from xstilts.tasks.catalog import TaskSpec, get_task
from xstilts.tasks.loading import convert_hub_rows, load_examples, local_availability, subsample


def _spec(**over) -> TaskSpec:
    base = dict(name="toy_nli", format="classification", role="target", languages=["en", "de"], splits=["dev", "test"],
                eval_split="test", metric="accuracy", primary_metric="accuracy",
                label_list=["entailment", "neutral", "contradiction"],
                local={"reader": "nli_tsv", "paths": {"dev": "nli/dev.{lang}.tsv", "test": ["nli/a.{lang}.tsv",
                                                                                         "nli/b.{lang}.tsv"]}})
    base.update(over)
    return TaskSpec(**base)


def _data(tmp_path: Path) -> Path:
    (tmp_path / "nli").mkdir()
    lines = [f"p{i}\th{i}\t{['entailment', 'neutral', 'contradiction'][i % 3]}" for i in range(20)]
    (tmp_path / "nli" / "dev.de.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "nli" / "a.de.tsv").write_text("x\ty\tneutral\n", encoding="utf-8")
    (tmp_path / "nli" / "b.de.tsv").write_text("z\tw\tentailment\n", encoding="utf-8")
    return tmp_path


def test_local_loading_and_availability(tmp_path: Path) -> None:
    spec, root = _spec(), _data(tmp_path)
    ex = load_examples(spec, "de", "dev", data_dir=root)
    assert len(ex) == 20 and ex[3].text_a == "p3" and ex[3].label == "entailment"
    both = load_examples(spec, "de", "test", data_dir=root, source="local")
    assert [e.text_a for e in both] == ["x", "z"]
    assert [e.id for e in both] == ["0", "a.de-0"] or len({e.id for e in both}) == 2
    assert local_availability(spec, root) == {("de", "dev"): root / "nli" / "dev.de.tsv",
                                              ("de", "test"): root / "nli" / "a.de.tsv"}


def test_subsampling_is_seeded_and_keeps_order(tmp_path: Path) -> None:
    spec, root = _spec(), _data(tmp_path)
    a = load_examples(spec, "de", "dev", data_dir=root, max_examples=5, seed=1)
    b = load_examples(spec, "de", "dev", data_dir=root, max_examples=5, seed=1)
    c = load_examples(spec, "de", "dev", data_dir=root, max_examples=5, seed=2)
    ids = [int(e.id) for e in a]
    assert [e.id for e in a] == [e.id for e in b] and ids == sorted(ids) and len(ids) == 5
    assert [e.id for e in c] != [e.id for e in a]
    assert len(load_examples(spec, "de", "dev", data_dir=root, max_examples=100)) == 20
    assert subsample(list(range(10)), 3, seed=0) == subsample(list(range(10)), 3, seed=0)


def test_subsample_of_a_token_tsv_builds_only_the_kept_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xstilts.tasks import loading, readers

    spec = TaskSpec(name="toy_ner", format="tagging", role="target", languages=["de"], splits=["test"], eval_split="test",
                    metric="ner_f1", primary_metric="f1", label_list=["O", "B-PER", "I-PER"],
                    local={"reader": "token_tsv", "paths": {"test": "ner/test.{lang}.tsv"}})
    (tmp_path / "ner").mkdir()
    (tmp_path / "ner" / "test.de.tsv").write_text("".join(f"t{i}\tB-PER\nu{i}\tO\n\n" for i in range(40)), encoding="utf-8")
    built: list[str] = []
    real = readers._tsv_sentence
    monkeypatch.setattr(readers, "_tsv_sentence", lambda path, raw, block, *a: built.append(block) or real(path, raw, block, *a))
    for k, seed in ((5, 0), (5, 7), (0, 0), (39, 1), (40, 0), (1000, 0)):
        loading._CACHE.clear()
        built.clear()
        lazy = load_examples(spec, "de", "test", data_dir=tmp_path, max_examples=k, seed=seed)
        assert len(built) == min(k, 40)  # only the kept sentences were split into tokens
        loading._CACHE.clear()
        full = loading._read_local(spec, "de", [tmp_path / "ner" / "test.de.tsv"])
        assert lazy == subsample(full, k, seed)  # the same examples, ids and order as subsampling a full read
    built.clear()  # the full read is cached now: a subsample takes it from there
    assert load_examples(spec, "de", "test", data_dir=tmp_path, max_examples=3) == subsample(full, 3) and not built
    loading._CACHE.clear()
    with pytest.raises(XStiltsError, match="max_examples must be >= 0"):
        load_examples(spec, "de", "test", data_dir=tmp_path, max_examples=-1)


def test_unknown_names_list_the_valid_ones(tmp_path: Path) -> None:
    spec = _spec()
    with pytest.raises(UnknownNameError, match="de, en"):
        load_examples(spec, "fr", "dev", data_dir=tmp_path)
    with pytest.raises(UnknownNameError, match="dev, test"):
        load_examples(spec, "de", "train", data_dir=tmp_path)
    with pytest.raises(UnknownNameError, match="Valid values: anli"):
        load_examples("no_such_task", "de", "dev")


def test_missing_local_data_is_clear(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"nli/dev.en.tsv.*--data-dir"):
        load_examples(_spec(), "en", "dev", data_dir=tmp_path, source="local")


def test_hub_fails_fast_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataNotFoundError, match=r"xnli/fr/test.*unreachable.*xnli/test.fr.tsv.*--data-dir"):
        load_examples("xnli", "fr", "test", data_dir=tmp_path)
    assert time.monotonic() - start < 5
    with pytest.raises(DataNotFoundError, match="no hub source"):
        load_examples("ccg", "en", "dev", data_dir=tmp_path)


def test_real_data_through_the_catalog(shared_data: Path) -> None:
    ex = load_examples("tatoeba", "zh", "test", data_dir=shared_data)
    assert len(ex) == 1000 and ex[0].target and ex[0].source
    assert load_examples("tatoeba", "cmn", "test", data_dir=shared_data)[0] == ex[0]  # 639-3 accepted
    panx = load_examples("panx", "sw", "dev", data_dir=shared_data, max_examples=50, seed=3)
    assert len(panx) == 50 and all(t in get_task("panx").label_list for e in panx for t in e.tags)
    full = load_examples("panx", "sw", "dev", data_dir=shared_data)  # the whole file, parsed
    assert panx == subsample(full, 50, seed=3)  # what the subsample read without building the others
    anli = load_examples("anli", "en", "dev", data_dir=shared_data)
    assert len(anli) == 3198 and len({e.id for e in anli}) == 3198


def test_hub_rows_are_converted_with_class_labels() -> None:
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])})
    rows = datasets.Dataset.from_dict({"premise": ["a", "b"], "hypothesis": ["c", "d"], "label": [2, -1]}, features=feats)
    spec = get_task("xnli")
    ex = convert_hub_rows(spec, spec.hub, rows, "de")
    assert len(ex) == 1 and ex[0].label == "contradiction" and ex[0].text_b == "c"  # -1 (no gold) dropped

    tag_feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                   "ner_tags": datasets.Sequence(datasets.ClassLabel(names=get_task("panx").label_list))})
    tags = datasets.Dataset.from_dict({"tokens": [["Ada", "Lovelace"]], "ner_tags": [[1, 2]]}, features=tag_feats)
    assert convert_hub_rows(get_task("panx"), get_task("panx").hub, tags, "en")[0].tags == ["B-PER", "I-PER"]

    copa = datasets.Dataset.from_dict({"premise": ["p"], "choice1": ["a"], "choice2": ["b"], "question": ["cause"],
                                       "label": [1]})
    mc = convert_hub_rows(get_task("xcopa"), get_task("xcopa").hub, copa, "et")[0]
    assert mc.question == "What was the cause?" and mc.choices == ["a", "b"] and mc.label == 1

    csqa = datasets.Dataset.from_dict({"id": ["q"], "question": ["Where?"], "answerKey": ["C"],
                                       "choices": [{"label": ["A", "B", "C"], "text": ["x", "y", "z"]}]})
    assert convert_hub_rows(get_task("commonsenseqa"), get_task("commonsenseqa").hub, csqa, "en")[0].label == 2

    qa = datasets.Dataset.from_dict({"id": ["english-1", "arabic-2"], "context": ["abc", "def"], "question": ["?", "?"],
                                     "answers": [{"text": ["b"], "answer_start": [1]}, {"text": ["e"], "answer_start": [1]}]})
    out = convert_hub_rows(get_task("tydiqa"), get_task("tydiqa").hub, qa, "ar")
    assert [e.id for e in out] == ["arabic-2"] and out[0].answers[0].text == "e"
