"""Readers for the real file layouts of the benchmarks (and generic ones for your own data).

Each reader takes one file and returns typed examples (:mod:`xstilts.tasks.types`). A
malformed file raises :class:`~xstilts.errors.DataError` naming the file, the line or
record, and what was expected. Readers are registered by name in :data:`READERS`; a catalog
entry's ``local.reader`` picks one. Every reader accepts ``label_list`` (the task's label
set: labels outside it are errors) and ``language`` (the catalog code of the file's
language), plus its own options.

Layouts:

========================  ===================================================================
``squad_json``            SQuAD v1.1/v2.0 JSON (XQuAD, MLQA, TyDiQA-GoldP, SQuAD)
``token_tsv``             XTREME token TSV: ``token<TAB>tag`` per line, blank line between
                          sentences; one column = no labels (PAN-X test); optional
                          ``xx:`` language prefix on tokens is stripped
``conllu``                CoNLL-U (UD treebanks): the tag is the ``upos`` column (or any named
                          column: ``xpos``, ``misc``, ``deprel``, ...; ``feature: NER`` takes
                          ``NER=...`` out of a ``Key=Value|...`` column such as MISC)
``delimited``             generic TSV/CSV for classification: header or not, ``columns``
                          mapping by name or index, ``label_map`` (e.g. ``{"0": entailment}``)
``xcopa_jsonl``           XCOPA / COPA JSONL: premise, choice1, choice2, question, label
``commonsenseqa_jsonl``   CommonsenseQA JSONL (Hugging Face layout): question,
                          choices.{label,text}, answerKey
``cosmosqa_csv``          Cosmos QA CSV: id, context, question, answer0..3, label
``anli_csv``              ANLI analysis CSV: context, statement, gold_label (e/n/c), uid
``nli_tsv``               XNLI-style TSV: premise, hypothesis, label (no header)
``pawsx_tsv``             PAWS-X TSV with header: id, sentence1, sentence2, label
``tatoeba``               Tatoeba pair files: ``tatoeba.xxx-eng.xxx`` and ``.eng``, line-aligned
``bucc2018``              BUCC 2018 official layout: ``xx-en.<part>.xx`` / ``.en`` (id TAB sentence)
                          and ``.gold``; one whole corpus (:mod:`xstilts.tasks.bucc`)
``jsonl_<format>``        generic JSON lines for each format; field names in
                          :attr:`Format.json_fields` (remap them with the ``fields`` option,
                          label values with ``label_map``)
========================  ===================================================================
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xstilts.errors import ConfigError, DataError, UnknownNameError
from xstilts.tasks.bucc import read_bucc2018
from xstilts.tasks.formats import format_names, get_format
from xstilts.tasks.formats._records import JsonRecord
from xstilts.tasks.formats._records import check_label as _check_label
from xstilts.tasks.formats._records import require_field as _require
from xstilts.tasks.formats.extractive_qa import qa_example
from xstilts.tasks.textio import read_text as _read_text
from xstilts.tasks.types import (
    BitextExample,
    ClassificationExample,
    Example,
    MultipleChoiceExample,
    QAExample,
    TaggingExample,
)

logger = logging.getLogger(__name__)

Reader = Callable[..., list[Example]]

COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}
ANLI_LABELS = {"e": "entailment", "n": "neutral", "c": "contradiction"}

# --------------------------------------------------------------------------- helpers




def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def iter_jsonl(path: Path, expected: str) -> Iterator[tuple[int, dict[str, Any]]]:
    text = _read_text(path, expected)
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON ({exc.msg} at column {exc.colno}); expected {expected}", line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
        yield lineno, obj


def _read_csv(path: Path, required: Sequence[str], expected: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header as (line number where the record starts, row dict)."""
    text = _read_text(path, expected)
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader)
    except csv.Error as exc:
        raise DataError(path, f"invalid CSV header ({exc}); expected {expected}", line=1) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing} in header {header}; expected {expected}", line=1)
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(path, f"invalid CSV ({exc})", line=start) from None
        if not row:
            start = reader.line_num + 1
            continue
        if len(row) != len(header):
            raise DataError(path, f"{len(row)} fields, expected {len(header)} (as in the header)", line=start)
        yield start, dict(zip(header, row))
        start = reader.line_num + 1


# --------------------------------------------------------------------------- QA


