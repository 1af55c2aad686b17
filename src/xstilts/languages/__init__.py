"""Language metadata: one table for every language of XTREME, XTREME-R and Tatoeba.

The table is the data file ``languages.csv`` beside this module (its header comment names
the sources: WALS / Glottolog for family and genus, ISO 15924 for scripts, Joshi et al. 2020
for resource classes). It is parsed once, on first use, and cached.

Codes
-----
Every language has one **catalog code**: its ISO 639-1 code where one exists, else its
ISO 639-3 code (``"ast"``, ``"yue"``) or, for the one Tatoeba collective code, ``"ber"``.
:func:`get_language` also accepts the ISO 639-3 code, any listed alias, a few ISO 639-2/B
codes (``ger``, ``fre``, ``chi``) and BCP-47-like tags whose primary subtag is known
(``"zh-Hans"``, ``"pt_BR"`` -> the base language), all case-insensitively.

Choices for macrolanguages and Tatoeba's codes
-----------------------------------------------
``iso639_3`` is the code of the variety the benchmark data is written in; for every
Tatoeba language it is exactly the code in Tatoeba's file names (``tatoeba.<xxx>-eng.<xxx>``),
so ``get_language(code).iso639_3`` gives the Tatoeba file code and
``to_catalog_code(file_code)`` goes back:

* ``cmn`` (Mandarin) -> ``zh``; the macrolanguage ``zho`` is an alias. Cantonese (``yue``) and
  Wu (``wuu``) are separate languages with their own rows (no ISO 639-1 code).
* ``pes`` (Iranian Persian) -> ``fa``; ``swh`` (Kiswahili) -> ``sw``; ``zsm`` (Standard Malay) -> ``ms``;
  ``lvs`` (Standard Latvian) -> ``lv``: the macrolanguage codes ``fas``, ``swa``, ``msa``, ``lav``
  are aliases.
* Tatoeba uses the macrolanguage code for ``ara``, ``est``, ``sqi``, ``aze``, ``uzb``, ``kur``,
  ``mon``, ``yid``; those stay ``iso639_3`` and the individual codes (``arb``, ``ekk``, ``als``,
  ``azj``, ``uzn``, ``kmr``, ``khk``, ``ydd``) are aliases. Egyptian (``arz``) and Algerian (``arq``)
  Arabic are separate rows.
* ``nob`` / ``nno`` are Norwegian Bokmål ``nb`` / Nynorsk ``nn`` (two rows).
* ``ber`` (Berber, an ISO 639-2/5 collective code) keeps its own row; Kabyle (``kab``) is separate.
* ``kzj`` (Coastal Kadazan, retired in 2016 and merged into ``dtp``) keeps its own row
  because Tatoeba has files for both.
* Constructed languages keep their ISO 639-1 code where one exists (``ido`` -> ``io``,
  ``ile`` -> ``ie``, ``ina`` -> ``ia``, ``epo`` -> ``eo``), else their 639-3 code (``lfn``, ``nov``, ``tzl``).
* ``tgl`` -> ``tl``; Filipino (``fil``) is an alias of Tagalog.

``resource_class`` is ``None`` wherever the Joshi class could not be confirmed; it is never guessed.
"""

from __future__ import annotations

import csv
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from xstilts.errors import DataError, UnknownNameError

log = logging.getLogger(__name__)

__all__ = [
    "Language",
    "LANGUAGES_CSV",
    "XTREME_LANGUAGES",
    "XTREME_R_LANGUAGES",
    "TATOEBA_LANGUAGES",
    "get_language",
    "find_language",
    "all_languages",
    "to_catalog_code",
    "languages_by",
    "low_resource",
    "valid_values",
    "load_table",
]

LANGUAGES_CSV = Path(__file__).with_name("languages.csv")

#: The 40 languages of XTREME (Hu et al. 2020), as listed in google-research/xtreme's README.
XTREME_LANGUAGES: tuple[str, ...] = (
    "af", "ar", "bg", "bn", "de", "el", "en", "es", "et", "eu", "fa", "fi", "fr", "he", "hi", "hu",
    "id", "it", "ja", "jv", "ka", "kk", "ko", "ml", "mr", "ms", "my", "nl", "pt", "ru", "sw", "ta",
    "te", "th", "tl", "tr", "ur", "vi", "yo", "zh",
)  # fmt: skip

#: The 50 languages of XTREME-R (Ruder et al. 2021): XTREME's 40 plus az gu ht lt pa pl qu ro uk wo.
XTREME_R_LANGUAGES: tuple[str, ...] = tuple(
    sorted(XTREME_LANGUAGES + ("az", "gu", "ht", "lt", "pa", "pl", "qu", "ro", "uk", "wo"))
)

