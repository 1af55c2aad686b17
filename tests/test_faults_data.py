"""Bad data that used to be accepted silently is a DataError naming the file and the record (issue 18, item 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xstilts.errors import DataError
from xstilts.tasks.formats import HubRows, get_format
from xstilts.tasks.readers import read_conllu, read_jsonl, read_squad_json


def _squad(path: Path, answer_start: int) -> Path:
    data = {"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q-ok", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "q-bad", "question": "What?", "answers": [{"text": "Paris", "answer_start": answer_start}]},
    ]}]}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_negative_answer_start_in_squad_json_names_file_and_question(tmp_path: Path) -> None:
    path = _squad(tmp_path / "dev.json", -1)
    with pytest.raises(DataError, match="negative answer_start") as err:
        read_squad_json(path)
    assert err.value.file == str(path) and err.value.record == "id q-bad"
    # with the answer check off (some MLQA copies), a negative offset is still refused
    with pytest.raises(DataError, match="negative answer_start"):
        read_squad_json(path, check_answers=False)
    assert [ex.id for ex in read_squad_json(_squad(tmp_path / "ok.json", 0))] == ["q-ok", "q-bad"]


def test_negative_answer_start_in_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    rows = [{"id": "a", "context": "abc", "question": "?", "answers": [{"text": "b", "answer_start": 1}]},
            {"id": "b", "context": "abc", "question": "?", "answers": {"text": ["a"], "answer_start": [-3]}}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="negative answer_start") as err:
        read_jsonl(path, format="extractive_qa")
    assert err.value.file == str(path) and err.value.line == 2 and err.value.record == "id b"


def test_negative_answer_start_in_hub_rows_names_the_source() -> None:
    rows = [{"id": "x-1", "context": "abc", "question": "?", "answers": {"text": ["a"], "answer_start": [-1]}}]
    with pytest.raises(DataError, match="negative answer_start") as err:
        get_format("extractive_qa").examples_from_hub(HubRows(rows, {}, {}, "some/dataset"), None, "en")
    assert err.value.file == "hub:some/dataset" and err.value.record == "id x-1"


def _conllu_line(i: int, form: str, upos: str) -> str:
    return "\t".join([str(i), form, form.lower() or "_", upos, "_", "_", "0", "root", "_", "_"])


def test_empty_form_in_conllu_names_file_line_and_sentence(tmp_path: Path) -> None:
    path = tmp_path / "ud.conllu"
    lines = ["# sent_id = s1", _conllu_line(1, "Hello", "INTJ"), _conllu_line(2, "world", "NOUN"), "",
             "# sent_id = s2", _conllu_line(1, "Good", "ADJ"), _conllu_line(2, "", "NOUN"), ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty FORM") as err:
        read_conllu(path)
    assert err.value.file == str(path) and err.value.line == 7 and err.value.record == "s2"
    path.write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    assert read_conllu(path)[0].tokens == ["Hello", "world"]


def test_whitespace_form_in_conllu_is_empty_too(tmp_path: Path) -> None:
    path = tmp_path / "ud.conllu"
    path.write_text(_conllu_line(1, " ", "PUNCT") + "\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty FORM") as err:
        read_conllu(path)
    assert err.value.line == 1
