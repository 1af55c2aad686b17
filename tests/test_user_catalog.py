"""User task catalogs: a task and a language the package does not have, from a file of the user's.

The end-to-end case is issue 15's first "Done when": a TSV file with its own header and label
names, in a language the language table lacks (Luxembourgish, ``lb``), goes through
``data check``, ``eval`` (with the head of another task of the same labels, trained by
``xstilts train``), ``rescore`` and ``report`` from the command line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xstilts.errors import ConfigError, DataError
from xstilts.tasks.catalog import CATALOG_ENV, get_task, reset_catalog, task_origin, use_catalogs, user_catalogs
from xstilts.tasks.loading import load_examples
from xstilts.tasks.readers import read_conllu, read_delimited, read_jsonl

LABELS = ["entailment", "neutral", "contradiction"]
EN = [("A man plays a guitar.", "A person makes music.", "entailment"),
      ("A man plays a guitar.", "Nobody makes any music.", "contradiction"),
      ("A woman reads a book.", "She reads a novel about the sea.", "neutral")]
LB = [("De Mann spillt Gitarr.", "E Mënsch mécht Musek.", "0"),
      ("De Mann spillt Gitarr.", "Keen mécht Musek.", "2"),
      ("D'Fra liest e Buch.", "Si liest e Roman iwwer d'Mier.", "1")]


pytestmark = pytest.mark.usefixtures("clean_catalog")


def _entry(**over) -> dict:
    base = {"format": "classification", "role": "both", "languages": ["en"], "splits": ["train"],
            "eval_split": "train", "metric": "accuracy", "primary_metric": "accuracy", "label_list": LABELS}
    return {**base, **over}


def write_toy(root: Path) -> Path:
    """Data files and a user catalog in ``root`` (written here, not copied from any real data)."""
    data = root / "files"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.en.tsv").write_text("premise\thypothesis\tlabel\n" + "".join(
        f"{p} ({i})\t{h}\t{lab}\n" for i in range(24) for p, h, lab in [EN[i % 3]]), encoding="utf-8")
    (data / "test.lb.tsv").write_text("pair_id\tsatz1\tsatz2\tgold\n" + "".join(
        f"lb-{i}\t{p}\t{h}\t{lab}\n" for i in range(9) for p, h, lab in [LB[i % 3]]), encoding="utf-8")
    local_en = {"reader": "delimited", "paths": {"train": "files/train.en.tsv"}}
    catalog = {"tasks": {
        "toy_nli": _entry(local=local_en),
        "toy_nli_b": _entry(role="intermediate", local=local_en),
        "toy_nli_lb": _entry(role="target", languages=["lb"], splits=["test"], eval_split="test", train_task="toy_nli",
                             local={"reader": "delimited", "paths": {"test": "files/test.{lang}.tsv"},
                                    "options": {"columns": {"id": "pair_id", "text_a": "satz1", "text_b": "satz2",
                                                            "label": "gold"},
                                                "label_map": {0: "entailment", 1: "neutral", 2: "contradiction"}}}),
    }}
    path = root / "my_tasks.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- the catalog


def test_user_catalog_adds_tasks_in_an_unknown_language(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cat = write_toy(tmp_path)
    with caplog.at_level(logging.WARNING):
        added = use_catalogs([cat])
    assert {t.name for t in added} == {"toy_nli", "toy_nli_b", "toy_nli_lb"}
    assert "language(s) lb not in the language table" in caplog.text and "toy_nli_lb" in caplog.text
    spec = get_task("toy_nli_lb")
    assert spec.local is not None and spec.local.absolute and task_origin(spec) == cat.resolve()
    assert task_origin("xnli") is None and user_catalogs() == [cat.resolve()]
    ex = load_examples("toy_nli_lb", "lb", "test")  # paths relative to the catalog file; no data dir needed
    assert [e.id for e in ex[:2]] == ["lb-0", "lb-1"] and ex[1].label == "contradiction"
    assert ex[0].text_a == LB[0][0] and ex[0].text_b == LB[0][1]
    assert os.environ[CATALOG_ENV] == str(cat.resolve())  # worker processes started later see it
    assert use_catalogs([cat]) == []  # a file in use is not loaded twice


def test_env_variable_and_override_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    cat = write_toy(tmp_path / "a")
    over = tmp_path / "b" / "over.yaml"
    over.parent.mkdir()
    xnli = get_task("xnli").model_dump(exclude={"name"})
    over.write_text(yaml.safe_dump({"tasks": {"xnli": {**xnli, "description": "mine"}}}), encoding="utf-8")
    monkeypatch.setenv(CATALOG_ENV, os.pathsep.join([str(cat), str(over)]))
    reset_catalog()
    with caplog.at_level(logging.INFO, logger="xstilts.tasks.catalog"):
        assert get_task("xnli").description == "mine"
    assert "task 'xnli' from" in caplog.text and "overrides the one from the package" in caplog.text
    assert get_task("toy_nli_lb").languages == ["lb"] and task_origin("xnli") == over.resolve()


@pytest.mark.parametrize("entry, where, what", [
    (_entry(local={"reader": "delimited", "paths": {"train": "x.tsv"}, "options": {"colums": {}}}),
     "tasks.bad.local", "'colums'] are not options of reader 'delimited'"),
    (_entry(local={"reader": "conllu", "paths": {"train": "x.conllu"}}), "tasks.bad",
     "local.reader 'conllu' reads the tagging format, but the task's format is classification"),
    (_entry(local={"reader": "tsv", "paths": {"train": "x.tsv"}}), "tasks.bad.local", "reader 'tsv' is not a reader"),
    (_entry(lables=LABELS), "tasks.bad.lables", "unknown key; allowed keys here: name"),
    (_entry(metric="f1"), "tasks.bad", "metric 'f1'"),
])
def test_catalog_errors_name_file_task_and_key(tmp_path: Path, entry: dict, where: str, what: str) -> None:
    cat = tmp_path / "cat.yaml"
    cat.write_text(yaml.safe_dump({"tasks": {"bad": entry}}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        use_catalogs([cat])
    msg = str(info.value)
    assert str(cat) in msg and f"key '{where}" in msg and what in msg, msg


def test_catalog_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task catalog not found"):
        use_catalogs([tmp_path / "nope.yaml"])
    taken = tmp_path / "alias.yaml"
    taken.write_text(yaml.safe_dump({"tasks": {"mine": _entry(aliases=["paws-x"])}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"alias.yaml: key 'tasks.mine.aliases': alias\(es\) \['paws-x'\]"):
        use_catalogs([taken])


def test_env_variable_naming_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CATALOG_ENV, str(tmp_path / "gone.yaml"))
    reset_catalog()
    with pytest.raises(ConfigError, match=r"gone.yaml \(listed in \$XSTILTS_CATALOG\)"):
        get_task("xnli")


def test_spec_catalogs_key_is_relative_to_the_spec(tmp_path: Path) -> None:
    from xstilts.experiments import load_spec

    write_toy(tmp_path / "cat")
    spec_file = tmp_path / "spec.yaml"
    body = {"models": ["some-encoder"], "intermediate": {"baseline": None, "toy": "toy_nli_b"},
            "targets": ["toy_nli_lb"], "catalogs": ["cat/my_tasks.yaml"]}
    spec_file.write_text(yaml.safe_dump(body), encoding="utf-8")
    spec = load_spec(spec_file)
    assert spec.catalogs == [tmp_path / "cat" / "my_tasks.yaml"] and get_task("toy_nli_lb").languages == ["lb"]
    spec_file.write_text(yaml.safe_dump({**body, "catalogs": ["missing.yaml"]}), encoding="utf-8")
    reset_catalog()
    with pytest.raises(ConfigError, match=r"key 'catalogs\[0\]': task catalog not found"):
        load_spec(spec_file)


# ---------------------------------------------------------------------------- generic readers


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_delimited_reader_header_index_label_map_and_csv(tmp_path: Path) -> None:
    tsv = _write(tmp_path / "a.tsv", "id\tpremise\thypothesis\tlabel\n7\tA \"quoted\" text\tB\tentailment\n\n8\tC\tD\t\n")
    ex = read_delimited(tsv, label_list=LABELS)  # usual header names found; '' = unlabelled; bare quotes kept
    assert [(e.id, e.text_a, e.text_b, e.label) for e in ex] == [("7", 'A "quoted" text', "B", "entailment"),
                                                                 ("8", "C", "D", None)]
    raw = _write(tmp_path / "b.txt", "1\tx one\ty one\n0\tx two\ty two\n")
    ex = read_delimited(raw, header=False, columns={"label": 0, "text_a": 1, "text_b": 2},
                        label_map={1: "yes", 0: "no"}, label_list=["yes", "no"])
    assert [(e.id, e.text_a, e.label) for e in ex] == [("0", "x one", "yes"), ("1", "x two", "no")]
    csv_file = _write(tmp_path / "c.csv", 'sentence,gold\n"a, b",pos\nc,neg\n')
    ex = read_delimited(csv_file, columns={"text_a": "sentence", "label": "gold"})
    assert [(e.text_a, e.text_b, e.label) for e in ex] == [("a, b", None, "pos"), ("c", None, "neg")]


@pytest.mark.parametrize("text, options, line, what", [
    ("premise\thypothesis\tlabel\nx\ty\tentailment\nx\ty\n", {}, 3, "2 fields, expected 3 (as in the header)"),
    ("a\tb\tlabel\nx\ty\tentailment\n", {}, 1, "no text column: name it with the reader option columns"),
    ("a\tb\tlabel\nx\ty\tmaybe\n", {"columns": {"text_a": "a", "text_b": "b"}}, 2, "unknown label 'maybe'"),
    ("a\tlabel\nx\t5\n", {"columns": {"text_a": "a"}, "label_map": {"0": "entailment"}}, 2, "not in label_map"),
    ("a\tlabel\nx\t0\n", {"columns": {"text_a": "text"}}, 1, "no column 'text' in the header"),
    ("x\t0\n", {"header": False, "columns": {"text_a": 4}}, 1, "index 4 is out of range"),
])
def test_delimited_reader_errors_name_file_and_line(tmp_path: Path, text: str, options: dict, line: int,
                                                    what: str) -> None:
    path = _write(tmp_path / "d.tsv", text)
    with pytest.raises(DataError, match=re.escape(what)) as info:
        read_delimited(path, label_list=LABELS, **options)
    assert info.value.line == line and info.value.file == str(path)


def test_conllu_named_column_and_misc_feature(tmp_path: Path) -> None:
    rows = ["# sent_id = s1", "1-2\tIm\t_\t_\t_\t_\t_\t_\t_\t_", "1\tIn\tin\tADP\tAPPR\t_\t3\tcase\t_\tNER=O",
            "2\tdem\tder\tDET\tART\tCase=Dat\t3\tdet\t_\tSpaceAfter=No", "3\tHaus\tHaus\tNOUN\tNN\t_\t0\troot\t_\tNER=B-LOC",
            "3.1\tx\tx\tX\tX\t_\t_\t_\t2:x\t_", ""]
    f = _write(tmp_path / "x.conllu", "\n".join(rows) + "\n")
    assert read_conllu(f, column="DEPREL")[0].tags == ["case", "det", "root"]
    assert read_conllu(f, column="misc", feature="NER", missing="O")[0].tags == ["O", "O", "B-LOC"]
    assert read_conllu(f, column="feats", feature="Case", missing="_")[0].tags == ["_", "Dat", "_"]
    with pytest.raises(DataError, match="no NER=... in column MISC") as info:
        read_conllu(f, column="misc", feature="NER")
    assert info.value.line == 4
    with pytest.raises(DataError, match="unknown column option 'nerr'"):
        read_conllu(f, column="nerr")


def test_jsonl_label_map(tmp_path: Path) -> None:
    f = _write(tmp_path / "x.jsonl", '{"s1": "a", "s2": "b", "y": 2}\n{"s1": "c", "s2": "d", "y": null}\n')
    ex = read_jsonl(f, format="classification", fields={"text_a": "s1", "text_b": "s2", "label": "y"},
                    label_map={"2": "contradiction"}, label_list=LABELS)
    assert [e.label for e in ex] == ["contradiction", None]
    with pytest.raises(DataError, match="label 3 .* is not in label_map") as info:
        read_jsonl(_write(tmp_path / "y.jsonl", '{"s1": "a", "y": 3}\n'), format="classification",
                   fields={"text_a": "s1", "label": "y"}, label_map={"2": "contradiction"})
    assert info.value.line == 1


# ---------------------------------------------------------------------------- from the command line


def _cli(*args: str):
    from typer.testing import CliRunner

    from xstilts.cli import app

    result = CliRunner().invoke(app, list(args))
    return result


def _xstilts(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (nothing loaded but what the command itself loads)."""
    env = {k: v for k, v in os.environ.items() if k != CATALOG_ENV}
    return subprocess.run([sys.executable, "-m", "xstilts.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_cli_check_eval_with_another_tasks_head_and_rescore(tmp_path: Path, tiny_model_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cat = write_toy(tmp_path)
    (tmp_path / "no-data").mkdir()
    monkeypatch.setenv("XSTILTS_DATA_DIR", str(tmp_path / "no-data"))  # no packaged task has files here
    checked = _cli("data", "check", "--catalog", str(cat), "--json")
    assert checked.exit_code == 0, checked.output
    found = {(r["task"], r["language"], r["split"]): r["n_examples"] for r in json.loads(checked.stdout)["results"]}
    assert found == {("toy_nli", "en", "train"): 24, ("toy_nli_b", "en", "train"): 24, ("toy_nli_lb", "lb", "test"): 9}

    stage = tmp_path / "stage"
    trained = _cli("train", "--catalog", str(cat), "--model", str(tiny_model_dir), "--task", "toy_nli_b",
                   "--max-steps", "2", "--batch-size", "4", "--max-length", "32", "-o", str(stage))
    assert trained.exit_code == 0, trained.output
    reset_catalog()  # the eval command loads the catalog itself

    out = tmp_path / "eval"
    evaluated = _cli("eval", "--catalog", str(cat), "-m", str(stage / "model"), "--task", "toy_nli_lb",
                     "--head", "toy_nli_b", "-o", str(out), "--save-inputs", "--batch-size", "4")
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["head"] == "toy_nli_b" and metrics["settings"]["catalog"] == str(cat.resolve())
    assert set(metrics["per_language"]) == {"lb"} and metrics["n_examples"] == {"lb": 9}
    rows = [json.loads(line) for line in (out / "predictions" / "lb.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"lb-{i}" for i in range(9)]
    assert [r["gold"] for r in rows[:3]] == LABELS[:1] + ["contradiction", "neutral"]
    assert all(r["prediction"] in LABELS for r in rows)
    assert rows[0]["input"] == {"text_a": LB[0][0], "text_b": LB[0][1]}

    # rescore in a fresh process without --catalog: the recorded catalog is reloaded
    rescored = _xstilts("rescore", str(out), cwd=tmp_path)
    assert rescored.returncode == 0, rescored.stdout + rescored.stderr
    assert f"{metrics['per_language']['lb']['accuracy']:.2f}" in rescored.stdout
    # rows as older versions wrote them (id + prediction only) rescore to the same numbers
    (out / "predictions" / "lb.jsonl").write_text(
        "".join(json.dumps({"id": r["id"], "prediction": r["prediction"]}) + "\n" for r in rows), encoding="utf-8")
    from xstilts.evaluate import rescore

    assert rescore(out).per_language == metrics["per_language"]


@pytest.mark.soak
def test_cli_run_and_report_on_a_user_task(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A tiny run whose spec names the user catalog (catalogs:), then its report from the CLI
    (the unknown language is reported by code, without metadata)."""
    write_toy(tmp_path)
    hp = {"max_steps": 2, "batch_size": 4, "max_length": 32, "eval_every": 0, "eval_max_examples": 4}
    spec = {"models": [{"name": "tiny", "name_or_path": str(tiny_model_dir)}], "catalogs": ["my_tasks.yaml"],
            "intermediate": {"baseline": None, "toyb": "toy_nli_b"}, "targets": ["toy_nli_lb"], "seeds": [0],
            "hyperparameters": {"intermediate": hp, "target": hp, "eval": {"batch_size": 8}},
            "data_dir": str(tmp_path / "no-data"), "output_dir": str(tmp_path / "out")}
    (tmp_path / "no-data").mkdir()
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec), encoding="utf-8")
    ran = _xstilts("run", str(spec_file), cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    reported = _xstilts("report", str(tmp_path / "out"), "--catalog", str(tmp_path / "my_tasks.yaml"),
                        "--no-similarity", "--n-boot", "100", cwd=tmp_path)
    assert reported.returncode == 0, reported.stdout[-3000:] + reported.stderr[-3000:]
    md = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "toy_nli_lb" in md and "lb" in md
