"""The task catalog: every task of the paper, XTREME and XTREME-R, with their official language lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xstilts.cli import app
from xstilts.errors import ConfigError, UnknownNameError
from xstilts.tasks.catalog import get_task, list_tasks, load_catalog
from xstilts.tasks.readers import READERS

INTERMEDIATE = ["anli_plus", "anli", "anli_r1", "anli_r2", "anli_r3", "mnli", "qqp", "squad_v1", "squad_v2",
                "hellaswag", "cosmosqa", "commonsenseqa", "ccg", "panx_en", "udpos_en", "tydiqa_en",
                "udpos", "panx"]  # udpos and panx: targets, also intermediate in their training languages
# (task, benchmark, number of languages): XTREME (Hu et al. 2020) and XTREME-R (Ruder et al. 2021)
BENCHMARK_SIZES = [
    ("xnli", "xtreme", 15), ("pawsx", "xtreme", 7), ("udpos", "xtreme", 33), ("panx", "xtreme", 40),
    ("xquad", "xtreme", 11), ("mlqa", "xtreme", 7), ("tydiqa", "xtreme", 9), ("bucc", "xtreme", 4),
    ("tatoeba", "xtreme", 36),
    ("xnli", "xtreme-r", 15), ("xcopa", "xtreme-r", 11), ("udpos", "xtreme-r", 38), ("panx", "xtreme-r", 48),
    ("xquad", "xtreme-r", 12), ("mlqa", "xtreme-r", 7), ("tydiqa", "xtreme-r", 9), ("tatoeba", "xtreme-r", 41),
    ("lareqa", "xtreme-r", 11), ("mewsli_x", "xtreme-r", 11),
]


def test_every_task_is_defined() -> None:
    names = [t.name for t in list_tasks()]
    for name in INTERMEDIATE + ["xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa", "bucc", "tatoeba",
                                "xcopa", "lareqa", "mewsli_x"]:
        assert name in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize("task, bench, n", BENCHMARK_SIZES)
def test_benchmark_language_lists(task: str, bench: str, n: int) -> None:
    spec = get_task(task)
    langs = spec.benchmark_languages(bench)
    assert len(langs) == len(set(langs)) == n
    assert set(langs) <= set(spec.languages)


def test_xtreme_r_extends_xtreme() -> None:
    assert set(get_task("udpos").benchmarks["xtreme-r"]) - set(get_task("udpos").benchmarks["xtreme"]) == \
        {"lt", "pl", "ro", "uk", "wo"}
    assert set(get_task("panx").benchmarks["xtreme-r"]) - set(get_task("panx").benchmarks["xtreme"]) == \
        {"az", "gu", "lt", "pa", "pl", "qu", "ro", "uk"}
    assert set(get_task("tatoeba").benchmarks["xtreme-r"]) - set(get_task("tatoeba").benchmarks["xtreme"]) == \
        {"az", "lt", "pl", "ro", "uk"}
    assert len(get_task("tatoeba").languages) == 112


def test_entries_are_consistent() -> None:
    from xstilts.tasks.formats import get_format

    for spec in list_tasks():
        get_format(spec.format)  # a real format
        assert spec.eval_split in spec.splits
        assert spec.local is not None or spec.hub is not None, spec.name
        if spec.local is not None:
            assert spec.local.reader in READERS, spec.name
        if spec.role == "intermediate":
            assert spec.languages == ["en"] and spec.train_languages == ["en"]
        if spec.role == "both":  # English training data, and only languages the task has
            assert "en" in spec.train_languages and set(spec.train_languages) <= set(spec.languages), spec.name
        if spec.train_task:
            assert get_task(spec.train_task).format == spec.format
        if spec.format in ("classification", "tagging") and spec.name != "ccg":
            assert spec.label_list, spec.name
        assert spec.primary_metric in ("accuracy", "f1", "map@20")


def test_labels_and_metrics() -> None:
    assert get_task("xnli").label_list == ["entailment", "neutral", "contradiction"]
    assert get_task("pawsx").label_list == ["0", "1"] == get_task("qqp").label_list
    assert sorted(get_task("panx").label_list) == ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]
    assert len(get_task("udpos").label_list) == 17 and get_task("ccg").label_list is None
    assert get_task("panx").eval_split == "dev"  # PAN-X test has no labels
    assert get_task("mlqa").metric == "mlqa" and get_task("squad_v2").metric == "squad_v2"
    assert get_task("xquad").train_task == "squad_v1"
    assert get_task("cosmosqa").domain == "blogs" and get_task("xquad").domain == "wikipedia"


def test_hub_sources() -> None:
    assert get_task("xnli").hub.config_for("de") == "de"
    assert get_task("panx").hub.config_for("sw") == "PAN-X.sw"
    assert get_task("udpos").hub.config_for("en") == "udpos.English"
    assert not get_task("udpos").hub.covers("wo") and get_task("udpos").hub.covers("yo")
    assert get_task("mlqa").hub.config_for("de") == "MLQA.de.de"
    assert get_task("tatoeba").hub.config_for("de", "deu") == "tatoeba.deu"
    assert [h.id for h in [get_task("anli_plus").hub, *get_task("anli_plus").hub.also]] == \
        ["facebook/anli", "nyu-mll/glue", "stanfordnlp/snli"]


def test_names_aliases_and_roles() -> None:
    assert get_task("PAN-X-en").name == "panx_en" == get_task("panx-en").name
    assert get_task("wikiann").name == "panx" and get_task("bucc2018").name == "bucc"
    with pytest.raises(UnknownNameError, match="Valid.*xnli"):
        get_task("xnlii")
    inter = {t.name for t in list_tasks("intermediate")}
    target = {t.name for t in list_tasks("target")}
    assert set(INTERMEDIATE) == inter
    assert {"panx_en", "xnli", "tatoeba"} <= target and "anli" not in target
    with pytest.raises(UnknownNameError):
        list_tasks("teacher")


def test_bad_catalog_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("tasks:\n  t:\n    format: tagging\n    role: target\n    languages: [en]\n"
                   "    splits: [dev]\n    eval_split: test\n    metric: pos\n    primary_metric: f1\n")
    with pytest.raises(ConfigError, match="tasks.t.*eval_split 'test'"):
        load_catalog(bad)
    bad.write_text("tasks:\n  t:\n    format: tables\n")
    with pytest.raises(ConfigError, match="tasks.t.format"):
        load_catalog(bad)
    bad.write_text("tasks: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_catalog(bad)


def test_cli_tasks_table_and_show(shared_data: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["tasks", "--data-dir", str(shared_data), "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["xnli"]["local_languages"] == ["de"] and rows["mlqa"]["local_languages"] == []
    assert len(rows["tatoeba"]["local_languages"]) == 112
    table = runner.invoke(app, ["tasks", "--data-dir", str(shared_data)])
    assert table.exit_code == 0 and "xcopa" in table.output and "multiple_choice" in table.output
    show = runner.invoke(app, ["tasks", "show", "xcopa", "--data-dir", str(shared_data)])
    assert show.exit_code == 0 and "cambridgeltl/xcopa" in show.output and "What" not in show.output.split("hub")[0]
    shown = json.loads(runner.invoke(app, ["tasks", "show", "panx", "--json", "--data-dir", str(shared_data)]).output)
    assert "th/dev" not in shown["local_found"] and "th/test" in shown["local_found"]
    unknown = runner.invoke(app, ["tasks", "show", "nope"])
    assert unknown.exit_code == 2 and "unknown task 'nope'" in unknown.output
