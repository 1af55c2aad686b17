"""Gains grouped by language family, genus, script and resource class, and the flags.

Flags: setups that help high-resource languages but hurt low-resource ones, and
(setup, family) pairs with a negative mean gain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd

from xstilts.analysis.gains import summarize_gains
from xstilts.languages import Language, find_language

log = logging.getLogger(__name__)

#: Joshi et al. (2020) classes counted as low-resource by default
LOW_RESOURCE_CLASSES: tuple[int, ...] = (0, 1, 2)
UNKNOWN = "unknown"
GROUPINGS = ("family", "genus", "script", "resource_class")


def attach_language_metadata(
    frame: pd.DataFrame, *, lookup: Callable[[str], Language | None] = find_language
) -> tuple[pd.DataFrame, list[str]]:
    """Add ``language_name, family, genus, script, resource_class`` columns by language code.

    Languages the catalog lacks keep their code as name and ``None`` metadata; a note
    lists them (and languages with only some fields missing) instead of failing.
    """
    infos = {code: lookup(str(code)) for code in sorted(frame["language"].unique().tolist())} if len(frame) else {}
    out = frame.copy()
    out["language_name"] = out["language"].map(lambda c: infos[c].name if infos[c] else str(c))
    for col in ("family", "genus", "script"):
        out[col] = out["language"].map(lambda c, col=col: getattr(infos[c], col, None))
    out["resource_class"] = out["language"].map(lambda c: getattr(infos[c], "resource_class", None)).astype("Int64")
    return out, _metadata_notes(infos)


def _metadata_notes(infos: dict[Any, Language | None]) -> list[str]:
    """Notes naming the languages without metadata, and those missing a family, script or class."""
    notes = []
    unknown = sorted(c for c, i in infos.items() if i is None)
    if unknown:
        notes.append(
            f"no metadata for language(s) {', '.join(map(str, unknown))}: they are shown by code and grouped as '{UNKNOWN}'."
        )
    for col in ("family", "script", "resource_class"):
        partial = sorted(c for c, i in infos.items() if i is not None and getattr(i, col) is None)
        if partial:
            notes.append(f"{col.replace('_', ' ')} unknown for {', '.join(map(str, partial))} (grouped as '{UNKNOWN}').")
    return notes


def gains_by_group(
    gains_meta: pd.DataFrame, group: str, *, per_target: bool = False, **summary_kwargs
) -> pd.DataFrame:
    """Summaries (see :func:`summarize_gains`) per (model, setup[, target], ``group``).

    ``group`` is a metadata column (``family``, ``genus``, ``script``, ``resource_class``,
    ``resource_level``); missing values form the group ``"unknown"``.
    """
    frame = gains_meta.copy()
    frame[group] = frame[group].astype(object).where(frame[group].notna(), UNKNOWN).astype(str)
    by = ["model", "setup", *(["target"] if per_target else []), group]
    return summarize_gains(frame, by, **summary_kwargs)


def add_resource_level(
    gains_meta: pd.DataFrame,
    *,
    low_classes: Iterable[int] = LOW_RESOURCE_CLASSES,
    low_languages: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Add ``resource_level``: "low" / "high" / "unknown".

    With ``low_languages`` (a user's list of codes) those languages are "low" and all others
    "high"; otherwise a language is "low" when its Joshi class is in ``low_classes``, and
    "unknown" when it has no class.
    """
    out = gains_meta.copy()
    if low_languages is not None:
        low = {str(c) for c in low_languages}
        out["resource_level"] = out["language"].astype(str).map(lambda c: "low" if c in low else "high")
        return out
    classes = set(low_classes)

    def level(value) -> str:
        if pd.isna(value):
            return UNKNOWN
        return "low" if int(value) in classes else "high"

    out["resource_level"] = out["resource_class"].map(level)
    return out


def flag_high_low_divergence(gains_levels: pd.DataFrame, *, per_target: bool = True) -> pd.DataFrame:
    """Setups whose mean gain is positive on high-resource and negative on low-resource languages.

    Works on a frame with ``resource_level`` (see :func:`add_resource_level`). Means are
    over the (language, seed) cells of each level. Returns one row per (model, setup[,
    target]) with ``gain_high``, ``gain_low``, ``n_high``, ``n_low`` and ``flagged``.
    """
    keys = ["model", "setup", *(["target"] if per_target else [])]
    cols = [*keys, "gain_high", "gain_low", "n_high", "n_low", "flagged"]
    known = gains_levels[gains_levels["resource_level"].isin(["high", "low"])]
    if known.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in known.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        # per level: mean over languages of the across-seed mean (languages weigh equally)
        lang_means = g.groupby(["resource_level", "target", "language"])["gain"].mean()
        lvl = lang_means.groupby(level="resource_level")
        means, counts = lvl.mean(), lvl.size()
        high, low = means.get("high"), means.get("low")
        rows.append(
            {
                **dict(zip(keys, key)),
                "gain_high": high,
                "gain_low": low,
                "n_high": int(counts.get("high", 0)),
                "n_low": int(counts.get("low", 0)),
                "flagged": bool(high is not None and low is not None and high > 0 and low < 0),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def flag_negative_groups(summary: pd.DataFrame, group: str = "family") -> pd.DataFrame:
    """Rows of a grouped summary whose mean gain is negative (the "unknown" group is not flagged).

    Adds ``significant``: True when the whole confidence interval is below zero (False when
    it is not, None when there is no interval, e.g. a single seed).
    """
    neg = summary[(summary["mean_gain"] < 0) & (summary[group].astype(str) != UNKNOWN)].copy()
    neg["significant"] = [
        (bool(hi < 0) if pd.notna(hi) else None) for hi in neg["ci_high"]
    ]
    return neg.reset_index(drop=True)
