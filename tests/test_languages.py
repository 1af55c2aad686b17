"""The language table: coverage of the benchmarks' languages, known facts, types, lookups, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import xstilts.languages as L
from xstilts.errors import DataError, UnknownNameError
from xstilts.languages import (
    TATOEBA_LANGUAGES,
    XTREME_LANGUAGES,
    XTREME_R_LANGUAGES,
    Language,
    all_languages,
    find_language,
    get_language,
    languages_by,
    load_table,
    low_resource,
    to_catalog_code,
)

TATOEBA_FILE = re.compile(r"tatoeba\.([a-z]{3})-eng\.\1$")
# folder -> pattern whose group 1 is the language code in a file name
SHARED_LAYOUTS = {
    "panx": re.compile(r"(?:train|dev|test)-([a-z]{2,3})\.tsv$"),
    "udpos": re.compile(r"(?:train|dev|test)-([a-z]{2,3})\.tsv$"),
    "xquad": re.compile(r"xquad\.([a-z]{2,3})\.json$"),
    "xcopa": re.compile(r"(?:val|test)\.([a-z]{2,3})\.jsonl$"),
    "tydiqa": re.compile(r"(?:train|dev)\.([a-z]{2,3})\.json$"),
    "xnli": re.compile(r"(?:dev|test)\.([a-z]{2,3})\.tsv$"),
    "pawsx": re.compile(r"(?:dev|test)\.([a-z]{2,3})\.tsv$"),
}


# ---------------------------------------------------------------- coverage


def test_every_tatoeba_file_code_maps_to_a_language(shared_data: Path):
    codes = {m.group(1) for p in (shared_data / "tatoeba").iterdir() if (m := TATOEBA_FILE.match(p.name))}
    assert len(codes) == 112
    unmapped = sorted(c for c in codes if find_language(c) is None)
    assert unmapped == []
    # iso639_3 is exactly the file code, so a "{lang3}" path template finds the real file
    assert {c: get_language(c).iso639_3 for c in codes} == {c: c for c in codes}
    assert set(TATOEBA_LANGUAGES) == {to_catalog_code(c) for c in codes}
    assert len(set(TATOEBA_LANGUAGES)) == 112 and "en" not in TATOEBA_LANGUAGES


def test_every_language_in_shared_data_is_covered(shared_data: Path):
    seen: dict[str, set[str]] = {}
    for folder, pattern in SHARED_LAYOUTS.items():
        files = list((shared_data / folder).iterdir())
        codes = {m.group(1) for p in files if (m := pattern.match(p.name))}
        assert codes, f"no language files recognised in {folder}/"
        seen[folder] = codes
    missing = {f: sorted(c for c in codes if find_language(c) is None) for f, codes in seen.items()}
    assert all(not v for v in missing.values()), missing
    # the shared files use catalog codes already (no 639-3 codes outside tatoeba)
    assert all(to_catalog_code(c) == c for codes in seen.values() for c in codes)
    assert {"ht", "qu", "wo"} <= set().union(*seen.values())


def test_xtreme_and_xtreme_r_lists():
    assert len(XTREME_LANGUAGES) == len(set(XTREME_LANGUAGES)) == 40
    assert len(XTREME_R_LANGUAGES) == len(set(XTREME_R_LANGUAGES)) == 50
    assert set(XTREME_LANGUAGES) < set(XTREME_R_LANGUAGES)
    assert set(XTREME_R_LANGUAGES) - set(XTREME_LANGUAGES) == {"az", "gu", "ht", "lt", "pa", "pl", "qu", "ro", "uk", "wo"}
    for code in XTREME_R_LANGUAGES:
        lang = get_language(code)
        assert lang.code == code and lang.iso639_1 == code
        assert lang.family and lang.script, code


def test_catalog_languages_are_in_the_table():
    catalog = pytest.importorskip("xstilts.tasks.catalog", reason="tasks catalog not written yet")
    tasks = catalog.list_tasks()
    assert tasks
    unknown: dict[str, list[str]] = {}
    for task in tasks:
        codes = set(task.languages) | set(task.train_languages)
        for langs in (task.benchmarks or {}).values():
            codes |= set(langs)
        bad = sorted(c for c in codes if find_language(c) is None or to_catalog_code(c) != c)
        if bad:
            unknown[task.name] = bad
    assert unknown == {}, f"catalog codes missing from the language table (or not catalog codes): {unknown}"
    # explicit file-code maps in the catalog agree with the table's iso639_3 (the {lang3} default)
    disagree = {
        (task.name, code, file_code, get_language(code).iso639_3)
        for task in tasks
        if task.local is not None
        for code, file_code in (task.local.lang_codes or {}).items()
        if get_language(code).iso639_3 != file_code
    }
    assert disagree == set()


# ---------------------------------------------------------------- facts


@pytest.mark.parametrize(
    "code, family, genus, script, rclass",
    [
        ("de", "Indo-European", "Germanic", "Latin", 5),
        ("en", "Indo-European", "Germanic", "Latin", 5),
        ("sw", "Niger-Congo", "Bantoid", "Latin", 2),
        ("yo", "Niger-Congo", "Defoid", "Latin", 2),
        ("ja", "Japonic", "Japanese", "Japanese", 5),
        ("zh", "Sino-Tibetan", "Chinese", "Han", 5),
        ("eu", "Basque", "Basque", "Latin", 4),
        ("ko", "Koreanic", "Korean", "Hangul", 4),
        ("ka", "Kartvelian", "Kartvelian", "Georgian", 3),
        ("th", "Tai-Kadai", "Kam-Tai", "Thai", 3),
        ("ru", "Indo-European", "Slavic", "Cyrillic", 4),
        ("hi", "Indo-European", "Indic", "Devanagari", 4),
        ("ar", "Afro-Asiatic", "Semitic", "Arabic", 5),
        ("fi", "Uralic", "Finnic", "Latin", 4),
        ("ta", "Dravidian", "Southern Dravidian", "Tamil", 3),
        ("qu", "Quechuan", "Quechuan", "Latin", 1),
        ("ht", "Creole", "French-based", "Latin", None),
    ],
)
def test_known_facts(code, family, genus, script, rclass):
    lang = get_language(code)
    assert (lang.family, lang.genus, lang.script, lang.resource_class) == (family, genus, script, rclass)


def test_constructed_and_macrolanguage_codes():
    for code in ("epo", "ina", "ile", "ido", "lfn", "nov", "tzl"):
        assert get_language(code).family == "Constructed", code
    assert to_catalog_code("cmn") == "zh"
    assert to_catalog_code("zho") == "zh"
    assert to_catalog_code("pes") == "fa" and to_catalog_code("fas") == "fa"
    assert to_catalog_code("swh") == "sw" and to_catalog_code("swa") == "sw"
    assert to_catalog_code("zsm") == "ms" and to_catalog_code("lvs") == "lv"
    assert to_catalog_code("ido") == "io" and to_catalog_code("ile") == "ie"
    assert to_catalog_code("nob") == "nb" and to_catalog_code("nno") == "nn"
    # separate languages, not folded into their macrolanguage
    assert to_catalog_code("yue") == "yue" and to_catalog_code("wuu") == "wuu"
    assert to_catalog_code("arz") == "arz" != to_catalog_code("ara") == "ar"
    assert to_catalog_code("ast") == "ast" and to_catalog_code("deu") == "de"


# ---------------------------------------------------------------- table integrity


def test_no_duplicate_codes_and_code_rule():
    langs = all_languages()
    assert [lang.code for lang in langs] == sorted({lang.code for lang in langs})
    all_codes = [c for lang in langs for c in lang.codes]
    assert len(all_codes) == len(set(all_codes))
    for lang in langs:
        assert isinstance(lang, Language)
        # catalog code = ISO 639-1 where one exists, else the 639-3 (or Tatoeba) code
        assert lang.code == (lang.iso639_1 or lang.iso639_3)
        assert lang.code == lang.code.lower() and lang.iso639_3 == lang.iso639_3.lower()
        assert lang.iso639_1 is None or len(lang.iso639_1) == 2
        assert len(lang.iso639_3) == 3


def test_csv_loads_with_correct_types():
    langs = all_languages()
    assert len(langs) >= 112
    for lang in langs:
        assert lang.resource_class is None or (type(lang.resource_class) is int and 0 <= lang.resource_class <= 5)
        for name in ("iso639_1", "family", "genus", "script", "notes"):
            value = getattr(lang, name)
            assert value is None or (isinstance(value, str) and value.strip() == value and value), (lang.code, name)
        assert isinstance(lang.aliases, tuple)
    assert any(lang.resource_class is None for lang in langs)  # unknowns stay null
    assert {lang.resource_class for lang in langs} - {None} <= set(range(6))
    # frozen
    with pytest.raises(AttributeError):
        langs[0].code = "xx"  # type: ignore[misc]


def test_table_is_cached():
    assert L._table() is L._table()
    assert get_language("de") is get_language("DEU")


def _write(tmp_path: Path, body: str) -> Path:
    header = "code,iso639_1,iso639_3,name,family,genus,script,resource_class,aliases,notes\n"
    path = tmp_path / "langs.csv"
    path.write_text("# comment\n" + header + body, encoding="utf-8")
    return path


def test_load_table_errors_name_file_and_line(tmp_path: Path):
    ok = _write(tmp_path, "de,de,deu,German,Indo-European,Germanic,Latin,5,,\nast,,ast,Asturian,,,,,,\n")
    rows = load_table(ok)
    assert rows[1].family is None and rows[1].resource_class is None and rows[0].resource_class == 5

    bad_class = _write(tmp_path, "de,de,deu,German,Indo-European,Germanic,Latin,high,,\n")
    with pytest.raises(DataError, match=r"line 3.*resource_class") as exc:
        load_table(bad_class)
    assert exc.value.line == 3 and exc.value.file == str(bad_class)

    with pytest.raises(DataError, match="line 3.*resource_class"):
        load_table(_write(tmp_path, "de,de,deu,German,Indo-European,Germanic,Latin,7,,\n"))
    with pytest.raises(DataError, match="line 4.*'deu'.*already used on line 3"):
        load_table(_write(tmp_path, "de,de,deu,German,,,,,,\nxx,,deu,Other,,,,,,\n"))
    with pytest.raises(DataError, match="line 3.*expected 10 fields, got 3"):
        load_table(_write(tmp_path, "de,de,deu\n"))
    with pytest.raises(DataError, match="line 3.*empty 'name'"):
        load_table(_write(tmp_path, "de,de,deu,,,,,,,\n"))
    with pytest.raises(DataError, match="must equal its ISO 639-1"):
        load_table(_write(tmp_path, "deu,de,deu,German,,,,,,\n"))
    missing_col = tmp_path / "nocol.csv"
    missing_col.write_text("code,name\nde,German\n", encoding="utf-8")
    with pytest.raises(DataError, match="missing column"):
        load_table(missing_col)
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "absent.csv")


# ---------------------------------------------------------------- lookups


def test_lookup_accepts_codes_case_insensitively_and_tags():
    assert get_language("DE").code == "de"
    assert get_language(" deu ").code == "de"
    assert get_language("ger").code == "de"
    assert get_language("zh-Hans").code == "zh"
    assert get_language("pt_BR").code == "pt"
    assert find_language("xx") is None and find_language("") is None and find_language(None) is None  # type: ignore[arg-type]


def test_unknown_language_lists_valid_codes():
    with pytest.raises(UnknownNameError) as exc:
        get_language("klingon")
    msg = str(exc.value)
    assert "klingon" in msg and "de" in exc.value.valid and "zh" in exc.value.valid
    with pytest.raises(UnknownNameError):
        to_catalog_code("qqq")


def test_languages_by_filters():
    slavic = languages_by(genus="slavic")
    assert {"ru", "uk", "pl", "cs", "bg"} <= {lang.code for lang in slavic}
    assert all(lang.genus == "Slavic" for lang in slavic)
    cyr_ie = languages_by(family="Indo-European", script="Cyrillic")
    assert {"ru", "uk", "bg", "be", "mk"} <= {lang.code for lang in cyr_ie}
    assert "kk" not in {lang.code for lang in cyr_ie}
    winners = {lang.code for lang in languages_by(resource_class=5)}
    assert winners == {"ar", "de", "en", "es", "fr", "ja", "zh"}
    with pytest.raises(UnknownNameError, match="Valid values: .*Indo-European"):
        languages_by(family="Indo-Europaen")
    with pytest.raises(UnknownNameError):
        languages_by(resource_class=6)


def test_low_resource():
    low = low_resource()
    codes = {lang.code for lang in low}
    assert {"yo", "sw", "wo", "te", "my"} <= codes
    assert not codes & {"de", "en", "ru", "ta"}
    assert all(lang.resource_class is not None and lang.resource_class <= 2 for lang in low)
    assert {lang.code for lang in low_resource(max_class=0)} <= codes
    assert "ta" in {lang.code for lang in low_resource(max_class=3)}


# ---------------------------------------------------------------- CLI


def test_cli_langs_table_json_and_errors():
    from xstilts.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["langs", "--family", "Dravidian"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "Malayalam" in res.output and "Telugu" in res.output and "German" not in res.output

    res = runner.invoke(app, ["langs", "--family", "Creole"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "Haitian Creole" in res.output and "—" in res.output

    res = runner.invoke(app, ["langs", "--script", "cyrillic", "--resource-class", "3", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert {r["code"] for r in rows} == {lang.code for lang in languages_by(script="Cyrillic", resource_class=3)}
    assert all(r["script"] == "Cyrillic" and r["resource_class"] == 3 for r in rows)

    res = runner.invoke(app, ["langs", "--family", "Atlantean"])
    assert res.exit_code == 2
    assert "Atlantean" in res.output and "Indo-European" in res.output