#: Catalog codes of the 112 Tatoeba test languages of LASER (Artetxe & Schwenk 2019), English excluded.
#: Their file codes are ``get_language(code).iso639_3``.
TATOEBA_LANGUAGES: tuple[str, ...] = (
    "af", "am", "ang", "ar", "arq", "arz", "ast", "awa", "az", "be", "bg", "bn", "ber", "bs", "br",
    "ca", "cbk", "ceb", "cs", "ch", "zh", "kw", "csb", "cy", "da", "de", "dsb", "dtp", "el", "eo",
    "et", "eu", "fo", "fi", "fr", "fy", "gd", "ga", "gl", "gsw", "he", "hi", "hr", "hsb", "hu", "hy",
    "io", "ie", "ia", "id", "is", "it", "jv", "ja", "kab", "ka", "kk", "km", "ko", "ku", "kzj", "la",
    "lfn", "lt", "lv", "ml", "mr", "max", "mhr", "mk", "mn", "nds", "nl", "nn", "nb", "nov", "oc",
    "orv", "pam", "fa", "pms", "pl", "pt", "ro", "ru", "sk", "sl", "es", "sq", "sr", "sv", "swg",
    "sw", "ta", "tt", "te", "tl", "th", "tk", "tr", "tzl", "ug", "uk", "ur", "uz", "vi", "war", "wuu",
    "xh", "yi", "yue", "ms",
)  # fmt: skip

_COLUMNS = (
    "code", "iso639_1", "iso639_3", "name", "family", "genus", "script", "resource_class", "aliases", "notes",
)  # fmt: skip
_FILTER_FIELDS = ("family", "genus", "script")


@dataclass(frozen=True)
class Language:
    """One row of the language table.

    The first eight fields are the contract of docs/ARCHITECTURE.md; ``aliases`` and ``notes``
    are extras (other codes that resolve to this language, and free-text provenance notes).
    """

    code: str  # catalog code: ISO 639-1 where one exists, else ISO 639-3
    iso639_1: str | None
    iso639_3: str
    name: str
    family: str | None  # WALS/Glottolog top-level family, None if unknown
    genus: str | None  # WALS genus
    script: str | None  # ISO 15924 English name, e.g. "Latin", "Cyrillic", "Han"
    resource_class: int | None  # Joshi et al. 2020, 0-5; None = not confirmed
    aliases: tuple[str, ...] = field(default=(), compare=False)
    notes: str | None = field(default=None, compare=False)

    @property
    def codes(self) -> tuple[str, ...]:
        """Every code that resolves to this language (catalog, 639-1, 639-3, aliases)."""
        out = [self.code, self.iso639_3, *self.aliases]
        if self.iso639_1:
            out.insert(1, self.iso639_1)
        return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class _Table:
    languages: tuple[Language, ...]
    index: dict[str, Language]


def _opt(value: str) -> str | None:
    value = value.strip()
    return value or None


