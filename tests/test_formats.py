"""Formats: classification, multiple choice, tagging, retrieval (featurise -> collate -> decode -> score)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xstilts.errors import UnknownNameError, XStiltsError
from xstilts.tasks.formats import FORMAT_NAMES, FeaturizeOptions, Format, get_format
from xstilts.tasks.types import BitextExample, ClassificationExample, MultipleChoiceExample, TaggingExample

NLI = ["entailment", "neutral", "contradiction"]
NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def one_hot_logits(n_rows: int, width: int, n_classes: int, hot: dict[tuple[int, int], int]) -> np.ndarray:
    logits = np.zeros((n_rows, width, n_classes), dtype=np.float32)
    for (row, pos), cls in hot.items():
        logits[row, pos, cls] = 5.0
    return logits


def test_get_format_registry():
    assert set(FORMAT_NAMES) == {"classification", "multiple_choice", "extractive_qa", "tagging", "retrieval"}
    for name in FORMAT_NAMES:
        fmt = get_format(name)
        assert isinstance(fmt, Format) and fmt.name == name
    assert get_format("retrieval").head_kind is None
    with pytest.raises(UnknownNameError, match="tagging"):
        get_format("taging")


# --------------------------------------------------------------------------- classification


def test_classification_pairs_label_mapping_and_decode(tokenizer):
    fmt = get_format("classification")
    examples = [
        ClassificationExample("a", "A man sleeps.", "A person rests.", "entailment"),
        ClassificationExample("b", "Ein Mann schläft.", "Niemand schläft.", "contradiction"),
        ClassificationExample("c", "男人在睡觉。", "他很累。", "neutral"),
    ]
    feats = fmt.featurize(examples, tokenizer, FeaturizeOptions(max_length=32), NLI)
    assert [f["labels"] for f in feats] == [0, 2, 1]
    assert [f["example_index"] for f in feats] == [0, 1, 2]
    # a pair: <s> A </s></s> B </s>
    ids = feats[0]["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids.count(tokenizer.sep_token_id) == 3
    logits = np.array([[0.1, 0.2, 3.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    preds = fmt.decode(examples, feats, {"logits": logits}, NLI)
    assert preds == {"a": "contradiction", "b": "entailment", "c": "neutral"}
    assert fmt.score(examples, preds, "accuracy") == {"accuracy": pytest.approx(100 / 3)}


def test_classification_truncates_and_handles_single_texts(tokenizer):
    fmt = get_format("classification")
    examples = [ClassificationExample("x", "word " * 200, None, "neutral"), ClassificationExample("y", "short", None, None)]
    feats = fmt.featurize(examples, tokenizer, FeaturizeOptions(max_length=16), NLI)
    assert len(feats[0]["input_ids"]) == 16 and feats[0]["input_ids"][-1] == tokenizer.sep_token_id
    assert feats[1]["labels"] == -100  # unlabelled example in a labelled set


def test_classification_errors(tokenizer):
    fmt = get_format("classification")
    with pytest.raises(XStiltsError, match=r"'bad'.*'maybe'"):
        fmt.featurize([ClassificationExample("bad", "a", "b", "maybe")], tokenizer, FeaturizeOptions(), NLI)
    with pytest.raises(XStiltsError, match="mix"):
        fmt.featurize([ClassificationExample("1", "a", "b"), ClassificationExample("2", "a")], tokenizer, FeaturizeOptions())
    examples = [ClassificationExample("p", "a", None, "neutral"), ClassificationExample("q", "b", None, "neutral")]
    with pytest.raises(XStiltsError, match="'q'"):
        fmt.score(examples, {"p": "neutral"}, "accuracy")
    with pytest.raises(UnknownNameError):
        fmt.score(examples, {"p": "neutral", "q": "neutral"}, "f1")


# --------------------------------------------------------------------------- multiple choice


def test_multiple_choice_shapes_and_decode(tokenizer):
    fmt = get_format("multiple_choice")
    examples = [
        MultipleChoiceExample("m1", "The man broke his toe.", "What was the cause?", ["He dropped a hammer on his foot.", "He got a hole in his sock."], 0),
        MultipleChoiceExample("m2", "Il pleuvait.", "What happened as a result?", ["Je suis resté dedans.", "Le soleil brillait très fort aujourd'hui."], 1),
        MultipleChoiceExample("m3", "", "Where do you put a book?", ["shelf", "ocean"], 0),  # no context (CommonsenseQA)
    ]
    feats = fmt.featurize(examples, tokenizer, FeaturizeOptions(max_length=48), None)
    assert all(len(f["input_ids"]) == 2 and len(f["attention_mask"]) == 2 for f in feats)
    assert [f["labels"] for f in feats] == [0, 1, 0]
    # first segment = context, second = question + choice
    first = tokenizer.decode(feats[0]["input_ids"][0], skip_special_tokens=False)
    assert first.index("The man broke") < first.index("What was the cause?") < first.index("hammer")
    assert "Where do you put a book?" in tokenizer.decode(feats[2]["input_ids"][0])

    batch = fmt.collate(feats, tokenizer.pad_token_id)
    longest = max(len(r) for f in feats for r in f["input_ids"])
    assert batch["input_ids"].shape == (3, 2, longest)
    assert batch["attention_mask"].shape == (3, 2, longest)
    assert batch["labels"].tolist() == [0, 1, 0]
    short = min(range(2), key=lambda c: len(feats[0]["input_ids"][c]))
    n = len(feats[0]["input_ids"][short])
    if n < longest:
        assert batch["input_ids"][0, short, n:].eq(tokenizer.pad_token_id).all()
        assert batch["attention_mask"][0, short, n:].eq(0).all()
    assert set(batch) == {"input_ids", "attention_mask", "labels"}

    preds = fmt.decode(examples, feats, {"logits": np.array([[2.0, 1.0], [0.0, 1.0], [-1.0, 3.0]])})
    assert preds == {"m1": 0, "m2": 1, "m3": 1}
    assert fmt.score(examples, preds, "accuracy")["accuracy"] == pytest.approx(200 / 3)


def test_multiple_choice_rejects_mixed_choice_counts(tokenizer):
    fmt = get_format("multiple_choice")
    examples = [MultipleChoiceExample("a", "c", "q", ["x", "y"], 0), MultipleChoiceExample("b", "c", "q", ["x", "y", "z"], 2)]
    feats = fmt.featurize(examples, tokenizer, FeaturizeOptions(max_length=16))
    with pytest.raises(XStiltsError, match="choices"):
        fmt.collate(feats, tokenizer.pad_token_id)
    with pytest.raises(XStiltsError, match="'bad'"):
        fmt.featurize([MultipleChoiceExample("bad", "c", "q", ["x"], 3)], tokenizer, FeaturizeOptions())


# --------------------------------------------------------------------------- tagging

WORDS = ["Angela", "Merkel", "besuchte", "die", "Donaudampfschifffahrtsgesellschaft", "in", "Wien", "."]
TAGS = ["B-PER", "I-PER", "O", "O", "O", "O", "B-LOC", "O"]


def test_tagging_labels_on_first_subtoken(tokenizer):
    fmt = get_format("tagging")
    ex = TaggingExample("s1", WORDS, TAGS)
    (feat,) = fmt.featurize([ex], tokenizer, FeaturizeOptions(max_length=64), NER)
    word_ids, labels = feat["word_ids"], feat["labels"]
    assert len(word_ids) == len(labels) == len(feat["input_ids"])
    assert word_ids[0] == -1 and word_ids[-1] == -1 and labels[0] == -100 and labels[-1] == -100
    # the long compound is split into several pieces but carries exactly one label
    pieces = [p for p, w in enumerate(word_ids) if w == 4]
    assert len(pieces) > 3
    assert [labels[p] for p in pieces] == [NER.index("O")] + [-100] * (len(pieces) - 1)
    # exactly one label per word, in word order, equal to the gold tag
    labelled = [(word_ids[p], NER[lab]) for p, lab in enumerate(labels) if lab != -100]
    assert labelled == list(enumerate(TAGS))

    (feat_all,) = fmt.featurize([ex], tokenizer, FeaturizeOptions(max_length=64, label_all_subtokens=True), NER)
    assert [feat_all["labels"][p] for p in pieces] == [NER.index("O")] * len(pieces)


def test_tagging_decode_one_tag_per_word_and_windows(tokenizer):
    fmt = get_format("tagging")
    long_words = ["Berlin"] + ["und"] * 40
    examples = [
        TaggingExample("s1", WORDS, TAGS),
        TaggingExample("s2", ["北京", "是", "首都"], ["B-LOC", "O", "O"]),
        TaggingExample("s3", long_words, ["B-LOC"] + ["O"] * 40),
    ]
    feats = fmt.featurize(examples, tokenizer, FeaturizeOptions(max_length=16), NER)
    # long sentences are split into windows of <= 16 tokens (XTREME), not truncated
    per_example = [[f for f in feats if f["example_index"] == i] for i in range(3)]
    assert len(per_example[1]) == 1 and len(per_example[2]) >= 3
    assert max(len(f["input_ids"]) for f in feats) <= 16
    width = max(len(f["input_ids"]) for f in feats)
    # logits: the gold tag on every first sub-token, a wrong tag (I-LOC) on the other pieces
    logits = np.zeros((len(feats), width, len(NER)), dtype=np.float32)
    for i, f in enumerate(feats):
        ex = examples[f["example_index"]]
        prev = -1
        for p, w in enumerate(f["word_ids"]):
            if w != -1:
                logits[i, p, NER.index(ex.tags[w]) if w != prev else NER.index("I-LOC")] = 5.0
            prev = w
    preds = fmt.decode(examples, feats, {"logits": logits}, NER)
    assert preds["s1"] == TAGS and preds["s2"] == ["B-LOC", "O", "O"]
    assert preds["s3"] == examples[2].tags  # every word scored, one tag per word

    batch = fmt.collate(feats, tokenizer.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    s2 = feats.index(per_example[1][0])
    n1 = len(feats[s2]["input_ids"])
    assert batch["labels"].shape == (len(feats), width)
    assert batch["labels"][s2, n1:].eq(-100).all() and batch["attention_mask"][s2, n1:].eq(0).all()
    assert batch["input_ids"][s2, n1:].eq(tokenizer.pad_token_id).all()

    scores = fmt.score(examples, preds, "ner_f1")
    assert scores["f1"] == pytest.approx(100.0)
    assert fmt.score(examples[:2], preds, "pos")["accuracy"] == pytest.approx(100.0)


def test_tagging_errors(tokenizer):
    fmt = get_format("tagging")
    with pytest.raises(XStiltsError, match="'s9'.*2 words but 1 tags"):
        fmt.featurize([TaggingExample("s9", ["a", "b"], ["O"])], tokenizer, FeaturizeOptions(), NER)
    with pytest.raises(XStiltsError, match="B-ORG"):
        fmt.featurize([TaggingExample("s9", ["a"], ["B-ORG"])], tokenizer, FeaturizeOptions(), NER)
    ex = TaggingExample("s1", ["a", "b"], ["O", "O"])
    with pytest.raises(XStiltsError, match="1 tags but the sentence has 2"):
        fmt.score([ex], {"s1": ["O"]}, "ner_f1")
    with pytest.raises(XStiltsError, match="'s1'"):
        fmt.score([ex], {}, "ner_f1")


def test_tagging_without_gold_tags(tokenizer):
    fmt = get_format("tagging")
    feats = fmt.featurize([TaggingExample("t", ["Hallo", "Welt"])], tokenizer, FeaturizeOptions(), NER)
    assert "labels" not in feats[0]
    assert set(fmt.collate(feats, tokenizer.pad_token_id)) == {"input_ids", "attention_mask"}


# --------------------------------------------------------------------------- retrieval


def test_retrieval_sides_decode_and_score(tokenizer):
    fmt = get_format("retrieval")
    examples = [BitextExample("0", "Ich bin müde.", "I am tired."), BitextExample("1", "Das Haus ist rot.", "The house is red.")]
    feats = fmt.featurize(examples, tokenizer, FeaturizeOptions(max_length=32))
    assert [(f["example_index"], f["side"]) for f in feats] == [(0, "source"), (0, "target"), (1, "source"), (1, "target")]
    assert tokenizer.decode(feats[3]["input_ids"], skip_special_tokens=True) == "The house is red."
    batch = fmt.collate(feats, tokenizer.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape[0] == 4
    assert batch["input_ids"].dtype == torch.long
    # embeddings: source 0 is closest to target 1 (a wrong retrieval), source 1 to target 1
    emb = np.array([[1.0, 0.1], [0.0, 1.0], [1.0, 0.8], [0.7, 0.7]])
    preds = fmt.decode(examples, feats, {"embeddings": emb})
    assert preds == {"0": "1", "1": "1"}
    assert fmt.score(examples, preds, "tatoeba") == {"accuracy": pytest.approx(50.0)}
    back = fmt.decode(examples, feats, {"embeddings": emb}, direction="target_to_source")
    assert back == {"0": "1", "1": "1"}  # both targets are nearest to source 1
    with pytest.raises(XStiltsError, match="'1'"):
        fmt.score(examples, {"0": "0"}, "tatoeba")


def test_collate_positions_and_dtypes(tokenizer):
    fmt = get_format("classification")
    feats = fmt.featurize(
        [ClassificationExample("a", "kurz", None, "neutral"), ClassificationExample("b", "ein viel längerer Satz hier", None, "entailment")],
        tokenizer, FeaturizeOptions(), NLI,
    )
    batch = fmt.collate(feats, tokenizer.pad_token_id)
    n0, n1 = len(feats[0]["input_ids"]), len(feats[1]["input_ids"])
    assert batch["input_ids"].shape == (2, max(n0, n1))
    assert batch["input_ids"][0, :n0].tolist() == feats[0]["input_ids"]  # content stays in place (right padding)
    assert batch["input_ids"][0, n0:].eq(tokenizer.pad_token_id).all() and batch["attention_mask"][0, n0:].eq(0).all()
    assert batch["labels"].tolist() == [1, 0]
    assert all(t.dtype == torch.long for t in batch.values())


def _read_token_tsv(path, limit: int) -> list[TaggingExample]:
    sentences, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if words:
                sentences.append(TaggingExample(f"{path.stem}-{len(sentences)}", words, tags))
                words, tags = [], []
            if len(sentences) >= limit:
                break
            continue
        word, tag = line.split("\t")[:2]
        words.append(word)
        tags.append(tag)
    return sentences


@pytest.mark.parametrize("lang", ["en", "zh", "ar"])
def test_tagging_round_trip_real_panx(shared_data, tokenizer, lang):
    """Gold tags put on the first sub-tokens of real PAN-X sentences decode back to the gold tags."""
    path = shared_data / "panx" / f"dev-{lang}.tsv"
    examples = _read_token_tsv(path, 300)
    labels = sorted({t for ex in examples for t in ex.tags})
    feats = get_format("tagging").featurize(examples, tokenizer, FeaturizeOptions(max_length=128), labels)
    width = max(len(f["input_ids"]) for f in feats)
    logits = np.zeros((len(feats), width, len(labels)), dtype=np.float32)
    for i, f in enumerate(feats):
        for p, lab in enumerate(f["labels"]):
            if lab != -100:
                logits[i, p, lab] = 1.0
        assert sum(lab != -100 for lab in f["labels"]) == len({w for w in f["word_ids"] if w != -1})
    preds = get_format("tagging").decode(examples, feats, {"logits": logits}, labels)
    assert all(len(preds[ex.id]) == len(ex.tokens) for ex in examples)
    # sentences longer than max_length are split into windows: every word is scored
    assert all(preds[ex.id] == ex.tags for ex in examples)
    assert get_format("tagging").score(examples, preds, "ner_f1")["f1"] == pytest.approx(100.0)


@pytest.mark.parametrize("name, example", [
    ("classification", ClassificationExample("u1", "a text")),
    ("multiple_choice", MultipleChoiceExample("u1", "ctx", "q", ["x", "y"])),
])
def test_scoring_unlabelled_examples_names_them(name, example):
    with pytest.raises(XStiltsError, match=rf"{name}: 1 examples have no gold label \(e.g. 'u1'\)"):
        get_format(name).score([example], {"u1": "x" if name == "classification" else 0}, "accuracy")
