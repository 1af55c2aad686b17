"""Predictions a researcher can read: every ``predictions/<lang>.jsonl`` row carries the example's
id and gold label / answer (and, asked for, its input text); ``rescore`` reads new and old rows.

Tasks of every format come from a user catalog over small files written here (tagging from
CoNLL-U with the tag in MISC, QA from SQuAD JSON, multiple choice and retrieval from JSONL).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from xstilts.evaluate import rescore, zero_shot_eval
from xstilts.tasks.catalog import use_catalogs
from xstilts.tasks.formats import get_format
from xstilts.tasks.loading import readable_rows
from xstilts.tasks.types import Answer, BitextExample, ClassificationExample, MultipleChoiceExample, QAExample, TaggingExample

NER = ["O", "B-LOC", "I-LOC"]


pytestmark = pytest.mark.usefixtures("clean_catalog")


def _task(fmt: str, metric: str, reader: str, path: str, **extra) -> dict:
    return {"format": fmt, "role": "target", "languages": ["de"], "splits": ["test"], "eval_split": "test",
            "metric": metric, "primary_metric": "f1" if metric in ("ner_f1", "squad") else "accuracy",
            "local": {"reader": reader, "paths": {"test": path}, **extra}}


def write_catalog(root: Path) -> Path:
    conllu = []
    for i, (words, tags) in enumerate([(["Ich", "wohne", "in", "Berlin", "."], ["O", "O", "O", "B-LOC", "O"]),
                                       (["Neu", "Delhi", "ist", "groß"], ["B-LOC", "I-LOC", "O", "O"])]):
        conllu.append(f"# sent_id = s{i}")
        conllu += [f"{j + 1}\t{w}\t_\tX\t_\t_\t0\tdep\t_\t" + ("_" if t == "O" else f"NER={t}")
                   for j, (w, t) in enumerate(zip(words, tags))]
        conllu.append("")
    (root / "ner.de.conllu").write_text("\n".join(conllu) + "\n", encoding="utf-8")
    context = "Berlin ist die Hauptstadt von Deutschland."
    squad = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "Was ist Berlin?", "answers": [{"text": "die Hauptstadt", "answer_start": 11}]},
        {"id": "q2", "question": "Wovon?", "answers": [{"text": "Deutschland", "answer_start": 30}]}]}]}]}
    (root / "qa.de.json").write_text(json.dumps(squad), encoding="utf-8")
    mc = [{"id": "m1", "context": "Es regnet.", "question": "Was folgt?", "choices": ["Nass", "Trocken"], "label": 0},
          {"id": "m2", "context": "Es ist heiß.", "question": "Was folgt?", "choices": ["Kalt", "Warm"], "label": 1}]
    (root / "mc.de.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc), encoding="utf-8")
    ret = [{"id": str(i), "source": s, "target": t} for i, (s, t) in
           enumerate([("Guten Morgen", "Good morning"), ("Danke schön", "Thank you"), ("Ein Hund", "A dog")])]
    (root / "ret.de.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ret), encoding="utf-8")
    catalog = {"tasks": {
        "rd_ner": {**_task("tagging", "ner_f1", "conllu", "ner.{lang}.conllu",
                           options={"column": "misc", "feature": "NER", "missing": "O"}), "label_list": NER},
        "rd_qa": _task("extractive_qa", "squad", "squad_json", "qa.{lang}.json"),
        "rd_mc": _task("multiple_choice", "accuracy", "jsonl_multiple_choice", "mc.{lang}.jsonl"),
        "rd_ret": _task("retrieval", "tatoeba", "jsonl_retrieval", "ret.{lang}.jsonl"),
    }}
    path = root / "readable.yaml"
    path.write_text(yaml.safe_dump(catalog), encoding="utf-8")
    return path


def test_gold_and_input_of_every_example_type() -> None:
    def gold(fmt, example):
        return get_format(fmt).gold_json(example)

    assert gold("classification", ClassificationExample("a", "x", "y", "neutral")) == "neutral"
    assert gold("multiple_choice", MultipleChoiceExample("b", "c", "q", ["p", "q"], 1)) == 1
    qa = QAExample("c", "ctx", "q?", [Answer("ctx", 0), Answer("ct", 0)])
    assert gold("extractive_qa", qa) == ["ctx", "ct"]
    assert gold("extractive_qa", QAExample("d", "c", "q", is_impossible=True)) == []
    assert gold("tagging", TaggingExample("e", ["a"], ["O"])) == ["O"]
    assert gold("tagging", TaggingExample("f", ["a"])) is None
    assert gold("retrieval", BitextExample("7", "s", "t")) == "7"
    assert get_format("extractive_qa").input_json(qa) == {"question": "q?", "context": "ctx"}
    assert get_format("classification").input_json(ClassificationExample("a", "x")) == {"text_a": "x"}
    assert get_format("tagging").input_json(TaggingExample("e", ["a", "b"], ["O", "O"])) == {"tokens": ["a", "b"]}
    assert get_format("retrieval").input_json(BitextExample("7", "s", "t")) == {"source": "s", "target": "t"}
    rows = readable_rows([ClassificationExample("a", "x", None, "yes")],
                         [{"id": "a", "prediction": "no"}, {"id": "zz", "prediction": "yes"}],
                         fmt=get_format("classification"), inputs=True)
    assert rows == [{"id": "a", "prediction": "no", "gold": "yes", "input": {"text_a": "x"}},
                    {"id": "zz", "prediction": "yes", "gold": None}]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    from xstilts.models import HeadSpec, MultiTaskModel

    model, tok = MultiTaskModel.from_pretrained(str(tiny_model_dir))
    model.add_head(HeadSpec(task="rd_ner", kind="tagging", num_labels=len(NER), labels=NER))
    model.add_head(HeadSpec(task="rd_qa", kind="extractive_qa"))
    model.add_head(HeadSpec(task="rd_mc", kind="multiple_choice", num_labels=1))
    d = tmp_path_factory.mktemp("readable-model") / "model"
    model.save(d, tokenizer=tok)
    return d


@pytest.mark.parametrize("task, gold, inp", [
    ("rd_ner", [["O", "O", "O", "B-LOC", "O"], ["B-LOC", "I-LOC", "O", "O"]], {"tokens": ["Ich", "wohne", "in", "Berlin", "."]}),
    ("rd_qa", [["die Hauptstadt"], ["Deutschland"]], {"question": "Was ist Berlin?",
                                                       "context": "Berlin ist die Hauptstadt von Deutschland."}),
    ("rd_mc", [0, 1], {"context": "Es regnet.", "question": "Was folgt?", "choices": ["Nass", "Trocken"]}),
    ("rd_ret", ["0", "1", "2"], {"source": "Guten Morgen", "target": "Good morning"}),
])
def test_prediction_rows_are_readable_and_rescore_old_and_new(task: str, gold: list, inp: dict, model_dir: Path,
                                                              tmp_path: Path) -> None:
    use_catalogs([write_catalog(tmp_path)])
    out = tmp_path / "out"
    rep = zero_shot_eval(str(model_dir), task, "de", out_dir=out, batch_size=4, save_inputs=True,
                         **({"max_length": 64} if task == "rd_qa" else {}))
    path = out / "predictions" / "de.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["gold"] for r in rows] == gold and rows[0]["input"] == inp
    assert all({"id", "prediction", "gold", "input"} <= set(r) for r in rows)
    assert rescore(out).per_language == rep.per_language
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("gold", "input")}) + "\n"
                            for r in rows), encoding="utf-8")  # as older versions wrote them
    assert rescore(out).per_language == rep.per_language


def test_inputs_only_when_asked(model_dir: Path, tmp_path: Path) -> None:
    use_catalogs([write_catalog(tmp_path)])
    out = tmp_path / "out"
    zero_shot_eval(str(model_dir), "rd_mc", "de", out_dir=out, batch_size=4)
    rows = [json.loads(line) for line in (out / "predictions" / "de.jsonl").read_text().splitlines()]
    assert [set(r) for r in rows] == [{"id", "prediction", "gold"}] * 2 and [r["id"] for r in rows] == ["m1", "m2"]


def test_spec_eval_option_save_inputs_reaches_the_eval_stage(tmp_path: Path) -> None:
    from xstilts.experiments import load_spec, plan_stages

    spec_file = Path(__file__).resolve().parents[1] / "docs" / "byod" / "spec.yaml"
    over = {"output_dir": str(tmp_path / "o"), "hyperparameters": {"eval": {"save_inputs": True}}}
    (stage,) = plan_stages(load_spec(spec_file, overrides=over)).of_kind("eval")
    assert stage.settings["save_inputs"] is True
    (plain,) = plan_stages(load_spec(spec_file, overrides={"output_dir": str(tmp_path / "o")})).of_kind("eval")
    assert "save_inputs" not in plain.settings and plain.id != stage.id