def read_squad_json(path: Path, *, label_list: Sequence[str] | None = None, language: str | None = None,
                    check_answers: bool = True) -> list[QAExample]:
    """SQuAD v1.1/v2.0 JSON: ``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``.

    Every answer's ``answer_start`` must point at its text in the context. Questions with no
    answers must carry ``is_impossible: true`` (SQuAD v2.0).
    """
    expected = 'SQuAD JSON {"data": [{"paragraphs": [{"context", "qas"}]}]}'
    text = _read_text(path, expected)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON ({exc.msg}, column {exc.colno}); expected {expected}", line=exc.lineno) from None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        raise DataError(path, f"no 'data' list at the top; expected {expected}")
    examples: list[QAExample] = []
    for a, article in enumerate(data):
        where_a = f"data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(path, "article without a 'paragraphs' list", record=where_a)
        title = article.get("title")
        for p, para in enumerate(article["paragraphs"]):
            where_p = f"{where_a}.paragraphs[{p}]"
            if not isinstance(para, dict):
                raise DataError(path, "paragraph should be an object with context and qas", record=where_p)
            context = _require(path, para, "context", record=where_p, types=str)
            qas = _require(path, para, "qas", record=where_p, types=list)
            for q, qa in enumerate(qas):
                where_q = f"{where_p}.qas[{q}]"
                if not isinstance(qa, dict):
                    raise DataError(path, "question should be an object", record=where_q)
                examples.append(qa_example(path, qa, context, title, where_q, check_answers))
    if not examples:
        raise DataError(path, f"no questions found; expected {expected}")
    return examples


# --------------------------------------------------------------------------- tagging

_PREFIX = re.compile(r"^([a-z]{2,3}):(.+)$")


def read_token_tsv(path: Path, *, label_list: Sequence[str] | None = None, language: str | None = None,
                   strip_lang_prefix: bool = False,
                   keep: Callable[[int], Iterable[int]] | None = None) -> list[TaggingExample]:
    """XTREME token TSV: ``token<TAB>tag`` lines, a blank line between sentences.

    Files with a single column (PAN-X test) give examples with ``tags=None``. With
    ``strip_lang_prefix``, a ``<language>:`` prefix on tokens (``en:Paris``, as in some
    PAN-X distributions) is removed. Ids are the sentences' positions in the file.

    ``keep`` (what :func:`xstilts.tasks.loading.load_examples` passes for a subsample): given
    the number of sentences in the file, the positions of those to return, ascending; only
    they are split into tokens (a PAN-X test file holds ~10k sentences; 20 are asked for). The
    whole file is checked either way, with the same errors.
    """
    expected = "token<TAB>tag lines with a blank line between sentences"
    raw = _read_text(path, expected)
    # Files have up to ~1M lines: validate with C-speed string operations and only scan
    # line by line (_locate_tsv_problem) once a problem is known to exist.
    text = _strip_trailing_space(raw.replace("\r\n", "\n"))
    ncols = _tsv_columns(path, raw, text, expected)
    prefix = _lang_prefix(text, language) if strip_lang_prefix else None
    examples: list[TaggingExample] = []
    with _gc_paused():
        blocks = [block for block in (b.strip("\n") for b in text.split("\n\n")) if block]
        # no line holds two tabs (_tsv_columns): every line has its tab when they are as many as the lines
        if keep is not None and ncols == 2 and text.count("\t") != len(blocks) + sum(b.count("\n") for b in blocks):
            _locate_tsv_problem(path, raw, expected)  # the line that splitting each sentence would have found
        for position in range(len(blocks)) if keep is None else keep(len(blocks)):
            tokens, tags = _tsv_sentence(path, raw, blocks[position], ncols, expected)
            if prefix is not None:
                tokens = [t[len(prefix):] if t.startswith(prefix) and len(t) > len(prefix) else t for t in tokens]
            examples.append(TaggingExample(id=str(position), tokens=tokens, tags=tags))
    if label_list is not None and ncols == 2 and not _tags_known(text, label_list):
        _locate_tsv_problem(path, raw, expected, label_list)
    if not blocks:
        raise DataError(path, f"no sentences found; expected {expected}")
    return examples


def _tags_known(text: str, label_list: Sequence[str]) -> bool:
    """Whether every tag cell of a two-column token TSV (one tab per line) is in ``label_list``:
    the cells ``<TAB>label<NEWLINE>`` of the known labels, counted in C, are all the tabs (a
    regex list of every cell instead: reading PAN-X's 48 test files for 20 sentences each took
    ~1.0 s, now ~0.4 s)."""
    ended = text if text.endswith("\n") else text + "\n"
    return sum(ended.count(f"\t{label}\n") for label in set(label_list)) == ended.count("\t")


def _strip_trailing_space(text: str) -> str:
    if " \n" in text or "\t\n" in text or "\r" in text or text.endswith((" ", "\t")):
        return _TRAILING_WS.sub("", text)
    return text


