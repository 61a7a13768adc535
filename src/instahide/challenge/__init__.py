"""The InstaHide challenge (SPEC section 4): generate one in the published format, and score a
decryption of it the way the challenge did (Max_SSIM, Mean_SSIM, and the L2 pair).

Example::

    enc, lab, truth = make_challenge(ds.images[:100], ds.labels[:100], pool.images, T=50)
    write_challenge("runs/challenge", enc, lab, truth)          # truth -> runs/challenge-truth.npz
    result = score(np.load("decryption.npy"), load_truth("runs/challenge-truth.npz"))
    result.max_ssim, result.mean_ssim
"""
from .make import (SCALINGS, ChallengeTruth, challenge_meta, default_truth_path, load_truth,
                   make_challenge, save_truth, scale_images, to_unit_range, write_challenge)
from .score import L2_CONVENTION, SSIM_CONVENTION, ScoreResult, check_decryption, score, write_score_report

__all__ = [
    "make_challenge", "write_challenge", "ChallengeTruth", "save_truth", "load_truth", "challenge_meta",
    "default_truth_path", "scale_images", "to_unit_range", "SCALINGS",
    "score", "ScoreResult", "write_score_report", "check_decryption", "SSIM_CONVENTION", "L2_CONVENTION",
]
