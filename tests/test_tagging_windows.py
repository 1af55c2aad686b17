"""Tagging: long sentences are split into windows before the model and every word is scored.

The reference is google-research/xtreme: ``utils_preprocess.py`` (``panx_tokenize_preprocess``
and ``udpos_tokenize_preprocess``) packs the words of a sentence greedily, in order, into
pieces of at most ``max_len - special tokens`` sub-tokens, starting a new piece when the next
word would not fit; ``third_party/run_tag.py`` then tags each piece and the pieces are joined
back into the sentence. The expected windows below are derived by hand from that rule.

An *oracle* decode is fed logits made from the gold labels (one-hot on each word's first
sub-token); it must score 100.0 whatever the sentence length.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest

from xstilts.tasks.formats import FeaturizeOptions, get_format
from xstilts.tasks.formats.tagging import sentence_windows
from xstilts.tasks.types import TaggingExample

TAGGING = get_format("tagging")
NER = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
POS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
       "SCONJ", "SYM", "VERB", "X"]


def oracle_logits(features, n_labels: int, decoy: int | None = None) -> np.ndarray:
    """Gold-derived model outputs: one-hot on each labelled (first) sub-token; ``decoy`` elsewhere."""
    width = max(len(f["input_ids"]) for f in features) + 2  # padded wider than any feature
    logits = np.zeros((len(features), width, n_labels), dtype=np.float32)
    for i, f in enumerate(features):
        for p, lab in enumerate(f["labels"]):
            if lab != -100:
                logits[i, p, lab] = 5.0
            elif decoy is not None:
                logits[i, p, decoy] = 9.0
    return logits


def oracle_predictions(examples, tokenizer, labels, max_length: int, decoy: int | None = None):
    feats = TAGGING.featurize(examples, tokenizer, FeaturizeOptions(max_length=max_length), labels)
    return feats, TAGGING.decode(examples, feats, {"logits": oracle_logits(feats, len(labels), decoy)}, labels)


# ----------------------------------------------------------------------------- the split rule

@pytest.mark.parametrize(
    "counts,budget,expected",
    [
        ([3, 3, 3, 3], 7, [(0, 2), (2, 4)]),  # 3+3=6 fits, +3=9 does not
        ([3, 3, 3, 3], 6, [(0, 2), (2, 4)]),  # exactly full windows
        ([1] * 5, 5, [(0, 5)]),  # fits in one window
        ([2, 10, 1], 5, [(0, 1), (1, 2), (2, 3)]),  # an over-long word is a window of its own
        ([4, 1, 4, 1], 5, [(0, 2), (2, 4)]),
        ([], 5, []),
    ],
)
def test_sentence_windows_follow_xtreme_greedy_split(counts, budget, expected):
    assert sentence_windows(counts, budget) == expected


def test_windows_cover_every_word_once_at_word_boundaries(tokenizer):
    words = [f"Wort{i}" for i in range(60)]  # several sub-tokens each
    ex = TaggingExample("long", words, ["O"] * 60)
    feats = TAGGING.featurize([ex], tokenizer, FeaturizeOptions(max_length=20), NER)
    assert len(feats) > 3 and all(f["example_index"] == 0 for f in feats)
    assert all(len(f["input_ids"]) <= 20 for f in feats)
    seen = [w for f in feats for w in dict.fromkeys(w for w in f["word_ids"] if w != -1)]
    assert seen == list(range(60))  # each word in exactly one window, in order: cut at word boundaries
    # each window is a standalone sentence: <s> ... </s>
    assert all(f["input_ids"][0] == tokenizer.cls_token_id and f["input_ids"][-1] == tokenizer.sep_token_id
               for f in feats)
    # the windows are exactly those of the greedy rule on the words' sub-token counts
    counts = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words]
    budget = 20 - tokenizer.num_special_tokens_to_add(pair=False)
    starts = [min(w for w in f["word_ids"] if w != -1) for f in feats]
    assert starts == [a for a, _ in sentence_windows(counts, budget)]


# ----------------------------------------------------------------------------- oracle = 100.0

def _synthetic_sentences(n: int, seed: int, labels: list[str]) -> list[TaggingExample]:
    """Long and short sentences mixing scripts, with random tags (valid IOB2 for NER labels)."""
    rng = random.Random(seed)
    vocab = ["Angela", "Merkel", "Donaudampfschifffahrtsgesellschaft", "北京", "是", "首都", "กรุงเทพมหานคร",
             "Москва", "ist", "und", ".", ",", "3776", "メートル", "القاهرة", "Zanzibar"]
    out = []
    for i in range(n):
        length = rng.choice([1, 5, 40, 150, 400])
        words = [rng.choice(vocab) for _ in range(length)]
        if labels is NER:
            tags, prev = [], "O"
            for _ in words:
                kind = rng.choice(["O", "O", "PER", "ORG", "LOC"])
                if kind == "O":
                    tag = "O"
                else:
                    tag = f"I-{kind}" if prev.endswith(kind) and rng.random() < 0.5 else f"B-{kind}"
                tags.append(tag)
                prev = tag
        else:
            tags = [rng.choice(labels) for _ in words]
        out.append(TaggingExample(f"s{i}", words, tags))
    return out


@pytest.mark.parametrize("labels,metric", [(NER, "ner_f1"), (POS, "pos")])
@pytest.mark.parametrize("max_length", [16, 32, 128])
def test_oracle_scores_100_on_long_sentences(tokenizer, labels, metric, max_length):
    examples = _synthetic_sentences(25, seed=max_length, labels=labels)
    feats, preds = oracle_predictions(examples, tokenizer, labels, max_length, decoy=labels.index(labels[-1]))
    assert len(feats) > len(examples)  # long sentences gave several windows
    assert all(preds[ex.id] == ex.tags for ex in examples)
    scores = TAGGING.score(examples, preds, metric)
    assert scores["f1"] == 100.0
    if metric == "pos":
        assert scores["accuracy"] == 100.0


def test_word_without_tokens_and_overlong_word_are_scored(tokenizer):
    """As XTREME: a word that yields no sub-token is fed as the unknown token; a word longer
    than a whole window gets a window of its own (truncated) and is still tagged."""
    huge = "".join(chr(0x4E00 + 37 * k) for k in range(80))  # ~80 sub-tokens: longer than a window
    words = ["Paris", "", "ist", huge, "schön", "."]
    tags = ["B-LOC", "B-PER", "O", "B-ORG", "O", "O"]
    ex = TaggingExample("edge", words, tags)
    feats, preds = oracle_predictions([ex], tokenizer, NER, max_length=16)
    assert preds == {"edge": tags}
    empty_first = next(p for f in feats for p, w in enumerate(f["word_ids"]) if w == 1)
    assert tokenizer.unk_token_id in [f["input_ids"][empty_first] for f in feats if 1 in f["word_ids"]]
    assert any(set(w for w in f["word_ids"] if w != -1) == {3} and len(f["input_ids"]) == 16 for f in feats)


def test_unlabelled_and_mixed_batches(tokenizer):
    long_words = ["Berlin"] + ["und"] * 40
    unlabelled = [TaggingExample("u", long_words, None)]
    feats = TAGGING.featurize(unlabelled, tokenizer, FeaturizeOptions(max_length=16))
    assert len(feats) > 1 and all("labels" not in f for f in feats)
    mixed = [TaggingExample("u", long_words, None), TaggingExample("t", ["Paris"], ["B-LOC"])]
    feats = TAGGING.featurize(mixed, tokenizer, FeaturizeOptions(max_length=16), NER)
    assert all(set(f["labels"]) == {-100} for f in feats if f["example_index"] == 0)
    logits = np.zeros((len(feats), 16, len(NER)), dtype=np.float32)
    preds = TAGGING.decode(mixed, feats, {"logits": logits}, NER)
    assert len(preds["u"]) == len(long_words) and preds["t"] == ["O"]


# ----------------------------------------------------------------------------- every local file

TASKS = {"panx": (NER, "ner_f1"), "udpos": (POS, "pos")}


def _oracle_file(path: Path, lang: str, labels: list[str], metric: str, tokenizer) -> tuple[int, int, dict]:
    from xstilts.tasks.readers import read_token_tsv

    examples = read_token_tsv(path, label_list=labels, language=lang, strip_lang_prefix=True)
    if examples[0].tags is None:
        return 0, 0, {}
    preds: dict[str, list[str]] = {}
    n_feats = 0
    for start in range(0, len(examples), 2000):  # bounded memory for the dense oracle logits
        chunk = examples[start:start + 2000]
        feats, chunk_preds = oracle_predictions(chunk, tokenizer, labels, max_length=128)
        n_feats += len(feats)
        covered: dict[int, set[int]] = {}
        for f in feats:  # every word has a token in some window (none decoded to the fallback tag)
            covered.setdefault(f["example_index"], set()).update(w for w in f["word_ids"] if w != -1)
        lost = [ex.id for i, ex in enumerate(chunk) if covered.get(i, set()) != set(range(len(ex.tokens)))]
        assert not lost, f"{path}: sentences with unscored words: {lost[:5]}"
        preds.update(chunk_preds)
    wrong = [ex.id for ex in examples if preds[ex.id] != ex.tags]
    assert not wrong, f"{path}: oracle decoding differs from gold on sentences {wrong[:5]}"
    return len(examples), n_feats, TAGGING.score(examples, preds, metric)


@pytest.mark.soak
@pytest.mark.parametrize("task", sorted(TASKS))
def test_oracle_scores_100_on_every_local_file(shared_data, tokenizer, task):
    """Oracle decoding scores 100.0 on EVERY labelled PAN-X / UD-POS file in the shared data
    (max_length 128, XTREME's; the PAN-X test files carry no labels and are skipped)."""
    labels, metric = TASKS[task]
    files = sorted((shared_data / task).glob("*.tsv"))
    if not files:
        pytest.skip(f"no {task} files under {shared_data}")
    t0 = time.perf_counter()
    scored = 0
    for path in files:
        lang = path.stem.split("-", 1)[1]
        n_ex, n_feats, scores = _oracle_file(path, lang, labels, metric, tokenizer)
        if not n_ex:
            continue
        scored += 1
        assert scores["f1"] == 100.0, f"{path}: {scores}"
        if metric == "pos":
            assert scores["accuracy"] == 100.0, f"{path}: {scores}"
    assert scored > 0
    print(f"{task}: {scored} labelled files of {len(files)} at 100.0 in {time.perf_counter() - t0:.0f} s")