def _tsv_columns(path: Path, raw: str, text: str, expected: str) -> int:
    """1 or 2, from the first lines; the first bad line is reported when the file mixes layouts."""
    first = next((line for line in text.split("\n", 64) if line), "")
    ncols = first.count("\t") + 1
    if ncols > 2 or (ncols == 2 and _TWO_TABS.search(text)) or (ncols == 1 and "\t" in text):
        _locate_tsv_problem(path, raw, expected)
    return ncols


def _lang_prefix(text: str, language: str | None) -> str | None:
    """``"<language>:"`` when the file's tokens carry that prefix, else None."""
    prefix = f"{language}:" if language else None
    if prefix is not None and (text.startswith(prefix) or "\n" + prefix in text):
        return prefix
    return None


def _tsv_sentence(path: Path, raw: str, block: str, ncols: int, expected: str) -> tuple[list[str], list[str] | None]:
    """Tokens (and tags, in a two-column file) of one sentence block."""
    if ncols == 2:
        cells = block.replace("\n", "\t").split("\t")
        if len(cells) != 2 * (block.count("\n") + 1):  # some line of this block lacks its tab
            _locate_tsv_problem(path, raw, expected)
        return cells[0::2], cells[1::2]
    return block.split("\n"), None


_TRAILING_WS = re.compile(r"[ \t\r]+$", re.M)
_TWO_TABS = re.compile(r"\t[^\t\n]*\t")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic GC paused: parsing creates millions of small lists and no cycles, and GC
    passes over them dominate the run time otherwise."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _locate_tsv_problem(path: Path, text: str, expected: str, label_list: Sequence[str] | None = None) -> None:
    """Scan a token-TSV line by line and raise a DataError at the first bad line."""
    ncols: int | None = None
    labels = set(label_list) if label_list is not None else None
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) > 2:
            raise DataError(path, f"{len(parts)} tab-separated fields, expected 2 ({expected})", line=lineno)
        if ncols is not None and len(parts) != ncols:
            raise DataError(path, f"{len(parts)} field(s) where earlier lines have {ncols}; expected {expected}",
                            line=lineno)
        ncols = len(parts)
        if labels is not None and len(parts) == 2 and parts[1].strip() not in labels:
            raise DataError(path, f"unknown tag {parts[1].strip()!r}; expected one of {list(label_list or [])}",
                            line=lineno)
    raise DataError(path, f"malformed file; expected {expected}")  # pragma: no cover - defensive


#: the ten CoNLL-U columns, in order
CONLLU_COLUMNS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")


def _conllu_column(path: Path, column: str | int) -> int:
    """The 0-based index of a CoNLL-U column given by name (``upos``, ``MISC``) or 1-based number."""
    if isinstance(column, int) and not isinstance(column, bool) and 3 <= column <= 10:
        return column - 1
    name = str(column).strip().lower()
    if name in CONLLU_COLUMNS[2:]:
        return CONLLU_COLUMNS.index(name)
    raise DataError(path, f"unknown column option {column!r}; expected one of {list(CONLLU_COLUMNS[2:])} "
                          "(or its number, 3-10)")


def _key_value(cell: str, key: str) -> str | None:
    """The value of ``key`` in a ``Key=Value|Key=Value`` cell (FEATS, MISC); None when absent."""
    for item in cell.split("|"):
        k, sep, v = item.partition("=")
        if sep and k == key:
            return v
    return None


class _ConlluTag:
    """Takes the tag of one token line: a column, or one ``Key=Value`` of it (``feature``)."""

    def __init__(self, path: Path, column: str | int, feature: str | None, missing: str | None,
                 label_list: Sequence[str] | None):
        self.path, self.col, self.feature, self.missing = path, _conllu_column(path, column), feature, missing
        self.label_list = label_list
        self.labels = set(label_list) if label_list is not None else None

    def __call__(self, parts: list[str], lineno: int) -> str:
        tag: str | None = parts[self.col]
        if self.feature is not None:
            tag = _key_value(parts[self.col], self.feature)
            if tag is None:
                tag = self.missing
            if tag is None:
                raise DataError(self.path, f"no {self.feature}=... in column {CONLLU_COLUMNS[self.col].upper()} "
                                           f"({parts[self.col]!r}); set the reader option 'missing' for such tokens",
                                line=lineno)
        if self.labels is not None and tag not in self.labels:
            raise DataError(self.path, f"unknown tag {tag!r}; expected one of {list(self.label_list or [])}",
                            line=lineno)
        return tag  # type: ignore[return-value]


