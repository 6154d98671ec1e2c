"""Analysis of runs: entropy-law fits, covariance vs entropy change, pass@k, diversity and
tail measures, token-entropy distributions (run summaries and plots: ``analysis.run_summary``).

Notebook support: ``analysis.sweeps`` (sweep directories, seed statistics), ``analysis.plots``
(one function per figure), ``analysis.token_entropy`` (a run's policy sampled again) and
``analysis.notebooks`` (executing the notebooks)."""

from critique_jax.analysis.diversity import (
    DEFAULT_THRESHOLDS,
    distinct_correct_solutions,
    distinct_per_solved,
    entropy_histogram,
    fork_share_by_token,
    pass_at_k_curve,
    solved_share_by_difficulty,
    top_entropy_positions,
    top_fraction_threshold,
)
from critique_jax.analysis.entropy_law import (
    LawFit,
    covariance_by_accuracy,
    covariance_vs_entropy_change,
    covariance_vs_same_batch_entropy_change,
    early_fit_prediction,
    fit_entropy_law,
    law_points_from_metrics,
    pearson_r,
)
from critique_jax.analysis.passk import pass_at_k

__all__ = [
    "DEFAULT_THRESHOLDS",
    "LawFit",
    "covariance_by_accuracy",
    "covariance_vs_entropy_change",
    "covariance_vs_same_batch_entropy_change",
    "distinct_correct_solutions",
    "distinct_per_solved",
    "early_fit_prediction",
    "entropy_histogram",
    "fit_entropy_law",
    "fork_share_by_token",
    "law_points_from_metrics",
    "pass_at_k",
    "pass_at_k_curve",
    "pearson_r",
    "solved_share_by_difficulty",
    "top_entropy_positions",
    "top_fraction_threshold",
]
