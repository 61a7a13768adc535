"""Evaluation: clean test accuracy, and inference with InstaHide (average over T encryptions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..scheme import KeyGenerator, encrypt
from ..scheme.defaults import DOM, UPPER


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512, amp: bool = False) -> torch.Tensor:
    """Softmax probabilities ``(N, num_classes)`` of ``model`` on ``x`` ``(N, C, H, W)``, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(x), batch_size):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and x.is_cuda):
            out.append(F.softmax(model(x[s:s + batch_size]).float(), dim=1))
    model.train(was_training)
    return torch.cat(out)


def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, amp: bool = False,
             flip: bool = False) -> dict:
    """Top-1 accuracy and mean cross-entropy on clean images ``x`` ``(N, C, H, W)``, labels ``y`` ``(N,)``;
    ``flip`` averages the probabilities of each image and its mirror image (test-time flipping)."""
    p = predict_proba(model, x, batch_size, amp)
    if flip:
        p = (p + predict_proba(model, x.flip(3), batch_size, amp)) / 2
    return {"accuracy": (p.argmax(1) == y).float().mean().item(),
            "loss": F.nll_loss(torch.log(p.clamp_min(1e-12)), y).item()}


def evaluate_instahide(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    T: int = 16,
    k: int = 4,
    upper: float = UPPER,
    mode: str = "instahide",
    public: torch.Tensor | None = None,
    num_private: int | None = None,
    dom: float = DOM,
    own_min: float | None = None,
    generator: KeyGenerator | None = None,
    batch_size: int = 512,
) -> dict:
    """Inference with InstaHide: encrypt every test image ``T`` times with fresh keys, average the
    model's probabilities over the encryptions, take the argmax.

    Partners come from the test set itself (inside-dataset) or the public pool (cross-dataset; with
    ``num_private=1`` a test image is mixed with public images only). ``own_min`` forces each test
    image's own coefficient above a floor (the authors report that > 0.5 helps).

    Returns ``{"T": [1..T], "accuracy": [accuracy after averaging t encryptions for t = 1..T]}``.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    gen = generator or KeyGenerator.from_entropy()
    total = None
    accs = []
    for _ in range(T):
        enc = encrypt(x, k=k, upper=upper, mode=mode, public=public, num_private=num_private, dom=dom,
                      own_min=own_min, generator=gen)
        p = predict_proba(model, enc.images, batch_size)
        total = p if total is None else total + p
        accs.append((total.argmax(1) == y).float().mean().item())
    return {"T": list(range(1, T + 1)), "accuracy": accs}