def read_conllu(path: Path, *, label_list: Sequence[str] | None = None, language: str | None = None,
                column: str | int = "upos", feature: str | None = None,
                missing: str | None = None) -> list[TaggingExample]:
    """CoNLL-U (Universal Dependencies): one sentence per block, one tag per word.

    The tag is column ``column`` (a CoNLL-U column name, any case: ``upos`` (default),
    ``xpos``, ``lemma``, ``feats``, ``head``, ``deprel``, ``deps``, ``misc``; or its 1-based
    number). With ``feature``, the tag is that key's value in a ``Key=Value|...`` column
    (e.g. ``column: misc, feature: NER`` for ``SpaceAfter=No|NER=B-PER``); tokens without
    it get ``missing`` (an error when unset). Multi-word token ranges (``1-2``) and empty
    nodes (``1.1``) are skipped, as XTREME does for UD-POS. Sentence ids come from
    ``# sent_id =`` comments when present.
    """
    expected = "CoNLL-U: 10 tab-separated fields per token line, blank line between sentences"
    take = _ConlluTag(Path(path), column, feature, missing, label_list)
    text = _read_text(path, expected)
    examples: list[TaggingExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    sent_id: str | None = None

    def flush() -> None:
        nonlocal sent_id
        if tokens:
            examples.append(TaggingExample(id=sent_id or str(len(examples)), tokens=list(tokens), tags=list(tags)))
        tokens.clear()
        tags.clear()
        sent_id = None

    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            m = re.match(r"#\s*sent_id\s*=\s*(.+)", line)
            if m:
                sent_id = m.group(1).strip()
            continue
        parts = line.split("\t")
        if len(parts) != 10:
            raise DataError(path, f"{len(parts)} fields, expected 10 ({expected})", line=lineno)
        tid = parts[0]
        if "-" in tid or "." in tid:
            continue
        if not tid.isdigit():
            raise DataError(path, f"token id {tid!r} is not an integer, a range or an empty-node id", line=lineno)
        tag = take(parts, lineno)
        if not parts[1].strip():
            raise DataError(path, f"token {tid} has an empty FORM (column 2); expected the word",
                            line=lineno, record=sent_id)
        tokens.append(parts[1])
        tags.append(tag)
    flush()
    if not examples:
        raise DataError(path, f"no sentences found; expected {expected}")
    return examples


# --------------------------------------------------------------------------- multiple choice


def read_xcopa_jsonl(path: Path, *, label_list: Sequence[str] | None = None, language: str | None = None,
                     question_map: dict[str, str] | None = None) -> list[MultipleChoiceExample]:
    """XCOPA/COPA JSONL: ``premise``, ``choice1``, ``choice2``, ``question`` (cause|effect), ``label`` (0|1).

    The question is rendered as "What was the cause?" / "What happened as a result?".
    """
    qmap = question_map or COPA_QUESTIONS
    expected = "JSON lines with premise, choice1, choice2, question (cause|effect), label (0|1)"
    out: list[MultipleChoiceExample] = []
    for lineno, obj in iter_jsonl(path, expected):
        premise = _require(path, obj, "premise", line=lineno, types=str)
        c1 = _require(path, obj, "choice1", line=lineno, types=str)
        c2 = _require(path, obj, "choice2", line=lineno, types=str)
        q = _require(path, obj, "question", line=lineno, types=str)
        if q not in qmap:
            raise DataError(path, f"unknown question {q!r}; expected one of {sorted(qmap)}", line=lineno)
        label = obj.get("label")
        if label is not None and (isinstance(label, bool) or label not in (0, 1)):
            raise DataError(path, f"unknown label {label!r}; expected 0 or 1", line=lineno)
        ex_id = obj.get("idx", obj.get("id", len(out)))
        out.append(MultipleChoiceExample(id=str(ex_id), context=premise, question=qmap[q], choices=[c1, c2], label=label))
    if not out:
        raise DataError(path, f"no examples found; expected {expected}")
    return out


def read_commonsenseqa_jsonl(path: Path, *, label_list: Sequence[str] | None = None,
                             language: str | None = None) -> list[MultipleChoiceExample]:
    """CommonsenseQA JSONL, Hugging Face layout: ``id``, ``question``, ``choices.{label,text}``, ``answerKey``.

    The original layout (``question.stem``, ``question.choices[{label,text}]``) is read too.
    """
    expected = "JSON lines with id, question, choices {label: [...], text: [...]}, answerKey"
    out: list[MultipleChoiceExample] = []
    for lineno, obj in iter_jsonl(path, expected):
        q = _require(path, obj, "question", line=lineno)
        if isinstance(q, dict):  # original CommonsenseQA release
            question = _require(path, q, "stem", line=lineno, types=str)
            raw = _require(path, q, "choices", line=lineno, types=list)
            labels = [str(c.get("label")) for c in raw]
            texts = [c.get("text") for c in raw]
        else:
            if not isinstance(q, str):
                raise DataError(path, "field 'question' should be a string", line=lineno)
            question = q
            labels = _require(path, obj, "choices.label", line=lineno, types=list)
            texts = _require(path, obj, "choices.text", line=lineno, types=list)
        if len(labels) != len(texts) or len(texts) < 2 or not all(isinstance(t, str) for t in texts):
            raise DataError(path, f"choices should have matching label and text lists of >= 2 strings "
                                  f"(got {len(labels)} labels, {len(texts)} texts)", line=lineno)
        key = obj.get("answerKey")
        label: int | None = None
        if key not in (None, ""):
            if key not in labels:
                raise DataError(path, f"unknown answerKey {key!r}; expected one of {labels}", line=lineno)
            label = labels.index(key)
        out.append(MultipleChoiceExample(id=str(obj.get("id", len(out))), context="", question=question,
                                         choices=list(texts), label=label))
    if not out:
        raise DataError(path, f"no examples found; expected {expected}")
    return out


def read_cosmosqa_csv(path: Path, *, label_list: Sequence[str] | None = None,
                      language: str | None = None) -> list[MultipleChoiceExample]:
    """Cosmos QA CSV: ``id,context,question,answer0,answer1,answer2,answer3,label`` (label 0-3)."""
    cols = ["id", "context", "question", "answer0", "answer1", "answer2", "answer3", "label"]
    out: list[MultipleChoiceExample] = []
    for line, row in _read_csv(path, cols, "a CSV with header " + ",".join(cols)):
        raw = row["label"].strip()
        if raw not in ("0", "1", "2", "3"):
            raise DataError(path, f"unknown label {raw!r}; expected 0, 1, 2 or 3", line=line, record=row["id"])
        out.append(MultipleChoiceExample(id=row["id"], context=row["context"], question=row["question"],
                                         choices=[row[f"answer{i}"] for i in range(4)], label=int(raw)))
    if not out:
        raise DataError(path, "no rows after the header")
    return out


# --------------------------------------------------------------------------- classification


def read_anli_csv(path: Path, *, label_list: Sequence[str] | None = None,
                  language: str | None = None) -> list[ClassificationExample]:
    """ANLI analysis CSV: ``context``, ``statement``, ``gold_label`` (e/n/c), ``uid``."""
    out: list[ClassificationExample] = []
    for line, row in _read_csv(path, ["context", "statement", "gold_label"],
                               "ANLI analysis CSV with context, statement, gold_label columns"):
        raw = row["gold_label"].strip()
        rid = row.get("uid") or str(len(out))
        if raw not in ANLI_LABELS:
            raise DataError(path, f"unknown gold_label {raw!r}; expected one of e, n, c", line=line, record=rid)
        label = _check_label(path, ANLI_LABELS[raw], label_list, line=line, record=rid)
        out.append(ClassificationExample(id=rid, text_a=row["context"], text_b=row["statement"], label=label))
    if not out:
        raise DataError(path, "no rows after the header")
    return out


def read_nli_tsv(path: Path, *, label_list: Sequence[str] | None = None,
                 language: str | None = None) -> list[ClassificationExample]:
    """XNLI-style TSV: ``premise<TAB>hypothesis<TAB>label`` per line (a header line is skipped)."""
    expected = "premise<TAB>hypothesis<TAB>label"
    out: list[ClassificationExample] = []
    for lineno, line in enumerate(_lines(_read_text(path, expected)), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(path, f"{len(parts)} tab-separated fields, expected 3 ({expected})", line=lineno)
        if lineno == 1 and [p.strip().lower() for p in parts] in (["premise", "hypothesis", "label"],
                                                                 ["sentence1", "sentence2", "label"]):
            continue
        label = _check_label(path, parts[2].strip(), label_list, line=lineno)
        out.append(ClassificationExample(id=str(len(out)), text_a=parts[0], text_b=parts[1], label=label))
    if not out:
        raise DataError(path, f"no examples found; expected {expected}")
    return out


def read_pawsx_tsv(path: Path, *, label_list: Sequence[str] | None = None,
                   language: str | None = None) -> list[ClassificationExample]:
    """PAWS-X TSV with a header ``id sentence1 sentence2 label``."""
    expected = "a header id<TAB>sentence1<TAB>sentence2<TAB>label, then one pair per line"
    lines = _lines(_read_text(path, expected))
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in ("sentence1", "sentence2", "label") if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing} in header {header}; expected {expected}", line=1)
    idx = {h: i for i, h in enumerate(header)}
    out: list[ClassificationExample] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != len(header):
            raise DataError(path, f"{len(parts)} tab-separated fields, expected {len(header)} ({expected})", line=lineno)
        label = _check_label(path, parts[idx["label"]].strip(), label_list, line=lineno)
        ex_id = parts[idx["id"]] if "id" in idx else str(len(out))
        out.append(ClassificationExample(id=ex_id, text_a=parts[idx["sentence1"]], text_b=parts[idx["sentence2"]],
                                         label=label))
    if not out:
        raise DataError(path, f"no rows after the header; expected {expected}")
    return out


#: default header names of each classification field in a delimited file, first match wins
DELIMITED_NAMES: dict[str, tuple[str, ...]] = {
    "id": ("id", "uid", "pairid", "guid", "idx"),
    "text_a": ("text_a", "premise", "sentence1", "sentence", "text", "question1", "context"),
    "text_b": ("text_b", "hypothesis", "sentence2", "question2", "statement"),
    "label": ("label", "gold_label", "labels", "class", "target"),
}


def _delimited_rows(path: Path, delimiter: str, quoting: bool, expected: str) -> Iterator[tuple[int, list[str]]]:
    """(line number where the record starts, cells) of every non-blank record."""
    text = _read_text(path, expected)
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(path, f"invalid {expected} ({exc})", line=start) from None
        if any(cell.strip() for cell in row):
            yield start, row
        start = reader.line_num + 1


def _column_index(path: Path, field: str, column: str | int, header: list[str] | None, width: int) -> int:
    """The index of ``column`` (a header name, or a 0-based index) for example field ``field``."""
    if isinstance(column, int) and not isinstance(column, bool):
        if not 0 <= column < width:
            raise DataError(path, f"columns.{field}: index {column} is out of range; rows have {width} fields "
                                  f"(indices 0-{width - 1})", line=1)
        return column
    if header is None:
        raise DataError(path, f"columns.{field}: {column!r} is a column name but the file has no header "
                              "(header: false); give a 0-based index", line=1)
    if column not in header:
        raise DataError(path, f"columns.{field}: no column {column!r} in the header {header}", line=1)
    return header.index(column)


def _delimited_columns(path: Path, columns: Mapping[str, str | int | None] | None, header: list[str] | None,
                       width: int) -> dict[str, int]:
    """Example field -> column index: the ``columns`` option, else the header's usual names, else positions."""
    unknown = sorted(set(columns or {}) - set(DELIMITED_NAMES))
    if unknown:
        raise DataError(path, f"unknown field(s) {unknown} in columns; expected some of {list(DELIMITED_NAMES)}")
    given = dict(columns or {})
    out: dict[str, int] = {}
    for field, names in DELIMITED_NAMES.items():
        if field in given:
            if given[field] is not None:  # null: the file has no such column
                out[field] = _column_index(path, field, given[field], header, width)
            continue
        if header is not None:
            found = next((header.index(h) for n in names for h in header if h.strip().lower() == n), None)
            if found is not None:
                out[field] = found
    if header is None and not given:
        out = {"text_a": 0, "text_b": 1, "label": 2} if width >= 3 else {"text_a": 0, "label": 1}
    if "text_a" not in out:
        raise DataError(path, f"no text column: name it with the reader option columns: {{text_a: NAME_OR_INDEX}} "
                              f"(header: {header})", line=1)
    return out


def _map_label(path: Path, raw: str, label_map: Mapping[str, str] | None, label_list: Sequence[str] | None,
               line: int) -> str | None:
    """The label of a cell: '' is unlabelled; ``label_map`` renames values; checked against the label set."""
    raw = raw.strip()
    if raw == "":
        return None
    if label_map is not None:
        if raw not in label_map:
            raise DataError(path, f"label {raw!r} is not in label_map {dict(label_map)}", line=line)
        raw = label_map[raw]
    return _check_label(path, raw, label_list, line=line)


def read_delimited(path: Path, *, label_list: Sequence[str] | None = None, language: str | None = None,
                   delimiter: str | None = None, header: bool = True,
                   columns: Mapping[str, str | int | None] | None = None,
                   label_map: Mapping[Any, Any] | None = None, quoting: bool | None = None) -> list[ClassificationExample]:
    """Generic delimited text (TSV, CSV) for classification: one example per row.

    ``delimiter``: default tab, or ``,`` for a ``.csv`` file. ``header``: whether the first row
    names the columns. ``columns`` maps example fields (``id``, ``text_a``, ``text_b``,
    ``label``) to a header name or a 0-based index (``null``: no such column). Unmapped
    fields are found by usual header names (premise/hypothesis, sentence1/sentence2,
    label, id, ...); without a header or mapping the columns are text_a, text_b, label (or
    text_a, label for two columns). ``label_map`` renames label values (``{"0": "entailment"}``)
    before they are checked against the task's label set; an empty label cell is unlabelled.
    ``quoting``: honour ``"..."`` quotes (default: for CSV, not for TSV, whose texts often hold
    bare quotes).
    """
    path = Path(path)
    delim = delimiter if delimiter is not None else ("," if path.suffix.lower() == ".csv" else "\t")
    kind = "CSV" if delim == "," else "TSV" if delim == "\t" else f"{delim!r}-delimited text"
    rows = _delimited_rows(path, delim, quoting if quoting is not None else delim == ",", kind)
    names = _delimited_header(path, rows, kind) if header else None
    layout = _DelimitedLayout(path, columns, names, label_map, label_list)
    out = [layout.example(line, row, index) for index, (line, row) in enumerate(rows)]
    if not out:
        raise DataError(path, f"no rows{' after the header' if header else ''}; expected {kind} rows")
    return out


def _delimited_header(path: Path, rows: Iterator[tuple[int, list[str]]], kind: str) -> list[str]:
    first = next(rows, None)
    if first is None:
        raise DataError(path, f"no header row; expected a {kind} file with a header (or header: false)")
    return [h.strip() for h in first[1]]


class _DelimitedLayout:
    """Turns the rows of one delimited file into examples (columns resolved on the first row)."""

    def __init__(self, path: Path, columns: Mapping[str, str | int | None] | None, header: list[str] | None,
                 label_map: Mapping[Any, Any] | None, label_list: Sequence[str] | None):
        self.path, self.columns, self.header, self.label_list = path, columns, header, label_list
        self.label_map = {str(k): str(v) for k, v in label_map.items()} if label_map is not None else None
        self.width: int | None = len(header) if header is not None else None
        self.cols: dict[str, int] | None = None

    def example(self, line: int, row: list[str], index: int) -> ClassificationExample:
        if self.width is None:
            self.width = len(row)
        if len(row) != self.width:
            where = "as in the header" if self.header is not None else "as in the first row"
            raise DataError(self.path, f"{len(row)} fields, expected {self.width} ({where})", line=line)
        if self.cols is None:
            self.cols = _delimited_columns(self.path, self.columns, self.header, self.width)
        cols = self.cols
        label = _map_label(self.path, row[cols["label"]], self.label_map, self.label_list, line) if "label" in cols else None
        return ClassificationExample(id=row[cols["id"]].strip() if "id" in cols else str(index), text_a=row[cols["text_a"]],
                                     text_b=row[cols["text_b"]] if "text_b" in cols else None, label=label)


# --------------------------------------------------------------------------- retrieval


def read_tatoeba(path: Path, *, label_list: Sequence[str] | None = None,
                 language: str | None = None) -> list[BitextExample]:
    """Tatoeba pair files: ``path`` = ``tatoeba.xxx-eng.xxx`` (source), its English side the same
    name ending ``.eng``; line i of one is the translation of line i of the other."""
    path = Path(path)
    eng = path.with_suffix(".eng")
    if eng == path:
        raise DataError(path, "expected the non-English file (tatoeba.xxx-eng.xxx), not the .eng file")
    expected = "one sentence per line, aligned with the .eng file"
    src = _lines(_read_text(path, expected))
    tgt = _lines(_read_text(eng, expected))
    if len(src) != len(tgt):
        raise DataError(path, f"{len(src)} lines but {eng.name} has {len(tgt)}; expected line-aligned files")
    for i, (s, t) in enumerate(zip(src, tgt), start=1):
        if not s.strip():
            raise DataError(path, "empty sentence; expected one sentence per line", line=i)
        if not t.strip():
            raise DataError(eng, "empty sentence; expected one sentence per line", line=i)
    return [BitextExample(id=str(i), source=s, target=t) for i, (s, t) in enumerate(zip(src, tgt))]


# --------------------------------------------------------------------------- generic JSONL


def read_jsonl(path: Path, *, format: str, label_list: Sequence[str] | None = None, language: str | None = None,
               fields: dict[str, str] | None = None, label_map: Mapping[Any, Any] | None = None) -> list[Example]:
    """Generic JSON lines for ``format``: each line is read by the format's ``example_from_json``.

    Keys default to the format's ``json_fields`` (dotted keys allowed; remap them with
    ``fields``). For the built-in formats:

    - classification: ``text_a``, optional ``text_b``, ``label`` (string or int, checked against label_list)
    - multiple_choice: ``context`` (optional), ``question``, ``choices`` (list of strings), ``label`` (index)
    - extractive_qa: ``context``, ``question``, ``answers`` ([{text, answer_start}]), optional ``is_impossible``
    - tagging: ``tokens`` (list), ``tags`` (list, same length, optional)
    - retrieval: ``source``, ``target``
    ``id`` is optional everywhere (the line index is used). ``label_map`` renames the values
    of the (top-level) label field before they are checked, e.g. ``{"0": "entailment"}``.
    """
    try:
        fmt = get_format(format)
    except UnknownNameError:
        raise DataError(path, f"unknown format {format!r}; expected one of {sorted(format_names())}") from None
    keys = {**fmt.json_fields, **(fields or {})}
    expected = f"JSON lines with fields {sorted(set(keys.values()))}"
    out: list[Example] = []
    lmap = {str(k): v for k, v in label_map.items()} if label_map is not None else None
    for lineno, obj in iter_jsonl(path, expected):
        if lmap is not None:
            obj = _relabel(path, obj, keys.get("label", "label"), lmap, lineno)
        out.append(fmt.example_from_json(JsonRecord(path, obj, keys, lineno, index=len(out)), label_list))
    if not out:
        raise DataError(path, f"no examples found; expected {expected}")
    return out


def _relabel(path: Path, obj: dict[str, Any], key: str, label_map: Mapping[str, Any], line: int) -> dict[str, Any]:
    """``obj`` with its label value renamed through ``label_map`` (absent/null labels stay)."""
    value = obj.get(key)
    if value is None:
        return obj
    if str(value) not in label_map:
        raise DataError(path, f"label {value!r} (field '{key}') is not in label_map {dict(label_map)}", line=line)
    return {**obj, key: label_map[str(value)]}


def _jsonl(format: str) -> Reader:
    def reader(path: Path, **kwargs: Any) -> list[Example]:
        return read_jsonl(path, format=format, **kwargs)

    reader.__name__ = f"read_jsonl_{format}"
    reader.__doc__ = f"Generic JSONL reader for the {format} format (see :func:`read_jsonl`)."
    return reader


_FILE_READERS: dict[str, Reader] = {
    "squad_json": read_squad_json,
    "token_tsv": read_token_tsv,
    "conllu": read_conllu,
    "xcopa_jsonl": read_xcopa_jsonl,
    "commonsenseqa_jsonl": read_commonsenseqa_jsonl,
    "cosmosqa_csv": read_cosmosqa_csv,
    "anli_csv": read_anli_csv,
    "nli_tsv": read_nli_tsv,
    "pawsx_tsv": read_pawsx_tsv,
    "tatoeba": read_tatoeba,
    "bucc2018": read_bucc2018,  # official BUCC 2018 layout, whole corpora (xstilts.tasks.bucc)
    "delimited": read_delimited,
}

#: the format each file layout reads (``jsonl_<format>``: that format); checked against a
#: catalog entry's format
READER_FORMATS: dict[str, str] = {
    "squad_json": "extractive_qa", "token_tsv": "tagging", "conllu": "tagging", "xcopa_jsonl": "multiple_choice",
    "commonsenseqa_jsonl": "multiple_choice", "cosmosqa_csv": "multiple_choice", "anli_csv": "classification",
    "nli_tsv": "classification", "pawsx_tsv": "classification", "tatoeba": "retrieval",
    "bucc2018": "retrieval", "delimited": "classification",
}


class _Readers(Mapping[str, Reader]):
    """The layouts above, those added by :func:`register_reader`, and ``jsonl_<format>`` for
    every registered format (derived from the format registry, so a new format brings its
    generic JSONL reader)."""

    def _jsonl_names(self) -> list[str]:
        return [f"jsonl_{name}" for name in format_names()]

    def __getitem__(self, name: str) -> Reader:
        if name in _FILE_READERS:
            return _FILE_READERS[name]
        if name in self._jsonl_names():
            return _jsonl(name[len("jsonl_"):])
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter([*_FILE_READERS, *self._jsonl_names()])

    def __len__(self) -> int:
        return len(_FILE_READERS) + len(format_names())


READERS: Mapping[str, Reader] = _Readers()
"""Reader name (``local.reader`` in the catalog) -> function(path, *, label_list, language, **options)."""


def register_reader(name: str, reader: Reader, *, replace: bool = False, format: str | None = None) -> None:
    """Add a file layout: ``reader(path, *, label_list, language, **options) -> list[Example]``.

    ``format`` (optional) is the format it reads; catalog entries of another format are refused.
    """
    if name in READERS and not replace:
        raise ConfigError(f"a reader named '{name}' is already registered", key="local.reader")
    _FILE_READERS[name] = reader
    if format is not None:
        READER_FORMATS[name] = format
    else:
        READER_FORMATS.pop(name, None)


def reader_format(name: str) -> str | None:
    """The format reader ``name`` reads (None when not declared)."""
    if name.startswith("jsonl_") and name not in _FILE_READERS:
        return name[len("jsonl_"):]
    return READER_FORMATS.get(name)


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``; :class:`UnknownNameError` lists the others."""
    if name not in READERS:
        raise UnknownNameError("reader", name, list(READERS))
    return READERS[name]


def read_file(reader: str, path: str | Path, *, label_list: Sequence[str] | None = None, language: str | None = None,
              **options: Any) -> list[Example]:
    """Read one file with the named reader."""
    return get_reader(reader)(Path(path), label_list=label_list, language=language, **options)
