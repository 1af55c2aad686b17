"""XTREME / XTREME-R aggregation: per-task averages over each benchmark's languages, group scores, overall.

Follows google-research/xtreme ``evaluate.py``:

* a task's score is the mean over the benchmark's language list of its per-language metric;
* the task's *metric* is ``(exact_match + f1) / 2`` for QA tasks, else ``f1`` when the task
  reports it (NER, POS, BUCC), else ``accuracy``, else ``map@20`` (Mewsli-X, LAReQA);
* a group's score is the mean of its tasks' metrics (when all its tasks are present);
* ``overall`` is the mean over *tasks* (all tasks equally weighted, as ``all_task`` in
  ``evaluate.py``) — which reproduces the XTREME paper's "Avg" column. ``overall_groups``,
  the mean over the group scores, is reported too (the XTREME-R leaderboard presents
  category scores; which of the two its headline uses is not stated in ``evaluate.py``).

Task names are catalog names (``bucc`` is XTREME's ``bucc2018``). XTREME-R, as
``XTREME_R_GROUP2TASK`` in ``evaluate.py``: classification (xnli, xcopa), structured
prediction (udpos, panx), QA (xquad, mlqa, tydiqa), retrieval (tatoeba, mewsli_x), multiple
choice (xcopa); LAReQA counts in the overall score (``XTREME_R_TASK2LANGS``) but in no group.
Its QA tasks use the same (EM + F1) / 2 rule here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from xstilts.errors import UnknownNameError, XStiltsError

logger = logging.getLogger(__name__)

BENCHMARK_GROUPS: dict[str, dict[str, list[str]]] = {
    "xtreme": {
        "classification": ["pawsx", "xnli"],
        "structured_prediction": ["udpos", "panx"],
        "qa": ["xquad", "mlqa", "tydiqa"],
        "retrieval": ["bucc", "tatoeba"],
    },
    "xtreme-r": {
        "classification": ["xnli", "xcopa"],
        "structured_prediction": ["udpos", "panx"],
        "qa": ["xquad", "mlqa", "tydiqa"],
        "retrieval": ["tatoeba", "mewsli_x"],
        "multiple_choice": ["xcopa"],
    },
}
#: tasks of a benchmark's overall score that belong to no group
UNGROUPED_TASKS: dict[str, list[str]] = {"xtreme": [], "xtreme-r": ["lareqa"]}
QA_TASKS = frozenset({"xquad", "mlqa", "tydiqa"})
_ALIASES = {"bucc2018": "bucc", "mewsli-x": "mewsli_x", "mewslix": "mewsli_x", "wikiann": "panx", "pos": "udpos", "ner": "panx"}


def benchmark_languages(task: str, benchmark: str = "xtreme") -> list[str]:
    """The official language list of ``task`` in ``benchmark`` (from the task catalog)."""
    from xstilts.tasks.catalog import get_task

    spec = get_task(task)
    langs = spec.benchmarks.get(benchmark)
    if not langs:
        raise XStiltsError(f"task '{task}' is not part of benchmark '{benchmark}' (catalog key benchmarks.{benchmark} is empty)")
    return list(langs)


def task_metric(task: str, scores: Mapping[str, float]) -> float:
    """The single number XTREME uses for a task: (EM + F1) / 2 for QA, else F1, else accuracy, else mAP@20."""
    if task in QA_TASKS:
        if "exact_match" not in scores or "f1" not in scores:
            raise XStiltsError(f"QA task '{task}' needs both 'exact_match' and 'f1', got {sorted(scores)}")
        return (scores["exact_match"] + scores["f1"]) / 2
    for key in ("f1", "accuracy", "map@20"):
        if key in scores:
            return float(scores[key])
    raise XStiltsError(f"task '{task}': no 'f1', 'accuracy' or 'map@20' among its scores {sorted(scores)}")


def language_average(task: str, per_language: Mapping[str, Mapping[str, float]], benchmark: str = "xtreme",
                     languages: list[str] | None = None) -> dict[str, float]:
    """Mean of every metric over the benchmark's languages of ``task``; a missing language is an error."""
    langs = languages if languages is not None else benchmark_languages(task, benchmark)
    missing = [lang for lang in langs if lang not in per_language]
    if missing:
        raise XStiltsError(f"{benchmark} score of '{task}' needs every benchmark language; missing: {', '.join(missing)}")
    metrics = set.intersection(*(set(per_language[lang]) for lang in langs))
    return {m: sum(per_language[lang][m] for lang in langs) / len(langs) for m in sorted(metrics)}


def _benchmark_task_scores(per_task: Mapping[str, Mapping], known: set[str], benchmark: str) -> dict[str, dict[str, float]]:
    """Each benchmark task's scores averaged over its languages (or as given when already averaged)."""
    task_scores: dict[str, dict[str, float]] = {}
    for raw_name, scores in per_task.items():
        name = _ALIASES.get(raw_name, raw_name)
        if name not in known:
            logger.info("%s: task '%s' is not part of the benchmark; ignored", benchmark, raw_name)
            continue
        if scores and all(isinstance(v, Mapping) for v in scores.values()):
            task_scores[name] = language_average(name, scores, benchmark)
        else:
            task_scores[name] = {k: float(v) for k, v in scores.items()}
    return task_scores


def xtreme_scores(per_task: Mapping[str, Mapping], benchmark: str = "xtreme") -> dict:
    """Aggregate task scores into XTREME / XTREME-R task, group and overall scores.

    ``per_task[task]`` is either already averaged over languages (``{"f1": 76.6,
    "exact_match": 60.8}``) or per language (``{"de": {"accuracy": 80.1}, ...}``), which is
    averaged over the benchmark's official languages first. Returns ``{"tasks": {task:
    metric}, "task_scores": {task: {metric: value}}, "groups": {group: score}, "overall":
    float | None, "overall_groups": float | None, "benchmark": ...}``; group and overall
    scores are present only when all their tasks are.
    """
    if benchmark not in BENCHMARK_GROUPS:
        raise UnknownNameError("benchmark", benchmark, list(BENCHMARK_GROUPS))
    groups = BENCHMARK_GROUPS[benchmark]
    known = {t for ts in groups.values() for t in ts} | set(UNGROUPED_TASKS.get(benchmark, []))
    task_scores = _benchmark_task_scores(per_task, known, benchmark)
    tasks = {t: task_metric(t, s) for t, s in task_scores.items()}
    group_scores = {g: sum(tasks[t] for t in ts) / len(ts) for g, ts in groups.items() if all(t in tasks for t in ts)}
    complete = known <= set(tasks)
    return {
        "benchmark": benchmark,
        "task_scores": task_scores,
        "tasks": tasks,
        "groups": group_scores,
        "overall": sum(tasks[t] for t in known) / len(known) if complete else None,
        "overall_groups": sum(group_scores.values()) / len(group_scores) if complete else None,
    }
