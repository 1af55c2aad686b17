"""The eval benchmark's padding accounting and its column in RESULTS.md."""

from __future__ import annotations

from benchmarks.eval_bench import padded_tokens
from benchmarks.report import render_markdown


def test_padded_tokens_per_language_order_vs_one_sorted_stream() -> None:
    groups = [[5, 1, 5, 1], [2, 2]]
    # per language, batches of 2 in order: [5,1] [5,1] [2,2] -> 10 + 10 + 4
    assert padded_tokens(groups, 2, sort=False) == 24
    # one stream sorted by length: [1,1] [2,2] [5,5] -> 2 + 4 + 10
    assert padded_tokens(groups, 2, sort=True) == 16
    # cut as predict cuts it: the long outlier alone ([1,1,1] [9] rather than [1,1] [1,9])
    assert padded_tokens([[1, 9, 1, 1]], 3, sort=True) == 3 + 9
    assert padded_tokens([[3]], 8, sort=True) == padded_tokens([[3]], 8, sort=False) == 3
    assert padded_tokens([[], []], 4, sort=False) == 0


def _side(**values: float) -> dict[str, dict[str, float]]:
    return {k: {"median": v, "min": v, "max": v} for k, v in values.items()}


def test_results_table_shows_the_padding_bound() -> None:
    row = {"name": "zero-shot eval fp32", "ratio_median": 1.5, "ratio_min": 1.4, "ratio_max": 1.6,
           "ours": _side(examples_per_s=30.0), "baseline": _side(examples_per_s=20.0, tokens=90.0, padded_tokens=150.0,
                                                                 sorted_padded_tokens=100.0),
           "settings": {"batch_size": 32}}
    results = {"command": "python -m benchmarks.run", "mode": "quick", "started": "now", "machine": {},
               "benchmarks": {"eval": [row]}}
    text = render_markdown(results)
    assert "| padding bound |" in text
    assert "1.50× (60 % → 90 % real)" in text
    # rows from before the counts were recorded keep rendering
    del row["baseline"]["tokens"]
    assert "| — |" in render_markdown(results)


def test_precisions_option_replaces_the_per_precision_comparisons_only() -> None:
    import pytest

    from benchmarks.run import MODES, with_precisions

    mode = with_precisions(MODES["default"], "fp32")
    assert mode["train"]["precisions"] == ["fp32"] and mode["eval"]["precisions"] == ["fp32"]
    assert "precisions" not in mode["retrieval"] and mode["store"] == MODES["default"]["store"]
    assert MODES["default"]["eval"]["precisions"] == ["fp32", "bf16"]  # the mode itself is untouched
    with pytest.raises(ValueError, match="fp32 and/or bf16"):
        with_precisions(MODES["default"], "fp16")


def test_a_variant_can_limit_its_precisions(monkeypatch) -> None:
    import benchmarks.run as run

    seen = []

    class _Comp:
        def summary(self):
            return {}

    def fake(bench, conf, reps, metric, **kwargs):
        seen.append((conf["precision"], conf.get("max_examples"), bool(conf.get("baseline_malloc")), kwargs["name"]))
        return _Comp()

    monkeypatch.setattr(run, "interleaved", fake)
    monkeypatch.setattr(run, "log", lambda msg: None)
    rows = run.bench_eval(run.MODES["default"]["eval"], None)
    assert len(rows) == len(seen) == 5
    malloc = [s for s in seen if s[2]]
    assert malloc == [("fp32", 20, True, "zero-shot eval e5-small fp32, 20 examples per language, vs baseline with "
                                         "xstilts's malloc settings (CPU)")]
    assert all("precisions" not in row["settings"] for row in rows)
