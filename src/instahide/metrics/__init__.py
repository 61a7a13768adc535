"""Image metrics used to score recovered images: SSIM (as scikit-image computes it) and L2 (RMSE).

Example: ``from instahide.metrics import ssim; ssim(a, b, data_range=2.0, reduction="none")``
"""
from .ssim import K1, K2, L2, SSIM, check_pair, l2, ssim

__all__ = ["ssim", "SSIM", "l2", "L2", "check_pair", "K1", "K2"]
