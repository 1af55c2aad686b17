"""Analysis: gains over the baseline, groupings, similarity measures, statistics and the report.

Modules: ``store`` (the results store's frames), ``records`` (typed stage rows and the planner's
StageRecord), ``metadata`` (tolerant task/language lookups), ``gains``, ``groupings``, ``stats``,
``similarity`` (measures), ``taskemb`` (Fisher TaskEmb, a cached step of its own), ``sections`` and
``similarity_sections`` (the report's sections computed as typed results), ``render`` (HTML +
Markdown + figures), ``figures`` (matplotlib), ``report`` (entry points: build_report, compute_report).
"""

from xstilts.analysis.gains import GainTable, compute_gains, per_language_gains, summarize_gains
from xstilts.analysis.groupings import (
    add_resource_level,
    attach_language_metadata,
    flag_high_low_divergence,
    flag_negative_groups,
    gains_by_group,
)
from xstilts.analysis.stats import (
    bootstrap_hierarchical_ci,
    rank_correlation,
    sign_flip_greater,
    wilcoxon_greater,
)

__all__ = [
    "GainTable", "compute_gains", "per_language_gains", "summarize_gains",
    "add_resource_level", "attach_language_metadata", "flag_high_low_divergence", "flag_negative_groups",
    "gains_by_group", "bootstrap_hierarchical_ci", "rank_correlation", "sign_flip_greater", "wilcoxon_greater",
]
