"""Image metrics used to score recovered images, on ``(N, C, H, W)`` batches: SSIM (as scikit-image
computes it), L2 (RMSE), the best matching of a batch recovered in any order, and the measures that
match recognition (rank-1 identification among candidates, a linear classifier for label leakage).

Example: ``from instahide.metrics import ssim; ssim(a, b, data_range=2.0, reduction="none")``
"""
from .identify import (SIMILARITIES, LinearClassifier, Rank1Result, fit_linear_classifier, rank1,
                       rank1_identification, similarity_matrix, standardise)
from .match import MatchResult, match_batches
from .ssim import K1, K2, L2, SSIM, check_pair, l2, refuse_channels_last, ssim, window_for

__all__ = ["ssim", "SSIM", "l2", "L2", "check_pair", "K1", "K2", "MatchResult", "match_batches", "window_for",
           "refuse_channels_last", "Rank1Result", "rank1", "similarity_matrix", "rank1_identification",
           "SIMILARITIES", "standardise", "LinearClassifier", "fit_linear_classifier"]
