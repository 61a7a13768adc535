"""Networks to train on InstaHide encryptions: the reference ResNet-18, two small CPU-friendly nets and a
small ResNet for large (224 x 224) images.

Every model maps images ``(B, C, H, W)`` to logits ``(B, num_classes)`` and works for any ``H, W >= 8``
(global pooling before the head), so the same network runs on CIFAR (32x32), MNIST (28x28) and
scikit-learn's digits (8x8).

``MODELS`` lists them (``preact_resnet18``: the reference network, 11.17 M parameters; ``fastnet``: a
CIFAR speed-record style net, 2.0 M; ``mnistnet``: a small CNN for grayscale digits, 0.15 M;
``resnet10_224``: a pre-activation ResNet-10 whose stem downsamples by 4, for ImageNet-sized inputs, 4.9 M).

Example::

    model = build_model("fastnet", num_classes=10, in_channels=3)
    logits = model(torch.randn(128, 3, 32, 32))      # (128, 10)
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreActBlock", "PreActResNet18", "PreActResNet10Stem", "FastNet", "MnistNet", "MODELS", "SignInvariant", "build_model",
           "count_parameters", "sign_invariant"]


def _check_input(x: torch.Tensor, in_channels: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"Invalid input shape for {name}, we expect (B, {in_channels}, H, W). Got: {tuple(x.shape)}")


def _scaled(width: int, multiplier: float) -> int:
    return max(1, int(round(width * multiplier)))


# ----------------------------------------------------------------------------------------------------
# Pre-activation ResNet-18 (the reference network)
# ----------------------------------------------------------------------------------------------------

class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity mappings in deep residual networks").

    ``BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3`` plus the shortcut. When the shape changes (stride or
    width), the shortcut is a 1x1 convolution applied to the *pre-activated* input, as in the reference
    code; otherwise it is the identity on the raw input. Shape ``(B, in_planes, H, W) ->
    (B, planes, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for CIFAR, as trained by the InstaHide reference code.

    Layout: 3x3 stem convolution (stride 1, no max-pool), four stages of two :class:`PreActBlock` at
    widths ``width * (1, 2, 4, 8)`` (64/128/256/512) and strides 1/2/2/2, global average pool,
    linear head. 11,171,274 parameters at ``width=64``, 10 classes, 3 channels.

    Faithful to the reference, with two deliberate points:

    - The InstaHide reference (``models/resnet.py``, ``ResNet18 = ResNet(PreActBlock, [2, 2, 2, 2])``,
      inherited from facebookresearch/mixup-cifar10) follows the stem convolution with BN-ReLU, so the
      first block pre-activates an already activated map. kuangliu's pytorch-cifar
      ``PreActResNet18`` has a bare stem convolution (128 parameters fewer). ``stem_bn=True`` (default)
      is the InstaHide reference; ``stem_bn=False`` is kuangliu's.
    - Neither of those codes has the final BN-ReLU before the pool that the identity-mappings paper
      puts there; this one does not either (follow the reference). Both pool with ``avg_pool2d(out,
      4)``, which is global on the 4x4 map of a 32x32 input; here the pool is adaptive (global), which
      is identical at 32x32 and also works for other sizes (``H, W >= 8`` recommended).

    Shape: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64, *, stem_bn: bool = True):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width) if stem_bn else None
        stages, in_planes = [], width
        for planes, stride in zip(widths, (1, 2, 2, 2)):
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, type(self).__name__)
        out = self.conv1(x)
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class PreActResNet10Stem(nn.Module):
    """A small pre-activation ResNet for large images (224 x 224): the ImageNet ResNet's stem, then one
    :class:`PreActBlock` per stage.

    Layout: ``conv7x7(stride 2) - BN - ReLU - maxpool3x3(stride 2)`` (224 -> 56, as in He et al.'s
    ImageNet ResNets), four stages of one :class:`PreActBlock` at widths ``width * (1, 2, 4, 8)``
    (64/128/256/512) and strides 1/2/2/2 (56 -> 7), BN-ReLU, global average pool, linear head.
    4.9 M parameters at ``width=64``, 10 classes, 3 channels. The stem makes a 224 x 224 step about as
    cheap as ``preact_resnet18`` on 64 x 64; on small inputs it still runs (maps shrink to 1 x 1), but
    the CIFAR networks suit those better.

    Shape: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for planes, stride in zip((width, 2 * width, 4 * width, 8 * width), (1, 2, 2, 2)):
            stages.append(PreActBlock(in_planes, planes, stride))
            in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.bn_out = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, type(self).__name__)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.max_pool2d(out, 3, stride=2, padding=1)
        out = F.relu(self.bn_out(self.stages(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# ----------------------------------------------------------------------------------------------------
# Small speed-record style net
# ----------------------------------------------------------------------------------------------------

def _conv_bn_gelu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


class _MaxPoolIfLarge(nn.Module):
    """2x2 max-pool (``ceil_mode``, so odd sizes keep their border) unless a side is already < 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 2:
            return x
        return F.max_pool2d(x, 2, ceil_mode=True)


class _ConvGroup(nn.Module):
    """``conv3x3 - maxpool2 - BN - GELU - conv3x3 - BN - GELU`` (airbench's ConvGroup)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = _MaxPoolIfLarge()
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn1(self.pool(self.conv1(x))))
        return F.gelu(self.bn2(self.conv2(x)))


class FastNet(nn.Module):
    """A small, fast CIFAR network in the style of the CIFAR-10 speed records (airbench, Page's ResNet-9).

    Layout: stem ``conv3x3 - BN - GELU`` to ``widths[0]`` channels, then three groups
    ``conv3x3 - maxpool2 - BN - GELU - conv3x3 - BN - GELU`` at ``widths``, global max pool, linear head
    without bias whose output is multiplied by ``scale`` (airbench's 1/9 keeps the initial logits small).
    About 2.0 M parameters at the default widths; ``width=0.5`` gives about 0.5 M.

    Differences from airbench, for simplicity and small inputs: a plain 3x3 stem instead of its frozen
    2x2 patch-whitening layer, ordinary trainable BatchNorm, and max-pools that use ``ceil_mode`` and are
    skipped once a side is below 2, so 8x8 inputs (8 -> 4 -> 2 -> 1) and 28x28 inputs (28 -> 14 -> 7 -> 4)
    never collapse to an empty map.

    Args:
        num_classes: outputs of the head.
        in_channels: input channels.
        widths: channels of the three groups; the stem uses ``widths[0]``.
        width: multiplier applied to every width (rounded, at least 1).
        scale: factor on the logits.

    Shape: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (64, 256, 256),
                 width: float = 1.0, scale: float = 1 / 9):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"FastNet takes 3 widths, got {tuple(widths)}")
        w = [_scaled(c, width) for c in widths]
        self.in_channels, self.num_classes, self.scale = in_channels, num_classes, scale
        self.stem = nn.Sequential(*_conv_bn_gelu(in_channels, w[0]))
        self.groups = nn.Sequential(_ConvGroup(w[0], w[0]), _ConvGroup(w[0], w[1]), _ConvGroup(w[1], w[2]))
        self.head = nn.Linear(w[2], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, type(self).__name__)
        out = self.groups(self.stem(x))
        out = torch.amax(out, dim=(2, 3))
        return self.head(out) * self.scale


# ----------------------------------------------------------------------------------------------------
# Small MNIST / digits net
# ----------------------------------------------------------------------------------------------------

class MnistNet(nn.Module):
    """A small CNN for grayscale digits (MNIST 28x28, scikit-learn digits 8x8).

    Layout: ``conv3x3(32) - BN - ReLU - conv3x3(64) - BN - ReLU - maxpool2 - adaptive avg pool to 4x4
    - fc(128) - ReLU - fc(num_classes)`` (the classic PyTorch MNIST example, with padding, BatchNorm and
    an adaptive pool so any ``H, W >= 8`` works and the head's size does not depend on the input size).
    About 0.15 M parameters at ``width=1``; ``width`` scales every layer.

    Shape: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c1, c2, hidden = _scaled(32, width), _scaled(64, width), _scaled(128, width)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * c2, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, type(self).__name__)
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------

def _preact_resnet18(num_classes: int, in_channels: int, width: float) -> nn.Module:
    return PreActResNet18(num_classes, in_channels, width=_scaled(64, width))


def _resnet10_224(num_classes: int, in_channels: int, width: float) -> nn.Module:
    return PreActResNet10Stem(num_classes, in_channels, width=_scaled(64, width))


def _fastnet(num_classes: int, in_channels: int, width: float) -> nn.Module:
    return FastNet(num_classes, in_channels, width=width)


def _mnistnet(num_classes: int, in_channels: int, width: float) -> nn.Module:
    return MnistNet(num_classes, in_channels, width=width)


MODELS: dict[str, tuple[Callable[[int, int, float], nn.Module], str]] = {
    "preact_resnet18": (_preact_resnet18, "pre-activation ResNet-18, the InstaHide reference network (11.2 M)"),
    "fastnet": (_fastnet, "small CIFAR speed-record style net, widths 64/256/256 (2.0 M)"),
    "mnistnet": (_mnistnet, "small CNN for grayscale digits, conv32-conv64-fc128 (0.15 M)"),
    "resnet10_224": (_resnet10_224, "pre-activation ResNet-10 with a stride-4 stem, for 224 x 224 inputs (4.9 M)"),
}


class SignInvariant(nn.Module):
    """``model(|x|)``: a network whose first operation is the element-wise absolute value.

    The InstaHide mask is uniform and independent of the image, so what a network can learn from an
    encryption ``e`` it can learn from ``|e|`` (``= |mixture|``): nothing is lost, and the network no
    longer spends its capacity learning to ignore random signs (docs/accuracy.md, "Why |e| first").
    ``e``, ``-e`` and every re-masking of ``e`` give bit-identical outputs.

    >>> net = SignInvariant(torch.nn.Linear(3, 2))
    >>> x = torch.randn(4, 3)
    >>> torch.equal(net(x), net(-x))
    True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.abs())


def sign_invariant(model: nn.Module) -> SignInvariant:
    """``model`` with the sign-invariant input stage (:class:`SignInvariant`); unchanged if it has one."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model if isinstance(model, SignInvariant) else SignInvariant(model)


# The largest model build_model makes: 2^30 parameters (4 GiB of float32 weights, as much again for
# SGD's momentum). The registered models are 0.15-11.2 M at width 1; preact_resnet18 at width 8 is 0.7 G.
MAX_PARAMETERS = 2 ** 30
_MAX_SIZE = 2 ** 24  # num_classes, in_channels and width * 64 beyond this cannot fit MAX_PARAMETERS


def _check_build(name, num_classes, in_channels, width) -> None:
    """Types and ranges of :func:`build_model`'s arguments, then its size counted on torch's meta
    device (no memory allocated, no random numbers drawn) against :data:`MAX_PARAMETERS`."""
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{arg} must be an integer, got {type(value).__name__} {value!r}")
        if not 1 <= value <= _MAX_SIZE:
            raise ValueError(f"need {arg} >= 1 and at most {_MAX_SIZE}, got {value}")
    if isinstance(width, bool) or not isinstance(width, numbers.Real):
        raise TypeError(f"width must be a number, got {type(width).__name__} {width!r}")
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"need width > 0 and finite, got {width}")
    size = None
    if width * 64 <= _MAX_SIZE:
        with torch.device("meta"):
            size = count_parameters(MODELS[name][0](int(num_classes), int(in_channels), float(width)))
    if size is None or size > MAX_PARAMETERS:
        told = f"have {size:,} parameters" if size is not None else "be far larger"
        raise ValueError(f"{name} with width={width}, num_classes={num_classes}, in_channels={in_channels} would "
                         f"{told}; at most {MAX_PARAMETERS:,} parameters (4 GiB of float32 weights) are built")


def build_model(name: str, num_classes: int, in_channels: int, width: float = 1.0, *,
                sign_invariant: bool = False) -> nn.Module:
    """The model registered as ``name`` in :data:`MODELS`, ``(B, in_channels, H, W) -> (B, num_classes)``.

    ``width`` multiplies every layer width (``preact_resnet18``: base width ``64 * width``);
    ``sign_invariant`` puts ``|x|`` first (:class:`SignInvariant`). A model of more than
    :data:`MAX_PARAMETERS` is refused before anything is allocated (a checkpoint's ``width`` of 1e9).
    """
    _check_build(name, num_classes, in_channels, width)
    model = MODELS[name][0](int(num_classes), int(in_channels), float(width))
    return SignInvariant(model) if sign_invariant else model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values in ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
