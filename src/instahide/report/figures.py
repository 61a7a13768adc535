"""Figures of originals, mixtures and encryptions (matplotlib, an optional extra)."""
from __future__ import annotations

import os

import numpy as np
import torch


def to_display(x: torch.Tensor, mean=None, std=None, stretch: bool = False) -> np.ndarray:
    """Images ``(N, C, H, W)`` -> ``(N, H, W, C)`` floats in [0, 1] for display.

    ``stretch=False``: undo the normalisation (``x * std + mean``) and clip to [0, 1], the way the
    original images look. ``stretch=True``: map each image's own min..max to 0..1 (for encryptions,
    whose values are not pixels).
    """
    x = x.detach().float().cpu()
    if stretch:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    else:
        if mean is not None:
            c = x.shape[1]
            x = x * torch.tensor(std).view(1, c, 1, 1) + torch.tensor(mean).view(1, c, 1, 1)
        x = x.clamp(0, 1)
    return x.permute(0, 2, 3, 1).numpy()


def encryption_grid(rows: list[tuple[str, np.ndarray]], path: str | os.PathLike, title: str | None = None,
                    cell: float = 1.1) -> None:
    """Save a PNG grid: one labelled row per ``(label, images (N, H, W, C) in [0, 1])``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('pictures need matplotlib: pip install "instahide[plot]"') from exc
    n = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(cell * n + 1.6, cell * len(rows) + (0.5 if title else 0.1)),
                             squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i < len(imgs):
                img = imgs[i]
                if img.shape[-1] == 1:
                    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(img, interpolation="nearest")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
