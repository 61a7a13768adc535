"""The training configuration: one typed dataclass, every field commented, CLI overrides checked."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

TRAIN_MODES = ("vanilla", "mixup", "instahide")


@dataclass
class TrainConfig:
    # -- data --------------------------------------------------------------------------------------
    dataset: str = "digits"              # instahide.data.load_dataset name; digits ships with scikit-learn
    root: str | None = None              # where the dataset is (not needed for digits)
    subset: int | None = None            # train on N images drawn at random (seed 0) instead of the split
    test_subset: int | None = None       # evaluate on N test images (seed 0)
    augment: str = "auto"                # "auto": crop(pad 4)+flip for 3-channel 32x32 data (the reference's
                                         # CIFAR augmentation), none otherwise; "on" / "off" force it
    # -- model -------------------------------------------------------------------------------------
    model: str = "auto"                  # preact_resnet18 | fastnet | mnistnet; auto: mnistnet for 1 channel,
                                         # fastnet for 3 (the paper's model is preact_resnet18)
    width: float = 1.0                   # channel-width multiplier (scale down for CPU runs)
    # -- scheme (the paper's names; see instahide.encrypt) -------------------------------------------
    mode: str = "instahide"              # vanilla (no mixing) | mixup (no mask) | instahide
    k: int = 4                           # images per encryption (paper: 4 inside, 6 cross)
    upper: float = 0.65                  # c1, largest coefficient
    dom: float = 0.3                     # c2, smallest private-coefficient sum (cross-dataset only)
    num_private: int | None = None       # private slots with a public pool (default 2)
    public: str | None = None            # public pool source (builtin | folder | .npz): cross-dataset mode
    public_size: int = 10_000            # patches in the public pool
    public_resize: int | None = None     # short side before cropping patches (paper: 40 for 32x32)
    legacy: bool = False                 # the reference code's keys and defects (replays only)
    # -- optimisation (the reference recipe: SPEC section 2) ----------------------------------------
    epochs: int = 200                    # reference: 200
    batch_size: int = 128                # reference: 128
    lr: float = 0.1                      # SGD learning rate, reference 0.1
    momentum: float = 0.9                # SGD momentum, reference 0.9
    weight_decay: float = 1e-4           # reference 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # lr x gamma at these fractions of the epochs (100, 150 of 200)
    gamma: float = 0.1                   # lr factor at each milestone (reference: divide by 10)
    # -- run ---------------------------------------------------------------------------------------
    research_seed: int | None = None     # REPRODUCIBLE RESEARCH ONLY: seeds init, order, augmentation AND the
                                         # keys (anyone who knows it can recompute them); None: keys from OS
                                         # entropy and a random init
    device: str = "auto"                 # auto: cuda if available, else cpu
    amp: bool = True                     # bfloat16 autocast on CUDA (ignored on CPU)
    out: str = "runs/train"              # run folder: checkpoint, metrics, final.json, curves.png
    eval_every: int = 1                  # evaluate on the clean test set every N epochs (and the last)
    progress: bool = True                # progress bar on stderr

    def validate(self) -> "TrainConfig":
        """Raise a ValueError naming the first bad field (before any data is loaded)."""
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {TRAIN_MODES}")
        from .models import MODELS

        if self.model != "auto" and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: auto, {', '.join(MODELS)}")
        if self.augment not in ("auto", "on", "off"):
            raise ValueError(f"augment must be auto, on or off, got {self.augment!r}")
        for name in ("epochs", "batch_size", "k", "eval_every", "public_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.width <= 0:
            raise ValueError("lr and width must be > 0")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the epochs in (0, 1), got {self.milestones}")
        check_scheme_options(self.mode, self.k, self.upper, self.dom, self.public, self.num_private)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return config_from_dict(cls, d, tuples=("milestones",))


def config_from_dict(cls, d: dict, tuples=()):
    """``cls(**d)`` for a configuration dataclass, refusing unknown keys and turning the list fields
    named in ``tuples`` (JSON has no tuples) back into tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
    d = dict(d)
    for name in tuples:
        if name in d:
            d[name] = tuple(d[name])
    return cls(**d)


def make_optimizer(model, cfg):
    """The reference recipe's optimiser and schedule from a configuration with ``lr``, ``momentum``,
    ``weight_decay``, ``epochs``, ``milestones`` (fractions of the epochs) and ``gamma``: SGD and a
    per-epoch MultiStepLR. Returns ``(optimizer, scheduler)``."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    milestones = sorted({max(1, round(m * cfg.epochs)) for m in cfg.milestones})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)


def check_scheme_options(mode: str, k: int, upper: float, dom: float, public, num_private) -> int:
    """Check a training configuration's scheme options together; returns the private slots per
    encryption (``k`` inside-dataset). Errors name the conflicting options."""
    if mode == "vanilla" and public is not None:
        raise ValueError("vanilla training mixes nothing: drop --public or pick mode mixup/instahide")
    if num_private is not None and public is None:
        raise ValueError("num_private needs a public pool (cross-dataset mode): set public")
    cross = public is not None
    slots = (num_private or 2) if cross else k
    if mode != "vanilla":
        from ..scheme import check_bounds

        check_bounds(k, upper, dom if cross else None, slots)
        if cross and slots >= k:
            raise ValueError(f"cross-dataset mode with k={k} and num_private={slots} leaves no public slot")
    return slots


def _parse_optional(kind):
    def parse(text: str):
        if text.lower() in ("none", "null", ""):
            return None
        return kind(text)
    parse.__name__ = kind.__name__
    return parse


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def field_comments(cls) -> dict[str, str]:
    """The comment beside each field in the class source (with its continuation lines)."""
    import inspect
    import re

    comments: dict[str, str] = {}
    last = None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s{4}(\w+):[^#]*#\s?(.*)$", line)
        if m:
            last = m.group(1)
            comments[last] = m.group(2).strip()
        elif last and re.match(r"\s{8,}#\s?(.*)$", line):
            comments[last] += " " + re.match(r"\s+#\s?(.*)$", line).group(1).strip()
        elif re.match(r"\s{4}\w+:", line):
            last = None
    return comments


def add_config_arguments(parser: argparse.ArgumentParser, cls=TrainConfig, skip=()) -> None:
    """One ``--field-name`` option per dataclass field, typed from its annotation, documented by the
    comment beside it; unknown options are argparse errors."""
    notes = field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        ann = str(f.type)
        opt = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if ann == "bool":
            parser.add_argument(opt, type=_parse_bool, nargs="?", const=True, default=default, metavar="BOOL",
                                help=f"{notes.get(f.name, '')} (default {default}; the option alone means true)")
        elif ann.startswith("tuple"):
            parser.add_argument(opt, type=float, nargs="+", default=default, metavar="F",
                                help=f"{notes.get(f.name, '')} (default {' '.join(map(str, default))})")
        else:
            base = {"int": int, "float": float, "str": str}[ann.split(" ")[0]]
            kind = _parse_optional(base) if "None" in ann else base
            parser.add_argument(opt, type=kind, default=default,
                                help=f"{notes.get(f.name, '')} (default {default})".replace("%", "%%"))


def config_from_args(args, cls=TrainConfig, skip=()) -> TrainConfig:
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip}
    if "milestones" in kw:
        kw["milestones"] = tuple(kw["milestones"])
    return cls(**kw)
