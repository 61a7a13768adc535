"""Image metrics used to score recovered images, on ``(N, C, H, W)`` batches: SSIM (as scikit-image
computes it), L2 (RMSE) and the best matching of a batch recovered in any order.

Example: ``from instahide.metrics import ssim; ssim(a, b, data_range=2.0, reduction="none")``
"""
from .match import MatchResult, match_batches
from .ssim import K1, K2, L2, SSIM, check_pair, l2, refuse_channels_last, ssim, window_for

__all__ = ["ssim", "SSIM", "l2", "L2", "check_pair", "K1", "K2", "MatchResult", "match_batches", "window_for",
           "refuse_channels_last"]
