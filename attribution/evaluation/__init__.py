"""Evaluation math for attribution maps: pixel removal (ROAR / KAR, MoRF / LeRF) with mean fill or
ROAD's noisy linear imputation, pixel perturbation curves, cascading parameter randomization and
map similarity.

Pure torch / numpy (no Ray, no I/O): jobs feed it stored maps and models. See docs/design.md §2.
"""

from .errors import EvaluationError
from .imputation import DEFAULT_NOISE, IMPUTATIONS, linear_imputation, noisy_linear_imputation, replace
from .perturbation import (DEFAULT_FRACTIONS, PerturbationScores, auc, perturbation_curve, perturbation_scores,
                           random_ranking, relative_drops)
from .randomization import cascade, execution_order, randomized
from .removal import mask_first, ranking, remove, remove_bottom, remove_ranked, remove_top, removed_mask
from .similarity import METRICS, compare, hog_pearson, normalize, spearman, ssim

__all__ = [
    "DEFAULT_FRACTIONS", "DEFAULT_NOISE", "IMPUTATIONS", "METRICS", "EvaluationError", "PerturbationScores", "auc",
    "cascade", "compare", "execution_order", "hog_pearson", "linear_imputation", "mask_first",
    "noisy_linear_imputation", "normalize", "perturbation_curve", "perturbation_scores", "random_ranking",
    "randomized", "ranking", "relative_drops", "remove", "remove_bottom", "remove_ranked", "remove_top",
    "removed_mask", "replace", "spearman", "ssim",
]