def _read_records(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty, non-comment line of a CSV file."""
    with path.open(encoding="utf-8", newline="") as fh:
        # one record per physical line (the table has no multi-line fields), so line numbers are exact
        return [
            (i, next(csv.reader([line])))
            for i, line in enumerate(fh, start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]


def _resource_class(value: str, path: Path, lineno: int) -> int | None:
    if not value:
        return None
    try:
        rc = int(value)
    except ValueError:
        rc = -1
    if not 0 <= rc <= 5:
        raise DataError(path, f"resource_class must be an integer 0-5 or empty, got {value!r}", line=lineno)
    return rc


def _parse_row(get: dict[str, str], path: Path, lineno: int) -> Language:
    """One :class:`Language` from a row's stripped fields; DataError naming the line when invalid."""
    for required in ("code", "iso639_3", "name"):
        if not get[required]:
            raise DataError(path, f"empty '{required}'", line=lineno)
    lang = Language(
        code=get["code"].lower(),
        iso639_1=_opt(get["iso639_1"].lower()),
        iso639_3=get["iso639_3"].lower(),
        name=get["name"],
        family=_opt(get["family"]),
        genus=_opt(get["genus"]),
        script=_opt(get["script"]),
        resource_class=_resource_class(get["resource_class"], path, lineno),
        aliases=tuple(a.strip().lower() for a in get["aliases"].split(";") if a.strip()),
        notes=_opt(get["notes"]),
    )
    if lang.iso639_1 and lang.code != lang.iso639_1:
        raise DataError(path, f"code {lang.code!r} must equal its ISO 639-1 code {lang.iso639_1!r}", line=lineno)
    return lang


def _header_positions(records: list[tuple[int, list[str]]], path: Path) -> tuple[list[str], dict[str, int]]:
    if not records:
        raise DataError(path, "empty language table (no header)")
    header_line, header = records[0]
    header = [h.strip() for h in header]
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; expected {list(_COLUMNS)}", line=header_line)
    return header, {c: header.index(c) for c in _COLUMNS}


def load_table(path: str | Path = LANGUAGES_CSV) -> tuple[Language, ...]:
    """Parse a language table file (CSV, ``#`` comment lines allowed) into :class:`Language` rows.

    Raises :class:`DataError` naming the file and line for a missing column, a wrong number of
    fields, an empty required value, a resource class outside 0-5, or a code that appears twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "language table not found")
    records = _read_records(path)
    header, pos = _header_positions(records, path)
    languages: list[Language] = []
    seen: dict[str, int] = {}
    for lineno, row in records[1:]:
        if len(row) != len(header):
            raise DataError(path, f"expected {len(header)} fields, got {len(row)}", line=lineno)
        lang = _parse_row({c: row[pos[c]].strip() for c in _COLUMNS}, path, lineno)
        for c in lang.codes:
            if c in seen:
                raise DataError(path, f"code {c!r} (row {lang.code!r}) already used on line {seen[c]}", line=lineno)
            seen[c] = lineno
        languages.append(lang)
    if not languages:
        raise DataError(path, "language table has a header but no rows")
    return tuple(languages)


@functools.lru_cache(maxsize=1)
def _table() -> _Table:
    languages = load_table(LANGUAGES_CSV)
    index = {c: lang for lang in languages for c in lang.codes}
    log.debug("loaded %d languages from %s", len(languages), LANGUAGES_CSV)
    return _Table(languages=tuple(sorted(languages, key=lambda lang: lang.code)), index=index)


def find_language(code: str) -> Language | None:
    """The language for ``code`` (639-1, 639-3, Tatoeba code or alias; case-insensitive), or None."""
    if not isinstance(code, str):
        return None
    key = code.strip().lower()
    index = _table().index
    if key in index:
        return index[key]
    # BCP-47-like tags ("zh-Hans", "pt_BR", "sr-Latn"): fall back to the primary subtag.
    for sep in ("-", "_"):
        if sep in key:
            return index.get(key.split(sep, 1)[0])
    return _names().get(key)  # an English name: "German" -> de


@functools.lru_cache(maxsize=1)
def _names() -> dict[str, Language]:
    """Lower-cased English language names -> language (a name two languages share is left out)."""
    counts: dict[str, int] = {}
    for lang in _table().languages:
        counts[lang.name.lower()] = counts.get(lang.name.lower(), 0) + 1
    return {lang.name.lower(): lang for lang in _table().languages if counts[lang.name.lower()] == 1}


def language_names(codes: list[str] | tuple[str, ...] | None = None) -> dict[str, str]:
    """English name -> catalog code, for ``codes`` (default: every language); for suggestions."""
    wanted = None if codes is None else set(codes)
    return {lang.name: lang.code for lang in _table().languages if wanted is None or lang.code in wanted}


def get_language(code: str) -> Language:
    """The language for ``code``; raises :class:`UnknownNameError` listing the catalog codes."""
    lang = find_language(code)
    if lang is None:
        raise UnknownNameError("language", str(code), [lang.code for lang in _table().languages],
                               extra=language_names())
    return lang


def all_languages() -> list[Language]:
    """Every language in the table, sorted by catalog code."""
    return list(_table().languages)


def to_catalog_code(code: str) -> str:
    """The catalog code for any accepted code, e.g. ``"deu" -> "de"``, ``"cmn" -> "zh"``, ``"ast" -> "ast"``."""
    return get_language(code).code


def valid_values(field_name: str) -> list[str]:
    """The distinct non-empty values of ``family``, ``genus`` or ``script`` in the table, sorted."""
    if field_name not in _FILTER_FIELDS:
        raise UnknownNameError("language field", field_name, list(_FILTER_FIELDS))
    return sorted({v for lang in _table().languages if (v := getattr(lang, field_name))})


def _match_value(field_name: str, wanted: str) -> str:
    """Resolve ``wanted`` case-insensitively to a value present in the table, else UnknownNameError."""
    values = valid_values(field_name)
    by_lower = {v.lower(): v for v in values}
    key = wanted.strip().lower()
    if key not in by_lower:
        raise UnknownNameError(f"{field_name} name", wanted, values)
    return by_lower[key]


def languages_by(
    family: str | None = None,
    genus: str | None = None,
    script: str | None = None,
    resource_class: int | None = None,
) -> list[Language]:
    """Languages matching every given filter (strings case-insensitive), sorted by code.

    A family, genus or script that no language has raises :class:`UnknownNameError` listing the
    valid values; a resource class outside 0-5 likewise. Languages with an unknown (None) value
    never match a filter on that field.
    """
    wanted: dict[str, str] = {}
    for name, value in (("family", family), ("genus", genus), ("script", script)):
        if value is not None:
            wanted[name] = _match_value(name, value)
    if resource_class is not None and resource_class not in range(6):
        raise UnknownNameError("resource-class value", str(resource_class), [str(i) for i in range(6)])
    out = []
    for lang in _table().languages:
        if any(getattr(lang, k) != v for k, v in wanted.items()):
            continue
        if resource_class is not None and lang.resource_class != resource_class:
            continue
        out.append(lang)
    return out


def low_resource(max_class: int = 2) -> list[Language]:
    """Languages whose Joshi class is known and at most ``max_class`` (default: classes 0-2)."""
    if max_class not in range(6):
        raise UnknownNameError("resource-class value", str(max_class), [str(i) for i in range(6)])
    return [lang for lang in _table().languages if lang.resource_class is not None and lang.resource_class <= max_class]
