"""The InstaHide challenge (docs/challenge.md): generate one in the published format, and score a
decryption of it the way the challenge did (Max_SSIM, Mean_SSIM, and the L2 pair). Images are
``(N, C, H, W)`` in Python; the files are channels last.

Example::

    enc, lab, truth = make_challenge(ds.images[:100], ds.labels[:100], pool.images, T=50)
    write_challenge("runs/challenge", enc, lab, truth)          # truth -> runs/challenge-truth.npz
    enc, lab, meta = load_challenge("runs/challenge")
    result = score(decryption, load_truth("runs/challenge-truth.npz"))
    result.max_ssim, result.mean_ssim
"""
from .make import (ChallengeTruth, challenge_meta, default_truth_path, load_challenge, load_truth,
                   make_challenge, read_npy, save_truth, write_challenge)
from .score import L2_CONVENTION, SSIM_CONVENTION, ScoreResult, check_decryption, score, write_score_files

__all__ = [
    "make_challenge", "write_challenge", "load_challenge", "read_npy", "ChallengeTruth", "save_truth",
    "load_truth", "challenge_meta", "default_truth_path",
    "score", "ScoreResult", "write_score_files", "check_decryption", "SSIM_CONVENTION", "L2_CONVENTION",
]
