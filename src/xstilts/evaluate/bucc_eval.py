"""BUCC 2018 inside a zero-shot evaluation: embed both whole corpora, mine, threshold from dev.

:func:`bucc_language` scores one language of a ``bucc`` evaluation the way XTREME and jiant
do (see :mod:`xstilts.tasks.bucc`): the scored corpus (``test`` = the official ``training``
part) is mined with distractors, and the threshold is the F1-optimal one on the dev
(``sample``) corpus of the same language. Scoring the dev split itself, or a language whose
dev corpus is missing, tunes the threshold on the scored corpus: the result says so
(``threshold_source: oracle``, ``comparable: false``).

``run`` is the evaluation's resolved state (``xstilts.evaluate.zero_shot._Run``): its model,
tokenizer, sentence-embedding target, retrieval settings, batch size, device and precision.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from xstilts.errors import DataNotFoundError

logger = logging.getLogger(__name__)


def embed_texts(run: Any, texts: list[str], desc: str) -> np.ndarray:
    """Sentence embeddings ``[len(texts), H]`` with the run's layer, pooling, prefix and max length."""
    from xstilts.models.predict import predict

    prefix = run.retrieval.prefix if run.retrieval is not None else ""
    enc = run.tokenizer([prefix + t for t in texts], truncation=True, max_length=run.options.max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    out = predict(run.model, run.target, run.fmt, features, batch_size=run.batch_size, pad_token_id=run.pad_id,
                  device=run.device, precision=run.precision, progress=True, desc=desc)
    return out["embeddings"]


def _dev_corpus(run: Any, lang: str) -> Any:
    """The dev (``sample``) corpus of ``lang``, or None (scoring dev itself, or no dev files: oracle)."""
    from xstilts.tasks.bucc import require_corpora
    from xstilts.tasks.loading import load_examples

    if run.split == "dev":
        return None
    try:
        return require_corpora(run.spec.name, load_examples(run.spec, lang, "dev", data_dir=run.data_root))[0]
    except DataNotFoundError as exc:
        logger.warning("%s/%s: no dev corpus to tune the threshold on (%s); the threshold is tuned on the scored "
                       "corpus and reported as an oracle", run.spec.name, lang, exc)
        return None


def bucc_language(run: Any, lang: str, examples: list[Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Scores and prediction rows (``{"id": xx id, "prediction": en id, "score"}``) of one BUCC language.

    The threshold, its source, whether the number is comparable and the corpus sizes go to
    ``run.settings["per_language"][lang]``.
    """
    from xstilts.tasks.bucc import evaluate_bucc, require_corpora

    corpus = require_corpora(run.spec.name, examples)[0]
    rs = run.retrieval
    result = evaluate_bucc(corpus, lambda texts: embed_texts(run, texts, f"{run.spec.name}/{lang}"),
                           dev_corpus=_dev_corpus(run, lang), k=rs.k, margin=rs.margin or "ratio",
                           normalize=rs.normalize, duplicates="all_ids")
    record = {**result.settings(), "corpus": corpus.id, "duplicates": "all_ids",
              "sentences": {"xx": len(corpus.source), "en": len(corpus.target)}, "gold_pairs": len(corpus.gold or ())}
    run.settings.setdefault("per_language", {})[lang] = record
    logger.info("%s/%s: threshold %.4f from %s (%d candidates)", run.spec.name, lang, result.threshold,
                result.threshold_source, result.n_candidates)
    return result.scores, [{"id": s, "prediction": t, "score": sc} for s, t, sc in result.predicted]
