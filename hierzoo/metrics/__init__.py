"""Hierarchical metrics: a functional core (``functional``: pure, vectorized, fractions in
[0, 1]), a stateful accumulator on top of it (``accumulator``), bulk name encoding (``names``),
result files (``reading``, ``results``: ``score_results`` reports percent)."""

from hierzoo.metrics.accumulator import HierarchicalMetrics
from hierzoo.metrics.functional import (
    Estimate,
    consistent_paths,
    encode,
    first_error_level,
    hca,
    hierarchical_f1,
    leaf_accuracy,
    level_accuracy,
    path_consistency,
    por,
    strict_por,
    summarize,
    tor,
)
from hierzoo.metrics.reading import ResultColumns, available_cpus, read_result_columns
from hierzoo.metrics.results import (
    format_left_out,
    read_results,
    results_to_paths,
    round_floats,
    score_results,
)

__all__ = [
    "Estimate",
    "HierarchicalMetrics",
    "ResultColumns",
    "available_cpus",
    "consistent_paths",
    "encode",
    "first_error_level",
    "format_left_out",
    "hca",
    "hierarchical_f1",
    "leaf_accuracy",
    "level_accuracy",
    "path_consistency",
    "por",
    "read_result_columns",
    "read_results",
    "results_to_paths",
    "round_floats",
    "score_results",
    "strict_por",
    "summarize",
    "tor",
]
