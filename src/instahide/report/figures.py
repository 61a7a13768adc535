"""Figures of originals, mixtures, encryptions and recoveries (matplotlib, an optional extra).

Images are ``(N, C, H, W)`` here as everywhere in the library; they are turned channels-last only for
``imshow``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .._io import pyplot, save_figure
from ..challenge import ChallengeTruth, ScoreResult, write_score_files
from ..data.scaling import to_unit_range

__all__ = ["to_display", "encryption_grid", "truth_unit_range", "write_score_report"]


def to_display(x: torch.Tensor, mean=None, std=None, stretch: bool = False) -> np.ndarray:
    """Images ``(N, C, H, W)`` -> ``(N, C, H, W)`` floats in [0, 1] for display.

    ``stretch=False``: undo the normalisation (``x * std + mean``) and clip to [0, 1], the way the
    original images look. ``stretch=True``: map each image's own min..max to 0..1 (for encryptions,
    whose values are not pixels).
    """
    x = x.detach().float().cpu()
    if not stretch:
        return to_unit_range(x.numpy(), "unit" if mean is None else "normalize", mean, std)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-12)).numpy()


def truth_unit_range(images: np.ndarray, truth: ChallengeTruth) -> np.ndarray:
    """Images ``(N, C, H, W)`` in the challenge's pixel units -> [0, 1] (clipped), for display."""
    return to_unit_range(images, truth.scaling, truth.params.get("private_mean"), truth.params.get("private_std"))


def encryption_grid(rows: list[tuple], path: str | os.PathLike, title: str | None = None,
                    cell: float = 1.1) -> None:
    """Save a PNG grid: one labelled row per ``(label, images (N, C, H, W) in [0, 1])`` or
    ``(label, images, captions)`` (one caption below each image)."""
    plt = pyplot()
    n = max(len(row[1]) for row in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(cell * n + 1.6, cell * len(rows) + (0.5 if title else 0.1)),
                             squeeze=False)
    for r, (label, imgs, *captions) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i < len(imgs):
                img = np.clip(np.asarray(imgs[i]).transpose(1, 2, 0), 0, 1)
                if img.shape[-1] == 1:
                    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(img, interpolation="nearest")
                if captions:
                    ax.set_title(captions[0][i], fontsize=8, y=-0.32)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _distinct(rows: np.ndarray, match: np.ndarray, dec: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of ``rows`` whose decryption and best-matching private image are both new (an
    image's rows often decrypt to one picture: the oracle's all do)."""
    picked, images, seen = [], set(), set()
    for r in rows:
        key = dec[r].tobytes()
        if match[r] not in images and key not in seen:
            picked.append(r)
            images.add(match[r])
            seen.add(key)
            if len(picked) == n:
                break
    return np.asarray(picked, dtype=np.int64)


def write_score_report(result: ScoreResult, out_dir: str | os.PathLike, decryption, truth: ChallengeTruth,
                       *, per_side: int = 8) -> dict[str, Path]:
    """:func:`~instahide.challenge.write_score_files` (``rows.csv``, ``scores.json``) and
    ``best_worst.png``: the ``per_side`` best and worst rows of ``decryption`` ``(N, C, H, W)`` among
    those with distinct pictures and distinct best-matching private images, each above that image
    (skipped with a warning without matplotlib). Returns the paths written."""
    paths = write_score_files(result, out_dir, truth)
    try:
        pyplot()
    except ImportError:
        warnings.warn('best_worst.png skipped: pictures need matplotlib (pip install "instahide[plot]")',
                      stacklevel=2)
        return paths
    dec = np.asarray(decryption.detach().cpu() if isinstance(decryption, torch.Tensor) else decryption,
                     dtype=np.float32)
    row_max = result.row_max_ssim
    match = np.where(result.ssim1 >= result.ssim2, result.p1, result.p2)
    order = np.argsort(-row_max, kind="stable")
    best_rows, worst_rows = (_distinct(rows, match, dec, per_side) for rows in (order, order[::-1]))
    rows = []
    for name, picked in (("best", best_rows), ("worst", worst_rows)):
        span = f"{row_max[picked].min():.2f}..{row_max[picked].max():.2f}"
        rows += [(f"{name} {len(picked)}\ndecryption\nSSIM {span}", truth_unit_range(dec[picked], truth)),
                 ("best match\n(private)", truth_unit_range(truth.private[match[picked]], truth))]
    paths["picture"] = Path(out_dir) / "best_worst.png"
    encryption_grid(rows, paths["picture"], title=f"Max_SSIM {result.max_ssim:.3f}, Mean_SSIM "
                    f"{result.mean_ssim:.3f} over {len(row_max)} rows (data range {result.data_range:g})")
    return paths
