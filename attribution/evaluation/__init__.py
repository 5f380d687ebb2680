"""Evaluation math for attribution maps: pixel removal (ROAR / KAR, MoRF / LeRF), pixel
perturbation curves, cascading parameter randomization and map similarity.

Pure torch / numpy (no Ray, no I/O): jobs feed it stored maps and models. See docs/design.md §2.
"""

from .perturbation import DEFAULT_FRACTIONS, auc, perturbation_curve, random_ranking, relative_drops
from .randomization import cascade, execution_order, randomized
from .removal import EvaluationError, mask_first, ranking, remove, remove_bottom, remove_ranked, remove_top
from .similarity import METRICS, compare, hog_pearson, normalize, spearman, ssim

__all__ = [
    "DEFAULT_FRACTIONS", "METRICS", "EvaluationError", "auc", "cascade", "compare", "execution_order",
    "hog_pearson", "mask_first", "normalize", "perturbation_curve", "random_ranking", "randomized",
    "ranking", "relative_drops", "remove", "remove_bottom", "remove_ranked", "remove_top", "spearman", "ssim",
]
