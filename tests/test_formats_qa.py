"""Extractive QA format: windows, answer positions, the standard post-processing, SQuAD v2, real XQuAD."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xstilts.errors import ConfigError, XStiltsError
from xstilts.tasks.formats import FeaturizeOptions, get_format
from xstilts.tasks.types import Answer, QAExample

QA = get_format("extractive_qa")


def qa(id_: str, context: str, question: str, answer: str | None, nth: int = 0) -> QAExample:
    """An example whose answer is the ``nth`` occurrence of ``answer`` in ``context`` (None: unanswerable)."""
    if answer is None:
        return QAExample(id_, context, question, [], is_impossible=True)
    start = -1
    for _ in range(nth + 1):
        start = context.index(answer, start + 1)
    return QAExample(id_, context, question, [Answer(answer, start)])


def gold_logits(features, seed: int = 0, hot: float = 10.0) -> dict[str, np.ndarray]:
    """Small random logits everywhere, ``hot`` at each window's gold start/end (none in CLS-only windows)."""
    rng = np.random.default_rng(seed)
    width = max(len(f["input_ids"]) for f in features) + 3  # padded wider than any feature
    start = rng.normal(0, 1, (len(features), width))
    end = rng.normal(0, 1, (len(features), width))
    start[:, 0] = end[:, 0] = -hot  # the null answer is unlikely unless set below
    for i, f in enumerate(features):
        if f["start_positions"] != 0:
            start[i, f["start_positions"]] += hot
            end[i, f["end_positions"]] += hot
    return {"start_logits": start, "end_logits": end}


def test_round_trip_in_scripts_without_spaces(tokenizer):
    examples = [
        qa("en", "The Eiffel Tower, completed in 1889, is 330 metres tall.", "When was it completed?", "1889"),
        qa("zh0", "北京是中华人民共和国的首都，也是全国的政治和文化中心。", "中国的首都是哪里？", "北京"),
        qa("zh1", "北京是中华人民共和国的首都，也是全国的政治和文化中心。", "北京是哪个国家的首都？", "中华人民共和国"),
        qa("zh2", "北京是中华人民共和国的首都，也是全国的政治和文化中心。", "北京是什么中心？", "文化中心"),
        qa("th", "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย และเป็นเมืองที่มีประชากรมากที่สุด", "กรุงเทพมหานครเป็นเมืองหลวงของประเทศอะไร", "ประเทศไทย"),
        qa("ja", "富士山は日本で一番高い山で、標高は3776メートルです。", "富士山の標高は？", "3776メートル"),
    ]
    feats = QA.featurize(examples, tokenizer, FeaturizeOptions(max_length=64, doc_stride=16, max_query_length=24))
    assert len(feats) == len(examples)  # all short: one window each
    for f, ex in zip(feats, examples):
        offsets = f["offset_mapping"]
        s, e = f["start_positions"], f["end_positions"]
        assert 0 < s <= e and offsets[s][0] >= 0 and offsets[e][0] >= 0
        span = ex.context[offsets[s][0] : offsets[e][1]].strip()
        assert span == ex.answers[0].text
        # offsets are -1 on the question and special tokens, real char offsets on the context
        assert offsets[0] == [-1, -1] and offsets[-1] == [-1, -1]
        assert offsets[1] == [-1, -1]  # the first question token
    preds = QA.decode(examples, feats, gold_logits(feats))
    assert preds == {ex.id: ex.answers[0].text for ex in examples}
    assert QA.score(examples, preds, "squad") == {"exact_match": 100.0, "f1": 100.0}
    assert QA.score(examples[1:4], preds, "mlqa", language="zh")["exact_match"] == 100.0


@pytest.mark.parametrize(
    "filler,sentence,answer",
    [
        ("Sentence number {i} talks about nothing in particular. ", "The treasure is buried under the old oak tree.", "the old oak tree"),
        ("今天的天气很好，我们第{i}次去公园散步。", "长城是古代中国修建的军事防御工程。", "军事防御工程"),
    ],
)
def test_answer_only_in_second_window(tokenizer, filler, sentence, answer):
    context = "".join(filler.format(i=i) for i in range(6)) + sentence
    ex = qa("long", context, "Where is it?", answer)
    opts = FeaturizeOptions(max_length=64, doc_stride=24, max_query_length=16)
    feats = QA.featurize([ex], tokenizer, opts)
    assert len(feats) >= 2 and all(f["example_index"] == 0 for f in feats)
    assert max(len(f["input_ids"]) for f in feats) <= 64
    assert (feats[0]["start_positions"], feats[0]["end_positions"]) == (0, 0)  # not in the first window
    hits = [i for i, f in enumerate(feats) if f["start_positions"] != 0]
    assert hits and hits[0] >= 1
    # doc_stride is the step between window starts (XTREME / HF squad processor): window 1
    # starts at the 24th context token of window 0
    ctx0 = [o for o in feats[0]["offset_mapping"] if o[0] >= 0]
    ctx1 = [o for o in feats[1]["offset_mapping"] if o[0] >= 0]
    assert ctx1[: len(ctx0) - 24] == ctx0[24:]
    assert QA.decode([ex], feats, gold_logits(feats)) == {"long": answer}


