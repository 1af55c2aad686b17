"""Readers: each layout read from small files, and every error path with a broken file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xstilts.errors import DataError, UnknownNameError
from xstilts.tasks.readers import (
    READERS,
    get_reader,
    read_anli_csv,
    read_commonsenseqa_jsonl,
    read_conllu,
    read_cosmosqa_csv,
    read_file,
    read_jsonl,
    read_nli_tsv,
    read_pawsx_tsv,
    read_squad_json,
    read_tatoeba,
    read_token_tsv,
    read_xcopa_jsonl,
)
from xstilts.tasks.types import BitextExample, ClassificationExample, MultipleChoiceExample, QAExample, TaggingExample

NLI = ["entailment", "neutral", "contradiction"]
NER = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def squad(context: str, qas: list[dict]) -> str:
    return json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]})


def raises(match: str, *, line: int | None = None, record: str | None = None):
    """Context manager checking a DataError's message and location."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(DataError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = self.ctx.__exit__(*exc)
            err = self.info.value
            assert err.line == line, f"line {err.line} != {line}: {err}"
            if record is not None:
                assert err.record == record, f"record {err.record} != {record}: {err}"
            return out

    return _Check()


# ------------------------------------------------------------------ SQuAD JSON


def test_squad_json_reads_answers_and_v2(tmp_path: Path) -> None:
    ctx = "Paris is the capital of France."
    f = write(tmp_path, "q.json", squad(ctx, [
        {"id": "q1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "q2", "question": "Moon?", "answers": [], "is_impossible": True},
    ]))
    ex = read_squad_json(f)
    assert isinstance(ex[0], QAExample) and ex[0].answers[0].text == "Paris" and ex[0].title == "T"
    assert ex[1].is_impossible and ex[1].answers == []


def test_squad_json_errors(tmp_path: Path) -> None:
    ctx = "Paris is the capital of France."
    bad_start = write(tmp_path, "a.json", squad(ctx, [
        {"id": "q1", "question": "Capital?", "answers": [{"text": "France", "answer_start": 3}]}]))
    with raises("does not match the context at answer_start 3", record="id q1") as info:
        read_squad_json(bad_start)
    assert str(bad_start) in str(info.value) and "'France'" in str(info.value)
    with raises("invalid JSON", line=2):
        read_squad_json(write(tmp_path, "b.json", '{"data": [\n  {oops}\n]}'))
    with raises("file is empty"):
        read_squad_json(write(tmp_path, "c.json", "  \n"))
    with raises("no 'data' list"):
        read_squad_json(write(tmp_path, "d.json", "[1, 2]"))
    with raises("missing field 'context'", record="data[0].paragraphs[0]"):
        read_squad_json(write(tmp_path, "e.json", json.dumps({"data": [{"paragraphs": [{"qas": []}]}]})))
    with raises("no answers and is not marked is_impossible", record="id q9"):
        read_squad_json(write(tmp_path, "f.json", squad(ctx, [{"id": "q9", "question": "?", "answers": []}])))
    with raises("field 'answer_start' should be int", record="id q1"):
        read_squad_json(write(tmp_path, "g.json", squad(ctx, [
            {"id": "q1", "question": "?", "answers": [{"text": "Paris", "answer_start": "0"}]}])))
    with raises("file not found"):
        read_squad_json(tmp_path / "missing.json")


# ------------------------------------------------------------------ token TSV / CoNLL-U


def test_token_tsv_sentences_prefix_and_unlabelled(tmp_path: Path) -> None:
    f = write(tmp_path, "dev.tsv", "en:Sioux\tB-ORG\nen:Falls\tI-ORG\r\n\n\nen:is\tO \n  \nen:\tO\n")
    ex = read_token_tsv(f, label_list=NER, language="en", strip_lang_prefix=True)
    # whitespace-only lines separate sentences too; a bare "en:" token is not stripped
    assert [e.tokens for e in ex] == [["Sioux", "Falls"], ["is"], ["en:"]]
    assert ex[1].tags == ["O"] and ex[0].tags == ["B-ORG", "I-ORG"] and isinstance(ex[0], TaggingExample)
    kept = read_token_tsv(f, language="en")  # prefix kept unless asked
    assert kept[0].tokens[0] == "en:Sioux"
    test = read_token_tsv(write(tmp_path, "test.tsv", "Shortly\nafterward\n\nYes\n"), label_list=NER)
    assert [e.tags for e in test] == [None, None] and test[1].tokens == ["Yes"]


def test_token_tsv_errors(tmp_path: Path) -> None:
    with raises("3 tab-separated fields, expected 2", line=3):
        read_token_tsv(write(tmp_path, "a.tsv", "a\tO\n\nb\tO\textra\n"))
    with raises("1 field\\(s\\) where earlier lines have 2", line=2):
        read_token_tsv(write(tmp_path, "b.tsv", "a\tO\nb\n"))
    with raises("unknown tag 'B-MISC'", line=4):
        read_token_tsv(write(tmp_path, "c.tsv", "a\tO\nb\tB-PER\n\nc\tB-MISC\n"), label_list=NER)
    with raises("2 field\\(s\\) where earlier lines have 1", line=3):
        read_token_tsv(write(tmp_path, "d.tsv", "a\nb\nc\tO\n"))
    with raises("file is empty"):
        read_token_tsv(write(tmp_path, "e.tsv", "\n\n"))


def test_token_tsv_keep_builds_only_the_chosen_sentences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xstilts.tasks import readers

    text = "".join(f"w{i}\t{NER[i % len(NER)]}\nx{i}\tO\n\n\n" for i in range(30))
    f = write(tmp_path, "dev.tsv", text)
    full = read_token_tsv(f, label_list=NER)
    built: list[str] = []
    real = readers._tsv_sentence
    monkeypatch.setattr(readers, "_tsv_sentence", lambda path, raw, block, *a: built.append(block) or real(path, raw, block, *a))
    seen: list[int] = []
    chosen = read_token_tsv(f, label_list=NER, keep=lambda n: seen.append(n) or [2, 17, 29])
    assert seen == [30] and len(built) == 3  # told the count; split only the three it keeps
    assert chosen == [full[2], full[17], full[29]] and [e.id for e in chosen] == ["2", "17", "29"]
    assert read_token_tsv(f, label_list=NER, keep=lambda n: []) == []


def test_token_tsv_keep_checks_the_sentences_it_skips(tmp_path: Path) -> None:
    """A broken line in a sentence that is not kept gives the error a full read gives."""
    lines = "a\tO\n\nb\tO\nc\n\nd\tO\n"  # line 4 lacks its tab, in the second sentence
    with raises("1 field\\(s\\) where earlier lines have 2", line=4):
        read_token_tsv(write(tmp_path, "a.tsv", lines), keep=lambda n: [0])
    with raises("1 field\\(s\\) where earlier lines have 2", line=4):
        read_token_tsv(write(tmp_path, "b.tsv", lines))
    with raises("unknown tag 'B-MISC'", line=3):
        read_token_tsv(write(tmp_path, "c.tsv", "a\tO\n\nb\tB-MISC\n"), label_list=NER, keep=lambda n: [0])


CONLLU = """# sent_id = s1
# text = Don't go.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
3.1\tgone\tgo\tVERB\tVB\t_\t_\t_\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def test_conllu(tmp_path: Path) -> None:
    f = write(tmp_path, "x.conllu", CONLLU)
    ex = read_conllu(f, label_list=["AUX", "PART", "VERB", "PUNCT", "INTJ"])
    assert ex[0].id == "s1" and ex[0].tokens == ["Do", "n't", "go", "."]
    assert ex[0].tags == ["AUX", "PART", "VERB", "PUNCT"] and ex[1].tags == ["INTJ"]
    assert read_conllu(f, column="xpos")[0].tags == ["VBP", "RB", "VB", "."]
    with raises("unknown tag 'INTJ'", line=10):
        read_conllu(f, label_list=["AUX", "PART", "VERB", "PUNCT"])
    with raises("9 fields, expected 10", line=1):
        read_conllu(write(tmp_path, "b.conllu", "1\tA\ta\tX\tX\t_\t0\troot\t_\n"))
    with raises("token id 'x'", line=1):
        read_conllu(write(tmp_path, "c.conllu", "x\tA\ta\tX\tX\t_\t0\troot\t_\t_\n"))


# ------------------------------------------------------------------ multiple choice


def test_xcopa(tmp_path: Path) -> None:
    rows = [{"premise": "The man turned on the faucet.", "choice1": "The toilet filled.", "choice2": "Water flowed.",
             "question": "effect", "label": 1, "idx": 7},
            {"premise": "I ran.", "choice1": "I was late.", "choice2": "I was early.", "question": "cause", "label": 0}]
    ex = read_xcopa_jsonl(write(tmp_path, "v.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n"))
    assert isinstance(ex[0], MultipleChoiceExample)
    assert ex[0].id == "7" and ex[0].question == "What happened as a result?" and ex[0].label == 1
    assert ex[1].question == "What was the cause?" and ex[1].choices == ["I was late.", "I was early."]
    with raises("invalid JSON", line=2):
        read_xcopa_jsonl(write(tmp_path, "a.jsonl", json.dumps(rows[0]) + "\n{bad\n"))
    with raises("unknown question 'why'", line=1):
        read_xcopa_jsonl(write(tmp_path, "b.jsonl", json.dumps({**rows[0], "question": "why"})))
    with raises("unknown label 2", line=1):
        read_xcopa_jsonl(write(tmp_path, "c.jsonl", json.dumps({**rows[0], "label": 2})))
    with raises("missing field 'choice2'", line=1):
        read_xcopa_jsonl(write(tmp_path, "d.jsonl", json.dumps({k: v for k, v in rows[0].items() if k != "choice2"})))
    with raises("file is empty"):
        read_xcopa_jsonl(write(tmp_path, "e.jsonl", ""))


def test_commonsenseqa(tmp_path: Path) -> None:
    hf = {"id": "a1", "question": "Where?", "choices": {"label": ["A", "B", "C"], "text": ["bank", "mall", "zoo"]},
          "answerKey": "B"}
    orig = {"id": "a2", "question": {"stem": "Who?", "choices": [{"label": "A", "text": "x"}, {"label": "B", "text": "y"}]},
            "answerKey": "A"}
    ex = read_commonsenseqa_jsonl(write(tmp_path, "d.jsonl", json.dumps(hf) + "\n" + json.dumps(orig) + "\n"))
    assert ex[0].label == 1 and ex[0].choices == ["bank", "mall", "zoo"] and ex[0].context == ""
    assert ex[1].question == "Who?" and ex[1].label == 0
    with raises("unknown answerKey 'E'", line=1):
        read_commonsenseqa_jsonl(write(tmp_path, "a.jsonl", json.dumps({**hf, "answerKey": "E"})))
    with raises("missing field 'choices.text'", line=1):
        read_commonsenseqa_jsonl(write(tmp_path, "b.jsonl", json.dumps({**hf, "choices": {"label": ["A"]}})))


def test_cosmosqa(tmp_path: Path) -> None:
    header = "id,context,question,answer0,answer1,answer2,answer3,label\n"
    f = write(tmp_path, "v.csv", header + 'x1,"He said ""hi"",\nthen left.",Why?,a,b,c,d,2\n')
    (ex,) = read_cosmosqa_csv(f)
    assert ex.context == 'He said "hi",\nthen left.' and ex.choices == ["a", "b", "c", "d"] and ex.label == 2
    with raises("unknown label '4'", line=2, record="x1"):
        read_cosmosqa_csv(write(tmp_path, "a.csv", header + "x1,c,q,a,b,c,d,4\n"))
    with raises("missing column\\(s\\) \\['label'\\]", line=1):
        read_cosmosqa_csv(write(tmp_path, "b.csv", "id,context,question,answer0,answer1,answer2,answer3\n"))
    with raises("7 fields, expected 8", line=3):
        read_cosmosqa_csv(write(tmp_path, "c.csv", header + "x1,c,q,a,b,c,d,1\nx2,c,q,a,b,c,d\n"))
    with raises("no rows after the header"):
        read_cosmosqa_csv(write(tmp_path, "d.csv", header))


# ------------------------------------------------------------------ classification


def test_anli_csv(tmp_path: Path) -> None:
    header = "context,statement,reason,gold_label,uid\n"
    ex = read_anli_csv(write(tmp_path, "r1.csv", header + "C1,S1,r,e,u1\nC2,S2,r,c,u2\n"), label_list=NLI)
    assert [(e.id, e.label) for e in ex] == [("u1", "entailment"), ("u2", "contradiction")]
    assert isinstance(ex[0], ClassificationExample) and ex[0].text_a == "C1" and ex[0].text_b == "S1"
    with raises("unknown gold_label 'x'", line=3, record="u2"):
        read_anli_csv(write(tmp_path, "a.csv", header + "C1,S1,r,e,u1\nC2,S2,r,x,u2\n"))
    with raises("missing column\\(s\\) \\['gold_label'\\]", line=1):
        read_anli_csv(write(tmp_path, "b.csv", "context,statement\nC,S\n"))


def test_nli_tsv(tmp_path: Path) -> None:
    ex = read_nli_tsv(write(tmp_path, "t.tsv", 'premise\thypothesis\tlabel\nEr sagte "ja".\tEr sprach.\tentailment\n'),
                      label_list=NLI)
    assert len(ex) == 1 and ex[0].text_a == 'Er sagte "ja".' and ex[0].label == "entailment"
    with raises("2 tab-separated fields, expected 3", line=2):
        read_nli_tsv(write(tmp_path, "a.tsv", "a\tb\tneutral\na\tb\n"), label_list=NLI)
    with raises("unknown label 'contradictory'", line=1):
        read_nli_tsv(write(tmp_path, "b.tsv", "a\tb\tcontradictory\n"), label_list=NLI)


def test_pawsx_tsv(tmp_path: Path) -> None:
    head = "id\tsentence1\tsentence2\tlabel\n"
    ex = read_pawsx_tsv(write(tmp_path, "d.tsv", head + "4\tA\tB\t1\n6\tC\tD\t0\n"), label_list=["0", "1"])
    assert [(e.id, e.label) for e in ex] == [("4", "1"), ("6", "0")]
    with raises("unknown label '2'", line=3):
        read_pawsx_tsv(write(tmp_path, "a.tsv", head + "4\tA\tB\t1\n6\tC\tD\t2\n"), label_list=["0", "1"])
    with raises("missing column\\(s\\) \\['label'\\]", line=1):
        read_pawsx_tsv(write(tmp_path, "b.tsv", "id\tsentence1\tsentence2\n1\ta\tb\n"))
    with raises("3 tab-separated fields, expected 4", line=2):
        read_pawsx_tsv(write(tmp_path, "c.tsv", head + "4\tA\t1\n"))


# ------------------------------------------------------------------ retrieval


def test_tatoeba_pairs(tmp_path: Path) -> None:
    src = write(tmp_path, "tatoeba.deu-eng.deu", "Hallo.\nDanke.\n")
    write(tmp_path, "tatoeba.deu-eng.eng", "Hello.\nThanks.\n")
    ex = read_tatoeba(src)
    assert ex == [BitextExample("0", "Hallo.", "Hello."), BitextExample("1", "Danke.", "Thanks.")]
    write(tmp_path, "tatoeba.fra-eng.fra", "Salut.\nMerci.\n")
    write(tmp_path, "tatoeba.fra-eng.eng", "Hi.\n")
    with raises("2 lines but tatoeba.fra-eng.eng has 1"):
        read_tatoeba(tmp_path / "tatoeba.fra-eng.fra")
    write(tmp_path, "tatoeba.ita-eng.ita", "Ciao.\n")
    with raises("file not found"):
        read_tatoeba(tmp_path / "tatoeba.ita-eng.ita")
    write(tmp_path, "tatoeba.spa-eng.spa", "Hola.\n\n")
    write(tmp_path, "tatoeba.spa-eng.eng", "Hi.\nYes.\n")
    with raises("empty sentence", line=2):
        read_tatoeba(tmp_path / "tatoeba.spa-eng.spa")


# ------------------------------------------------------------------ generic JSONL


def test_generic_jsonl_every_format(tmp_path: Path) -> None:
    cls = read_jsonl(write(tmp_path, "c.jsonl", '{"premise": "a", "hypothesis": "b", "label": 1}\n'),
                     format="classification", fields={"text_a": "premise", "text_b": "hypothesis"},
                     label_list=["0", "1"])
    assert cls == [ClassificationExample("0", "a", "b", "1")]
    mc = read_jsonl(write(tmp_path, "m.jsonl", '{"id": "x", "question": "q", "choices": ["a", "b"], "label": "1"}\n'),
                    format="multiple_choice")
    assert mc[0].label == 1 and mc[0].context == ""
    qa = read_jsonl(write(tmp_path, "q.jsonl", json.dumps(
        {"id": "q", "context": "abc def", "question": "?", "answers": {"text": ["def"], "answer_start": [4]}})),
        format="extractive_qa")
    assert qa[0].answers[0].start == 4 and not qa[0].is_impossible
    tag = read_jsonl(write(tmp_path, "t.jsonl", '{"tokens": ["a", "b"], "tags": ["O", "B-PER"]}'), format="tagging",
                     label_list=NER)
    assert tag[0].tags == ["O", "B-PER"]
    bi = read_jsonl(write(tmp_path, "b.jsonl", '{"source": "Hallo", "target": "Hello"}'), format="retrieval")
    assert bi == [BitextExample("0", "Hallo", "Hello")]
    assert READERS["jsonl_tagging"](tmp_path / "t.jsonl")[0].tokens == ["a", "b"]


def test_generic_jsonl_errors(tmp_path: Path) -> None:
    with raises("missing field 'text_a'", line=2):
        read_jsonl(write(tmp_path, "a.jsonl", '{"text_a": "x"}\n{"text": "y"}\n'), format="classification")
    with raises("unknown label '2'", line=1):
        read_jsonl(write(tmp_path, "b.jsonl", '{"text_a": "x", "label": 2}'), format="classification", label_list=["0", "1"])
    with raises("'tags' should be a list as long as 'tokens'", line=1):
        read_jsonl(write(tmp_path, "c.jsonl", '{"tokens": ["a"], "tags": ["O", "O"]}'), format="tagging")
    with raises("does not match the context", line=1):
        read_jsonl(write(tmp_path, "d.jsonl", json.dumps(
            {"context": "abc", "question": "?", "answers": [{"text": "abc", "answer_start": 1}]})), format="extractive_qa")
    with raises("expected an index 0..1", line=1):
        read_jsonl(write(tmp_path, "e.jsonl", '{"question": "q", "choices": ["a", "b"], "label": 5}'),
                   format="multiple_choice")
    with raises("expected a JSON object", line=1):
        read_jsonl(write(tmp_path, "f.jsonl", "[1]"), format="retrieval")
    with raises("unknown format"):
        read_jsonl(write(tmp_path, "g.jsonl", "{}"), format="nope")


def test_reader_registry() -> None:
    assert {"squad_json", "token_tsv", "conllu", "xcopa_jsonl", "commonsenseqa_jsonl", "cosmosqa_csv", "anli_csv",
            "nli_tsv", "pawsx_tsv", "tatoeba", "jsonl_classification", "jsonl_multiple_choice", "jsonl_extractive_qa",
            "jsonl_tagging", "jsonl_retrieval"} <= set(READERS)
    with pytest.raises(UnknownNameError, match="squad_json"):
        get_reader("nope")


def test_read_file_on_real_data(shared_data: Path) -> None:
    ex = read_file("xcopa_jsonl", shared_data / "xcopa" / "val.et.jsonl")
    assert len(ex) == 100 and ex[0].question in ("What was the cause?", "What happened as a result?")
    zh = read_squad_json(shared_data / "xquad" / "xquad.zh.json")
    assert all(a.text == e.context[a.start:a.start + len(a.text)] for e in zh for a in e.answers)
