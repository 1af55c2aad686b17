"""`xstilts data check` on the real data in ../shared/data: every dataset of PROVENANCE.md is
found and counted, and the counts match the sizes stated there (or, where PROVENANCE.md is
approximate, an independent count of the files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xstilts.cli import app

# Sentence counts of the XTREME token-TSV files, counted independently of the reader
# (blank-line separated blocks, streamed line by line).
PANX_TRAIN = {'af': 5000, 'ar': 20000, 'az': 10000, 'bg': 20000, 'bn': 10000, 'de': 20000, 'el': 20000, 'en': 20000, 'es': 20000, 'et': 15000, 'eu': 10000, 'fa': 20000, 'fi': 20000, 'fr': 20000, 'gu': 100, 'he': 20000, 'hi': 5000, 'hu': 20000, 'id': 20000, 'it': 20000, 'ja': 20000, 'jv': 100, 'ka': 10000, 'kk': 1000, 'ko': 20000, 'lt': 10000, 'ml': 10000, 'mr': 5000, 'ms': 20000, 'my': 100, 'nl': 20000, 'pa': 100, 'pl': 20000, 'pt': 20000, 'qu': 100, 'ro': 20000, 'ru': 20000, 'sw': 1000, 'ta': 15000, 'te': 1000, 'tl': 10000, 'tr': 20000, 'uk': 20000, 'ur': 20000, 'vi': 20000, 'yo': 100, 'zh': 20000}
PANX_DEV = {'af': 1000, 'ar': 10000, 'az': 1000, 'bg': 10000, 'bn': 1000, 'de': 10000, 'el': 10000, 'en': 10000, 'es': 10000, 'et': 10000, 'eu': 10000, 'fa': 10000, 'fi': 10000, 'fr': 10000, 'gu': 100, 'he': 10000, 'hi': 1000, 'hu': 10000, 'id': 10000, 'it': 10000, 'ja': 10000, 'jv': 100, 'ka': 10000, 'kk': 1000, 'ko': 10000, 'lt': 10000, 'ml': 1000, 'mr': 1000, 'ms': 1000, 'my': 100, 'nl': 10000, 'pa': 100, 'pl': 10000, 'pt': 10000, 'qu': 100, 'ro': 10000, 'ru': 10000, 'sw': 1000, 'ta': 1000, 'te': 1000, 'tl': 1000, 'tr': 10000, 'uk': 10000, 'ur': 1000, 'vi': 10000, 'yo': 100, 'zh': 10000}
PANX_TEST = {'af': 1000, 'ar': 10000, 'az': 1000, 'bg': 10000, 'bn': 1000, 'de': 10000, 'el': 10000, 'en': 10000, 'es': 10000, 'et': 10000, 'eu': 10000, 'fa': 10000, 'fi': 10000, 'fr': 10000, 'gu': 100, 'he': 10000, 'hi': 1000, 'hu': 10000, 'id': 10000, 'it': 10000, 'ja': 10000, 'jv': 100, 'ka': 10000, 'kk': 1000, 'ko': 10000, 'lt': 10000, 'ml': 1000, 'mr': 1000, 'ms': 1000, 'my': 100, 'nl': 10000, 'pa': 100, 'pl': 10000, 'pt': 10000, 'qu': 100, 'ro': 10000, 'ru': 10000, 'sw': 1000, 'ta': 1000, 'te': 1000, 'th': 10000, 'tl': 1000, 'tr': 10000, 'uk': 10000, 'ur': 1000, 'vi': 10000, 'yo': 100, 'zh': 10000}
UDPOS_TRAIN = {'af': 1315, 'ar': 6075, 'bg': 8907, 'el': 1662, 'en': 21253, 'eu': 5396, 'fa': 4798, 'fi': 27198, 'he': 5241, 'hu': 910, 'id': 4477, 'ja': 7125, 'kk': 31, 'lt': 2494, 'mr': 373, 'nl': 18051, 'ta': 400, 'te': 1051, 'tr': 3664, 'uk': 5496, 'ur': 4043, 'vi': 1400, 'wo': 1188, 'zh': 7994}
UDPOS_DEV = {'af': 194, 'ar': 909, 'bg': 1115, 'de': 19233, 'el': 403, 'en': 3974, 'es': 3054, 'et': 3125, 'eu': 1798, 'fa': 599, 'fi': 3239, 'fr': 2903, 'he': 484, 'hi': 1659, 'hu': 441, 'id': 559, 'it': 2278, 'ja': 511, 'ko': 3016, 'lt': 672, 'mr': 46, 'nl': 1394, 'pl': 3960, 'pt': 1770, 'ro': 2247, 'ru': 8108, 'ta': 80, 'te': 131, 'tr': 988, 'uk': 672, 'ur': 552, 'vi': 800, 'wo': 449, 'zh': 1000}
UDPOS_TEST = {'af': 425, 'ar': 1680, 'bg': 1116, 'el': 456, 'en': 5440, 'es': 3147, 'et': 3760, 'eu': 1799, 'fa': 600, 'fi': 4422, 'fr': 5009, 'he': 491, 'hi': 2684, 'hu': 449, 'id': 1557, 'it': 3518, 'ja': 2372, 'kk': 1047, 'ko': 4276, 'lt': 739, 'mr': 47, 'nl': 1471, 'pl': 4942, 'pt': 2681, 'ro': 2272, 'ru': 8976, 'ta': 120, 'te': 146, 'th': 1000, 'tl': 55, 'tr': 4785, 'uk': 892, 'ur': 535, 'vi': 800, 'wo': 470, 'yo': 100, 'zh': 3455}

TYDIQA_DEV = {"ar": 921, "bn": 113, "en": 440, "fi": 782, "id": 565, "ko": 276, "ru": 812, "sw": 499, "te": 669}
TYDIQA_TRAIN = {"en": 3696, "ko": 1625, "sw": 2755}
XQUAD_LANGS = ["ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"]
XCOPA_LANGS = ["et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh"]


@pytest.fixture(scope="module")
def report(shared_data: Path) -> dict:
    """One full `xstilts data check --json` over the shared data (a few seconds)."""
    result = CliRunner().invoke(app, ["data", "check", "--data-dir", str(shared_data), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def counts(report: dict) -> dict[tuple[str, str, str], int]:
    return {(r["task"], r["language"], r["split"]): r["n_examples"] for r in report["results"]}


def _task(counts: dict, task: str, split: str) -> dict[str, int]:
    return {lang: n for (t, lang, s), n in counts.items() if t == task and s == split}


def test_no_problems_in_the_real_data(report: dict) -> None:
    assert report["n_problems"] == 0
    assert all(r["error"] is None for r in report["results"])
    found = {r["task"] for r in report["results"]}
    # every folder of PROVENANCE.md, plus the English views of the target tasks and ANLI by round
    assert found == {"xquad", "xcopa", "tatoeba", "panx", "udpos", "tydiqa", "xnli", "pawsx", "anli", "cosmosqa",
                     "commonsenseqa", "panx_en", "udpos_en", "tydiqa_en", "anli_r1", "anli_r2", "anli_r3"}


def test_xquad_1190_per_language(counts: dict) -> None:
    assert _task(counts, "xquad", "test") == {lang: 1190 for lang in XQUAD_LANGS}


def test_xcopa_val_100_test_500(counts: dict) -> None:
    assert _task(counts, "xcopa", "dev") == {lang: 100 for lang in XCOPA_LANGS}
    assert _task(counts, "xcopa", "test") == {lang: 500 for lang in XCOPA_LANGS}


def test_tatoeba_112_languages_aligned(counts: dict, shared_data: Path) -> None:
    tat = _task(counts, "tatoeba", "test")
    assert len(tat) == 112
    # PROVENANCE.md says "1000 pairs each"; the LASER files hold at most 1,000 pairs and
    # 40 languages fewer (e.g. amh 168). Each count equals the line count of both files.
    from xstilts.tasks import get_task

    codes = get_task("tatoeba").local.lang_codes
    for lang, n in tat.items():
        for side in (codes[lang], "eng"):
            with open(shared_data / "tatoeba" / f"tatoeba.{codes[lang]}-eng.{side}", encoding="utf-8") as fh:
                assert sum(1 for _ in fh) == n, (lang, side)
    assert sum(1 for n in tat.values() if n == 1000) == 72
    assert max(tat.values()) == 1000 and tat["am"] == 168


def test_anli_rounds(report: dict) -> None:
    (row,) = [r for r in report["results"] if r["task"] == "anli"]
    # PROVENANCE.md says 1000/1000/1200; the R3 analysis CSV holds 1,198 records (1,204 lines
    # because three contexts contain newlines; 1,198 distinct uids).
    assert row["file_counts"] == {"anli/dev.r1.csv": 1000, "anli/dev.r2.csv": 1000, "anli/dev.r3.csv": 1198}
    assert row["n_examples"] == 3198


def test_english_multiple_choice_and_nli_sizes(counts: dict) -> None:
    assert counts[("cosmosqa", "en", "dev")] == 2985
    assert counts[("commonsenseqa", "en", "dev")] == 1221
    assert counts[("xnli", "de", "test")] == 5010
    assert counts[("xnli", "de", "dev")] == 2495
    assert counts[("pawsx", "de", "dev")] == 2000
    assert counts[("pawsx", "de", "test")] == 2000


def test_tydiqa_per_language(counts: dict) -> None:
    assert _task(counts, "tydiqa", "dev") == TYDIQA_DEV
    assert _task(counts, "tydiqa", "train") == TYDIQA_TRAIN
    assert counts[("tydiqa_en", "en", "train")] == 3696


@pytest.mark.parametrize(
    "task, split, expected",
    [("panx", "train", PANX_TRAIN), ("panx", "dev", PANX_DEV), ("panx", "test", PANX_TEST),
     ("udpos", "train", UDPOS_TRAIN), ("udpos", "dev", UDPOS_DEV), ("udpos", "test", UDPOS_TEST)],
)
def test_token_tsv_sentences_per_language(counts: dict, task: str, split: str, expected: dict) -> None:
    assert _task(counts, task, split) == expected


def test_panx_test_unlabelled_dev_labelled(report: dict) -> None:
    rows = {(r["task"], r["language"], r["split"]): r for r in report["results"]}
    assert rows[("panx", "de", "test")]["labelled"] is False
    assert rows[("panx", "de", "dev")]["labelled"] is True
    assert rows[("udpos", "en", "test")]["labelled"] is True
    # missing files named in PROVENANCE.md are simply absent, not errors
    assert ("panx", "th", "dev") not in rows and ("udpos", "de", "test") not in rows


# ------------------------------------------------------------------ problems are all reported


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_check_reports_every_problem_and_keeps_going(tmp_path: Path) -> None:
    _write(tmp_path / "xnli" / "test.de.tsv", "a\tb\tentailment\na\tb\tmaybe\n")  # unknown label
    _write(tmp_path / "xnli" / "dev.de.tsv", "a\tb\tneutral\n")  # fine
    _write(tmp_path / "xquad" / "xquad.de.json", "{not json")  # bad JSON
    _write(tmp_path / "panx" / "dev-de.tsv", "Berlin\tB-LOC\n\nist\tO\textra\n")  # wrong field count
    _write(tmp_path / "xcopa" / "val.et.jsonl", "")  # empty file
    result = CliRunner().invoke(app, ["data", "check", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 1, result.output
    payload = json.loads(result.output)
    by_key = {(r["task"], r["language"], r["split"]): r for r in payload["results"]}
    assert payload["n_problems"] == 4
    assert by_key[("xnli", "de", "dev")]["n_examples"] == 1 and by_key[("xnli", "de", "dev")]["error"] is None
    assert "line 2" in by_key[("xnli", "de", "test")]["error"] and "'maybe'" in by_key[("xnli", "de", "test")]["error"]
    assert "invalid JSON" in by_key[("xquad", "de", "test")]["error"]
    assert "line 3" in by_key[("panx", "de", "dev")]["error"] and "3 tab-separated fields" in by_key[("panx", "de", "dev")]["error"]
    assert "empty" in by_key[("xcopa", "et", "dev")]["error"]


def test_check_table_output_and_missing_dir(tmp_path: Path) -> None:
    _write(tmp_path / "pawsx" / "dev.de.tsv", "id\tsentence1\tsentence2\tlabel\n1\ta\tb\t1\n")
    result = CliRunner().invoke(app, ["data", "check", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "pawsx" in result.output and "0 problem" in result.output
    missing = CliRunner().invoke(app, ["data", "check", "--data-dir", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "data dir not found" in missing.output
