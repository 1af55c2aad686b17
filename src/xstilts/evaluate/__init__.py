"""Zero-shot evaluation over languages, and XTREME / XTREME-R aggregation.

Public API::

    zero_shot_eval(model, task, languages="all", split=None, data_dir=None, max_examples=None,
                   seed=0, batch_size=64, out_dir=None, retrieval=None, head=None, max_length=None,
                   doc_stride=None, max_query_length=None, precision="fp32", device=None) -> EvalReport
        (forward passes: xstilts.models.predict.predict; retrieval decoding: RetrievalFormat.retrieve)
    rescore(out_dir) -> EvalReport
    RetrievalSettings, EvalReport, default_retrieval_layer
    xtreme_scores(per_task, benchmark="xtreme") -> dict
"""

from xstilts.evaluate.xtreme import BENCHMARK_GROUPS, language_average, task_metric, xtreme_scores
from xstilts.evaluate.zero_shot import (
    EvalReport,
    RetrievalSettings,
    average_scores,
    default_retrieval_layer,
    rescore,
    resolve_languages,
    zero_shot_eval,
)

__all__ = [
    "EvalReport", "RetrievalSettings", "zero_shot_eval", "rescore", "default_retrieval_layer", "average_scores",
    "resolve_languages", "xtreme_scores", "language_average", "task_metric", "BENCHMARK_GROUPS",
]
