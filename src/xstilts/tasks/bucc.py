"""BUCC 2018 in its official layout, mined over the full comparable corpora.

The shared task (Zweigenbaum et al. 2018; https://comparable.limsi.fr/bucc2018/) ships, per
language pair ``xx-en`` and per part (``sample``, ``training``, ``test``), three files::

    xx-en.<part>.xx     id<TAB>sentence   (the non-English side of the comparable corpus)
    xx-en.<part>.en     id<TAB>sentence   (the English side)
    xx-en.<part>.gold   xx_id<TAB>en_id   (the parallel pairs hidden in it; withheld for ``test``)

The tarballs extract to ``bucc2018/xx-en/``. XTREME (google-research/xtreme
``scripts/download_data.sh``, ``download_bucc18``) uses ``sample`` as its dev split and
``training`` as its test split (the official test gold is not public); the catalog's ``bucc``
entry does the same (reader ``bucc2018``).

:func:`read_bucc2018` returns one :class:`BuccCorpus` per file: both sides in full, every
sentence a *candidate*, most of them distractors without a translation. :func:`evaluate_bucc`
runs the reference protocol (``third_party/evaluate_retrieval.py`` and
``utils_retrieve.py`` in XTREME; ``jiant/scripts/benchmarks/xtreme/xtreme_submission.py``):
margin-scored candidates from the nearest neighbours in both directions, pairs with score
``>=`` a threshold that is F1-optimal on the dev (``sample``) corpus and then applied to the
scored corpus. A threshold tuned on the scored corpus itself is reported as an *oracle*.

The hub's ``bucc18`` configs (and pair JSONL files) hold the gold pairs only, with no
distractors: mining among them gives an F1 no published number can be compared with, so
:func:`require_corpora` refuses them for BUCC scoring.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xstilts.errors import ConfigError, DataError, DataNotFoundError, XStiltsError
from xstilts.tasks.textio import read_text

logger = logging.getLogger(__name__)

#: xstilts split -> the official BUCC 2018 part holding it (XTREME's renaming)
SPLIT_PARTS = {"dev": "sample", "test": "training"}
_NAME = re.compile(r"^(?P<xx>[a-z]{2,3})-en\.(?P<part>[A-Za-z0-9_]+)\.(?P=xx)$")
EXPECTED_LINE = "id<TAB>sentence per line (official BUCC 2018 layout)"


@dataclass
class BuccCorpus:
    """One side-by-side comparable corpus of the official layout (both sides in full) and its gold pairs.

    ``id`` is ``"xx-en.<part>"``; ``gold`` is None where the part has no gold file.
    """

    id: str
    language: str
    part: str
    source_ids: list[str]
    source: list[str]
    target_ids: list[str]
    target: list[str]
    gold: set[tuple[str, str]] | None = None
    files: list[str] = field(default_factory=list)


def _read_id_sentences(path: Path) -> tuple[list[str], list[str]]:
    """Ids and sentences of an ``id<TAB>sentence`` file; DataError naming the line otherwise."""
    text = read_text(path, EXPECTED_LINE)
    ids: list[str] = []
    sentences: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 1)
        if len(parts) != 2 or not parts[0].strip():
            raise DataError(path, f"expected {EXPECTED_LINE}", line=lineno)
        ex_id = parts[0].strip()
        if ex_id in seen:
            raise DataError(path, f"id {ex_id!r} appears twice; expected unique sentence ids", line=lineno)
        seen.add(ex_id)
        ids.append(ex_id)
        sentences.append(parts[1].strip())
    if not ids:
        raise DataError(path, f"no sentences; expected {EXPECTED_LINE}")
    return ids, sentences


def _read_gold(path: Path, source_ids: set[str], target_ids: set[str]) -> set[tuple[str, str]]:
    """Gold id pairs; every id must occur on its side of the corpus."""
    gold: set[tuple[str, str]] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) != 2:
            raise DataError(path, "expected xx_id<TAB>en_id per line (official BUCC 2018 gold)", line=lineno)
        if parts[0] not in source_ids or parts[1] not in target_ids:
            raise DataError(path, f"gold pair {parts[0]}/{parts[1]} names an id missing from the sentence files",
                            line=lineno)
        gold.add((parts[0], parts[1]))
    if not gold:
        raise DataError(path, "no gold pairs; expected xx_id<TAB>en_id per line")
    return gold


def read_bucc2018(path: str | Path, *, label_list: Sequence[str] | None = None,
                  language: str | None = None) -> list[BuccCorpus]:
    """Reader ``bucc2018``: ``path`` is the non-English file ``xx-en.<part>.xx``; its English side
    ``xx-en.<part>.en`` and gold ``xx-en.<part>.gold`` (optional) sit next to it. One corpus."""
    path = Path(path)
    match = _NAME.match(path.name)
    if match is None:
        raise DataError(path, "expected the non-English file of the official BUCC 2018 layout, named xx-en.<part>.xx "
                              "(e.g. de-en.sample.de)")
    xx, part = match.group("xx"), match.group("part")
    en_path = path.with_name(f"{xx}-en.{part}.en")
    gold_path = path.with_name(f"{xx}-en.{part}.gold")
    source_ids, source = _read_id_sentences(path)
    target_ids, target = _read_id_sentences(en_path)
    gold = _read_gold(gold_path, set(source_ids), set(target_ids)) if gold_path.is_file() else None
    files = [str(path), str(en_path)] + ([str(gold_path)] if gold is not None else [])
    logger.info("BUCC %s-en.%s: %d %s and %d en sentences, %s gold pairs", xx, part, len(source), xx, len(target),
                len(gold) if gold is not None else "no")
    return [BuccCorpus(id=f"{xx}-en.{part}", language=language or xx, part=part, source_ids=source_ids,
                       source=source, target_ids=target_ids, target=target, gold=gold, files=files)]


def bucc_file(data_dir: str | Path, language: str, split: str) -> Path:
    """The non-English file of ``split`` (dev = ``sample``, test = ``training``) under ``data_dir``,
    in the tarballs' layout ``bucc2018/xx-en/xx-en.<part>.xx``."""
    if split not in SPLIT_PARTS:
        raise XStiltsError(f"BUCC 2018 split {split!r}: expected one of {sorted(SPLIT_PARTS)}")
    part = SPLIT_PARTS[split]
    return Path(data_dir) / "bucc2018" / f"{language}-en" / f"{language}-en.{part}.{language}"