def test_decode_uses_best_window_and_limits(tokenizer):
    context = "Alpha beta gamma delta. " * 12 + "The answer is Zanzibar."
    ex = qa("w", context, "What is the answer?", "Zanzibar")
    feats = QA.featurize([ex], tokenizer, FeaturizeOptions(max_length=48, doc_stride=16, max_query_length=8))
    outputs = gold_logits(feats)
    # a decoy span in the first window scores lower than the gold span
    outputs["start_logits"][0, 12] += 8.0
    outputs["end_logits"][0, 13] += 8.0
    assert QA.decode([ex], feats, outputs) == {"w": "Zanzibar"}
    # spans longer than max_answer_length are never chosen
    outputs = gold_logits(feats, hot=0.0)
    outputs["start_logits"][0, 10] = outputs["end_logits"][0, 30] = 50.0
    outputs["end_logits"][0, 11] = 20.0
    pred = QA.decode([ex], feats, outputs, max_answer_length=5)["w"]
    offs = feats[0]["offset_mapping"]
    assert pred == context[offs[10][0] : offs[11][1]].strip()
    assert QA.decode([ex], feats, outputs, max_answer_length=30)["w"] == context[offs[10][0] : offs[30][1]].strip()


def test_squad_v2_no_answer(tokenizer):
    context = "Marie Curie was born in Warsaw in 1867. She won two Nobel prizes."
    examples = [
        qa("yes", context, "Where was Marie Curie born?", "Warsaw"),
        qa("no", context, "Where did Marie Curie study music?", None),
    ]
    feats = QA.featurize(examples, tokenizer, FeaturizeOptions(max_length=64, doc_stride=16, max_query_length=16))
    assert (feats[1]["start_positions"], feats[1]["end_positions"]) == (0, 0)
    outputs = gold_logits(feats)
    outputs["start_logits"][1, 0] = outputs["end_logits"][1, 0] = 10.0  # the model says "no answer"
    preds = QA.decode(examples, feats, outputs)  # allow_no_answer inferred from is_impossible
    assert preds == {"yes": "Warsaw", "no": ""}
    scores = QA.score(examples, preds, "squad_v2")
    assert scores["exact_match"] == 100.0 and scores["f1"] == 100.0
    # SQuAD v1 behaviour: no null answer, the best span is returned
    v1 = QA.decode(examples, feats, outputs, allow_no_answer=False)
    assert v1["no"] != ""
    # the threshold moves the decision: null - best must exceed it
    best = max(
        outputs["start_logits"][1, i] + outputs["end_logits"][1, j]
        for i in range(len(feats[1]["input_ids"])) for j in range(i, len(feats[1]["input_ids"]))
        if feats[1]["offset_mapping"][i][0] >= 0 and feats[1]["offset_mapping"][j][0] >= 0 and j - i < 30
    )
    diff = 20.0 - best
    assert QA.decode(examples, feats, outputs, null_score_diff_threshold=diff - 0.01)["no"] == ""
    assert QA.decode(examples, feats, outputs, null_score_diff_threshold=diff + 0.01)["no"] == v1["no"]
    with pytest.raises(XStiltsError, match="squad_v2"):
        QA.score(examples, preds, "squad")


def test_question_truncation_and_stride_clamp(tokenizer, caplog):
    question = "Why " + "really " * 80 + "?"
    ex = qa("q", "A short context about rivers and lakes.", question, "rivers")
    feats = QA.featurize([ex], tokenizer, FeaturizeOptions(max_length=48, doc_stride=128, max_query_length=10))
    (f,) = feats
    n_question = sum(1 for o in f["offset_mapping"][1:] if o[0] < 0) - 3  # minus </s></s> and final </s>
    assert n_question == 10
    assert any("doc_stride" in r.message for r in caplog.records)  # 128 >= room: clamped, with a warning
    assert QA.decode([ex], feats, gold_logits(feats)) == {"q": "rivers"}
    with pytest.raises(ConfigError, match="max_length"):
        QA.featurize([ex], tokenizer, FeaturizeOptions(max_length=12, max_query_length=10))


def test_collate_and_missing_predictions(tokenizer):
    examples = [qa("a", "Short one.", "Q?", "one"), qa("b", "A much longer context, with many words in it.", "Q?", "words")]
    feats = QA.featurize(examples, tokenizer, FeaturizeOptions(max_length=64, doc_stride=16, max_query_length=8))
    batch = QA.collate(feats, tokenizer.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask", "start_positions", "end_positions"}
    assert batch["start_positions"].tolist() == [f["start_positions"] for f in feats]  # positions stay
    n0 = len(feats[0]["input_ids"])
    assert batch["input_ids"][0, n0:].eq(tokenizer.pad_token_id).all() and batch["attention_mask"][0, n0:].eq(0).all()
    with pytest.raises(XStiltsError, match="'b'"):
        QA.score(examples, {"a": "one"}, "squad")


def _xquad_examples(path, limit: int) -> list[QAExample]:
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            for q in para["qas"]:
                out.append(QAExample(q["id"], para["context"], q["question"],
                                     [Answer(a["text"], a["answer_start"]) for a in q["answers"]]))
    return out[:limit]


@pytest.mark.parametrize("lang", ["en", "zh", "th"])
def test_round_trip_real_xquad(shared_data, tokenizer, lang):
    """Gold positions decoded back reproduce XQuAD's answers (token granularity costs < 2 points)."""
    examples = _xquad_examples(shared_data / "xquad" / f"xquad.{lang}.json", 150)
    feats = QA.featurize(examples, tokenizer, FeaturizeOptions(max_length=128, doc_stride=32, max_query_length=32))
    assert len(feats) > len(examples)  # real paragraphs need several windows
    preds = QA.decode(examples, feats, gold_logits(feats))
    # zh is scored as MLQA does (character-level), the others as SQuAD
    scores = QA.score(examples, preds, "mlqa", language="zh") if lang == "zh" else QA.score(examples, preds, "squad")
    assert scores["f1"] >= 98.0 and scores["exact_match"] >= 97.0
