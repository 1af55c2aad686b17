"""Embedding and Fisher similarity measures on the tiny random-weight model, with tiny data."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from xstilts.analysis.similarity import (
    SimilarityCache,
    cosine,
    empirical_fisher_diagonal,
    language_similarity_table,
    mean_embedding,
    task_similarity_table,
)
from tests.test_analysis import lang, task_spec
from xstilts.tasks.formats import get_format
from xstilts.tasks.types import (
    Answer,
    BitextExample,
    ClassificationExample,
    MultipleChoiceExample,
    QAExample,
    TaggingExample,
)

TEXTS = {
    "a": ["a man is walking his dog in the park", "the weather is cold today"],
    "b": ["a man is walking his dog in the park", "the weather is cold today"],
    "c": ["Berlin ist die Hauptstadt von Deutschland", "東京は日本の首都です"],
}


def tasks(name):
    return {"a": task_spec("a", "accuracy", "classification", domain="news", label_list=["x", "y"]),
            "b": task_spec("b", "accuracy", "classification", domain="news", label_list=["x", "y"]),
            "c": task_spec("c", "f1", "tagging", domain="wikipedia", label_list=["O", "B-PER"])}[name]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from xstilts.analysis.similarity import load_encoder_for_analysis

    return load_encoder_for_analysis(str(tiny_model_dir))


def test_input_text_covers_formats():
    def text(fmt, example):
        return get_format(fmt).input_text(example)

    assert text("classification", ClassificationExample("1", "p", "h", "e")) == "p h"
    assert text("multiple_choice", MultipleChoiceExample("1", "ctx", "q", ["x", "y"], 0)) == "ctx q x y"
    assert text("extractive_qa", QAExample("1", "the context", "a question?", [Answer("the", 0)])) == \
        "a question? the context"
    assert text("tagging", TaggingExample("1", ["a", "b"], ["O", "O"])) == "a b"
    assert text("retrieval", BitextExample("1", "Hallo", "Hello")) == "Hello"

    @dataclasses.dataclass
    class ToyExample:  # a format registered from outside the package: the default, every text field
        id: str
        claim: str
        evidence: list[str]
        label: int | None = None

    from tests.test_format_registry import FlagFormat

    assert FlagFormat().input_text(ToyExample("1", "a claim", ["one", "two"], 1)) == "a claim one two"
    with pytest.raises(TypeError):
        FlagFormat().input_text(object())


def test_text_embedding_similarity_and_cache(tiny, tmp_path):
    model, tok = tiny
    e = mean_embedding(TEXTS["a"], model, tok)
    assert e.shape == (model.config.hidden_size,) and np.isfinite(e).all()
    # batching and padding do not change the mean embedding
    assert np.allclose(e, mean_embedding(TEXTS["a"], model, tok, batch_size=1), atol=1e-5)
    cache = SimilarityCache(tmp_path / "sim.json")
    table = task_similarity_table([("a", "b"), ("a", "c")], TEXTS, tokenizer=tok, encoder=tiny, encoder_id="tiny",
                                  task_lookup=tasks, cache=cache)
    ab = table.set_index("target").loc["b"]
    ac = table.set_index("target").loc["c"]
    assert ab["text_emb"] == pytest.approx(1.0, abs=1e-6)
    assert ac["text_emb"] < ab["text_emb"]
    assert ab["subword_jaccard"] == pytest.approx(1.0) and ab["subword_weighted_jaccard"] == pytest.approx(1.0)
    assert ab["word_js"] == pytest.approx(0.0, abs=1e-9) and ac["word_js"] == pytest.approx(1.0)
    assert (ab["same_format"], ab["same_label_space"], ab["same_domain"]) == (1.0, 1.0, 1.0)
    assert (ac["same_format"], ac["same_label_space"], ac["same_domain"]) == (0.0, 0.0, 0.0)
    assert math.isnan(ab["task_emb"])
    cache.save()
    # a cached value is reused, not recomputed
    reloaded = SimilarityCache(tmp_path / "sim.json")
    key = next(k for k in reloaded._data if k.startswith("text_emb|tiny||a|c"))
    reloaded.set(key, 0.123)
    again = task_similarity_table([("a", "c")], TEXTS, encoder=tiny, encoder_id="tiny", task_lookup=tasks, cache=reloaded)
    assert again["text_emb"].iloc[0] == pytest.approx(0.123)


def test_empirical_fisher_known_answer():
    layer = torch.nn.Linear(3, 1, bias=False)
    xs = [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([3.0, 0.0, -1.0])]
    fisher = empirical_fisher_diagonal(layer, ({"x": x} for x in xs),
                                       lambda m, b: (m.weight * b["x"]).sum(), param_filter=lambda n: True)
    assert np.allclose(fisher, [(1 + 9) / 2, (4 + 0) / 2, (0 + 1) / 2])


def test_fisher_task_embedding_on_tiny_model(tiny, tmp_path):
    """TaskEmb through the real model/format layers: a classification head on the tiny encoder."""
    models = pytest.importorskip("xstilts.models")
    from xstilts.analysis.similarity import fisher_task_embedding
    from xstilts.tasks.catalog import get_task

    model, tok = tiny
    spec = get_task("xnli")
    mtm = models.MultiTaskModel(model, [models.HeadSpec(task="xnli", kind="classification", num_labels=len(spec.label_list))])
    mtm.save(tmp_path / "m", tokenizer=tok)
    labels = spec.label_list
    exs = [ClassificationExample(str(i), f"premise number {i}", f"hypothesis {i}", labels[i % len(labels)]) for i in range(4)]
    f1 = fisher_task_embedding(tmp_path / "m", "xnli", examples=exs, max_length=32)
    f2 = fisher_task_embedding(tmp_path / "m", "xnli", examples=exs, max_length=32)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    assert f1.shape == (n_params,) and (f1 >= 0).all() and f1.sum() > 0
    assert np.allclose(f1, f2)  # deterministic (eval mode, no dropout)
    assert cosine(f1, f2) == pytest.approx(1.0)
    other = fisher_task_embedding(tmp_path / "m", "xnli", examples=exs[:1], max_length=32)
    assert cosine(f1, other) < 1.0


def test_language_similarity_table(tiny):
    _, tok = tiny
    infos = {"en": lang("en", "English", "Indo-European", "Germanic", "Latin", 5),
             "de": lang("de", "German", "Indo-European", "Germanic", "Latin", 5),
             "ja": lang("ja", "Japanese", "Japonic", "Japanese", "Japanese", 5)}
    lookup = lambda c: infos.get(c)  # noqa: E731
    parallel = {"de": (["Der Hund ist in Berlin", "Hallo Welt"], ["The dog is in Berlin", "Hello world"]),
                "ja": (["犬は公園にいます"], ["The dog is in the park"]),
                "xx": (["the dog is in the park"], ["The dog is in the park"])}
    t = language_similarity_table(["de", "ja", "xx", "qq"], parallel, tokenizer=tok, lookup=lookup).set_index("language")
    assert (t.loc["de", "same_family"], t.loc["de", "same_script"]) == (1.0, 1.0)
    assert (t.loc["ja", "same_family"], t.loc["ja", "same_script"]) == (0.0, 0.0)
    assert math.isnan(t.loc["xx", "same_family"])  # no metadata: unknown, not 0
    assert t.loc["xx", "lexical_overlap"] == pytest.approx(1.0)
    assert t.loc["ja", "lexical_overlap"] == 0.0 < t.loc["de", "lexical_overlap"] < 1.0
    assert t.loc["de", "subword_jaccard"] > t.loc["ja", "subword_jaccard"]
    assert math.isnan(t.loc["qq", "lexical_overlap"])