def require_corpora(task: str, examples: Sequence[Any]) -> list[BuccCorpus]:
    """The examples as :class:`BuccCorpus` objects, or ConfigError when they are gold pairs only."""
    if examples and all(isinstance(ex, BuccCorpus) for ex in examples):
        return list(examples)
    raise ConfigError(
        f"task '{task}': BUCC F1 needs the full comparable corpora of the official BUCC 2018 layout "
        "(bucc2018/xx-en/xx-en.sample.xx, .en, .gold; reader 'bucc2018'); the data given holds translation "
        "pairs only (the hub's bucc18 configs and pair JSONL files have no distractors), and mining among gold "
        "pairs gives an F1 no published BUCC number can be compared with. Download the official files "
        "(https://comparable.limsi.fr/bucc2018/) into the data dir")


# ---------------------------------------------------------------------- the protocol
@dataclass
class BuccResult:
    """Scores of one corpus (percentages) and how the threshold was chosen.

    ``threshold_source``: ``"dev"`` (tuned on the dev corpus, the reference protocol) or
    ``"oracle"`` (tuned on the scored corpus itself). ``scores`` holds ``f1``, ``precision``,
    ``recall`` at that threshold and ``f1_oracle`` (always tuned on the scored corpus).
    """

    scores: dict[str, float]
    threshold: float
    threshold_source: str
    dev_corpus: str | None
    predicted: list[tuple[str, str, float]]
    n_candidates: int

    def settings(self) -> dict[str, Any]:
        """The record written next to the scores (threshold, its source, whether it is comparable)."""
        return {"threshold": self.threshold, "threshold_source": self.threshold_source,
                "threshold_oracle": self.threshold_source == "oracle", "dev_corpus": self.dev_corpus,
                "comparable": self.threshold_source == "dev", "n_candidates": self.n_candidates,
                "distractors": True}


def corpus_candidates(corpus: BuccCorpus, embed: Callable[[list[str]], np.ndarray], *, k: int = 4,
                      margin: str = "ratio", normalize: bool = True, duplicates: str = "all_ids") -> dict:
    """Scored candidate id pairs of ``corpus``; ``embed`` maps a list of sentences to ``[n, d]`` vectors."""
    from xstilts.metrics import bucc_candidates

    src_emb = np.asarray(embed(list(corpus.source)), dtype=np.float32)
    tgt_emb = np.asarray(embed(list(corpus.target)), dtype=np.float32)
    return bucc_candidates(src_emb, tgt_emb, corpus.source_ids, corpus.target_ids, corpus.source, corpus.target,
                           k=k, margin=margin, normalize=normalize, duplicates=duplicates)


def _gold(corpus: BuccCorpus) -> set[tuple[str, str]]:
    if not corpus.gold:
        raise DataNotFoundError(f"BUCC corpus {corpus.id} has no gold file ({corpus.id}.gold next to "
                                f"{corpus.files[0] if corpus.files else corpus.id}); the official test gold is "
                                "withheld: score the 'training' part (xstilts split 'test') or 'sample' (dev)")
    return corpus.gold


def evaluate_bucc(corpus: BuccCorpus, embed: Callable[[list[str]], np.ndarray], *,
                  dev_corpus: BuccCorpus | None = None, k: int = 4, margin: str = "ratio", normalize: bool = True,
                  duplicates: str = "all_ids") -> BuccResult:
    """BUCC F1 of ``corpus`` with the threshold tuned on ``dev_corpus`` (XTREME / jiant protocol).

    Without ``dev_corpus`` (or when it is ``corpus`` itself) the threshold is tuned on the scored
    corpus and labelled ``oracle``.
    """
    from xstilts.metrics import bucc_extract, bucc_score, optimize_threshold

    options = {"k": k, "margin": margin, "normalize": normalize, "duplicates": duplicates}
    gold = _gold(corpus)
    cands = corpus_candidates(corpus, embed, **options)
    oracle = bucc_score(cands, gold)
    if dev_corpus is None or dev_corpus.id == corpus.id:
        threshold, source, scores = oracle["threshold"], "oracle", dict(oracle)
    else:
        threshold = optimize_threshold(corpus_candidates(dev_corpus, embed, **options), _gold(dev_corpus))
        source, scores = "dev", bucc_score(cands, gold, threshold)
    scores.pop("threshold")
    scores["f1_oracle"] = oracle["f1"]
    kept = bucc_extract(cands, threshold)
    predicted = sorted(((s, t, cands[(s, t)]) for s, t in kept), key=lambda r: -r[2])
    return BuccResult(scores=scores, threshold=float(threshold), threshold_source=source,
                      dev_corpus=dev_corpus.id if source == "dev" and dev_corpus is not None else None,
                      predicted=predicted, n_candidates=len(cands))
