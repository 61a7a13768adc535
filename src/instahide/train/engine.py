"""The training engine: the one loop, the one run folder and the one seeding rule of the package.

Every trainer (``instahide train`` and its torchrun mode in :mod:`.recipe`, the shared trainer of
:mod:`instahide.distributed`, a federated party in :mod:`instahide.federated`) is built from these
pieces and keeps only what differs (what an epoch's rows are, rank slicing, FedProx):

- :func:`train_epoch`: SGD steps on soft-label cross-entropy over given batches, with the divergence
  check, bf16 autocast on CUDA, an optional penalty term (FedProx) and progress.
- :class:`RunFolder`: ``checkpoint.pt`` (atomic, every epoch), ``metrics.jsonl`` / ``metrics.csv``,
  ``final.json``, ``curves.png``; resume with a message that says from which epoch, and extension of
  a finished run to more epochs (the schedule recomputed, the change recorded).
- :func:`derive_seed` / :func:`seeded`: every research-seeded stream (initial weights, order,
  augmentation) derives from the seed and a tuple naming its use. Keys come from
  :class:`~instahide.scheme.KeyGenerator`, never from these generators.
- the shared rules: :func:`model_for` ("auto" model), :func:`augment_for` ("auto" augmentation),
  :func:`make_optimizer` (the reference SGD + step schedule), :func:`load_weights` (checked).
- :class:`WeightAverage`: an exponential moving average of the weights, updated after every step.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from .. import __version__
from .._io import (atomic_open, atomic_torch_save, atomic_write_text, check_file_destination, load_torch_checkpoint,
                   pyplot, save_figure)
from ..data.augment import Augment
from .ddp import DistInfo, all_agree, broadcast_object
from .loss import soft_cross_entropy
from .models import build_model

CHECKPOINT = "checkpoint.pt"
# Fields that may differ between a run and its resumption (where and how it runs, not what it computes;
# a federation's reply timeout and simulated failures too).
RUN_ONLY = ("out", "device", "progress", "amp", "epochs", "resume", "threads", "timeout", "drop")


# -- seeds and shared rules -----------------------------------------------------------------------
def derive_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` (SHA-256 of their repr): one stream per use, none shared."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def seeded(seed: int | None, *parts, device="cpu") -> torch.Generator | None:
    """A torch generator seeded from ``(seed, *parts)``, or None (torch's global stream) without a seed.
    For order, initialisation and augmentation only: never key material."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *parts))


def model_for(name: str, in_channels: int) -> str:
    """The model to build: ``name``, or for ``"auto"`` mnistnet (1 channel) / fastnet (3 channels)."""
    return name if name != "auto" else ("mnistnet" if in_channels == 1 else "fastnet")


SIGN_INVARIANT = ("auto", "on", "off")


def sign_invariant_for(setting: str, modes) -> bool:
    """Whether the model puts ``|x|`` first: ``"on"``, ``"off"``, or for ``"auto"`` when it trains on
    InstaHide encryptions (``modes``: the mode, or the modes of the parties' folders) and not for
    vanilla or Mixup training (where signs carry the image). The configurations' ``validate()`` checks
    ``setting`` against :data:`SIGN_INVARIANT`."""
    modes = {modes} if isinstance(modes, str) else set(modes)
    return setting == "on" or (setting == "auto" and "instahide" in modes)


def build_arch(arch: dict, width: float, what: str | None = None) -> torch.nn.Module:
    """The model a checkpoint's ``arch`` record describes (``model_name``, ``num_classes``,
    ``in_channels``, ``sign_invariant``; checkpoints written before the last field have none).

    ``what`` names where ``arch`` and ``width`` come from (a checkpoint file): then a missing field,
    a value of the wrong type (a string ``num_classes``) or a model too large to build (``width``
    1e9) is a ``ValueError`` naming it, raised before anything is allocated."""
    try:
        missing = [key for key in ("model_name", "num_classes", "in_channels") if key not in arch]
        if missing:
            raise ValueError(f"no {', '.join(repr(m) for m in missing)} (the model's record)")
        flag = arch.get("sign_invariant", False)
        if not isinstance(flag, bool):
            raise TypeError(f"sign_invariant must be true or false, got {flag!r}")
        return build_model(arch["model_name"], arch["num_classes"], arch["in_channels"], width=width,
                           sign_invariant=flag)
    except (TypeError, ValueError) as exc:
        if what is None:
            raise
        raise ValueError(f"{what}: {exc}") from None


def checkpoint_config(state: dict, what) -> dict:
    """The ``config`` dict of a loaded checkpoint; a ``ValueError`` naming ``what`` (the file) when
    it has none or it is not a dict (a checkpoint of another program, or edited by hand)."""
    config = state.get("config")
    if config is None:
        raise ValueError(f"{what} has no 'config' (the run's configuration): it was not written by this trainer")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"{what}: 'config' must be a mapping of option names to values, got {type(config).__name__}")
    return config


def augment_for(setting: str, shape, mean, std) -> Augment | None:
    """The reference augmentation (crop 32 with padding 4 and flip, padding black) for ``setting``
    ``"on"``, or ``"auto"`` on 3-channel 32x32 images ``shape`` ``(C, H, W)``; None otherwise."""
    c, h, w = shape
    if setting == "on" or (setting == "auto" and (c, h, w) == (3, 32, 32)):
        return Augment(padding=4, flip=True, fill=tuple(-m / s for m, s in zip(mean, std)))
    return None


def _milestones(cfg) -> list[int]:
    return sorted({max(1, round(m * cfg.epochs)) for m in cfg.milestones})


def make_optimizer(model, cfg):
    """SGD (``lr``, ``momentum``, ``weight_decay``) and a per-epoch schedule: MultiStepLR multiplying the
    rate by ``gamma`` at the fractions ``milestones`` of ``epochs`` (the reference), or, for
    ``cfg.recipe == "short"``, a one-cycle: linear up to ``lr`` over the first quarter of the epochs,
    then linear down to 0 after the last. Returns ``(optimizer, scheduler)``."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=getattr(cfg, "recipe", "reference") == "short" and cfg.momentum > 0)
    if getattr(cfg, "recipe", "reference") == "short":
        warm, total = max(1, round(cfg.epochs / 4)), cfg.epochs
        rise = lambda e: (e + 1) / warm if e < warm else (total - e) / max(1, total - warm + 1)  # noqa: E731
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, rise)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=_milestones(cfg), gamma=cfg.gamma)


def reschedule(opt, sched, cfg) -> None:
    """After loading a checkpoint of a run with fewer epochs: the milestones of ``cfg.epochs`` and the
    learning rate they give at the current epoch (as if the run had been planned that long)."""
    if not isinstance(sched, torch.optim.lr_scheduler.MultiStepLR):
        return  # a LambdaLR recomputes its rate from the epoch and the new length at every step
    sched.milestones = Counter(_milestones(cfg))
    done = sched.last_epoch
    lr = cfg.lr * cfg.gamma ** sum(1 for m in _milestones(cfg) if m <= done)
    for group in opt.param_groups:
        group["lr"] = lr
    sched._last_lr = [lr for _ in opt.param_groups]


def load_weights(model: torch.nn.Module, state_dict: dict, what: str = "checkpoint") -> None:
    """``model.load_state_dict`` with errors that name what is wrong: missing or unexpected entries,
    a shape that differs, NaN or infinite values."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or extra:
        raise ValueError(f"{what} does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}")
    fixed = {}
    for name, ref in own.items():
        t = torch.as_tensor(state_dict[name])
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{what}: weight {name!r} has shape {tuple(t.shape)}, the model's is {tuple(ref.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{what}: weight {name!r} holds NaN or infinite values")
        fixed[name] = t.to(ref.dtype)
    model.load_state_dict(fixed)


class WeightAverage:
    """An exponential moving average of ``model``'s weights, updated after every SGD step.

    After step ``t`` the average is ``sum_i decay^(t-i) w_i / sum_i decay^(t-i)`` over the weights
    ``w_1..w_t`` after steps 1..t (debiased: the initial weights do not enter, and after one step
    the average is ``w_1``). BatchNorm's running mean and variance are averaged the same way (they
    describe the training inputs, the encryptions, never test data); integer buffers (BN's batch
    counter) are copied. ``self.model`` is the averaged copy, to evaluate and save.

    Args:
        model: the network being trained (not a DDP wrapper; it must not be moved after this).
        decay: weight of the previous average per step, in (0, 1) (0.999: about the last 1,000 steps).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"the weight average's decay must be in (0, 1), got {decay}")
        self.decay, self.steps = float(decay), 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the source model's current weights into the average (one SGD step)."""
        self.steps += 1
        rate = (1 - self.decay) / (1 - self.decay ** self.steps)  # 1 at the first step: the debiasing
        for avg, cur in self._pairs:
            if avg.is_floating_point():
                avg.lerp_(cur, rate)
            else:
                avg.copy_(cur)

    def state_dict(self) -> dict:
        """``{"decay", "steps", "model"}``: what a checkpoint needs to continue the average exactly."""
        return {"decay": self.decay, "steps": self.steps,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict, what: str = "checkpoint") -> None:
        """Continue the average of a :meth:`state_dict` (its decay must be this one)."""
        if float(state["decay"]) != self.decay:
            raise ValueError(f"{what}: weight average with decay {state['decay']}, this run's is {self.decay}")
        load_weights(self.model, state["model"], f"{what} (weight average)")
        self.steps = int(state["steps"])


# -- the loop -------------------------------------------------------------------------------------
def index_batches(xs: torch.Tensor, ys: torch.Tensor, order: torch.Tensor, batch_size: int):
    """``(xs[b], ys[b], 1 / len(b))`` for consecutive batches ``b`` of ``order``: the weight makes the
    summed loss of a batch its mean."""
    for s in range(0, len(order), batch_size):
        b = order[s:s + batch_size]
        yield xs[b], ys[b], 1.0 / len(b)


def train_epoch(model, opt, batches, *, amp: bool = False, penalty=None, progress=None, average=None) -> dict:
    """SGD steps on soft-label cross-entropy, one per batch.

    Args:
        model: the network (or its DDP wrapper), put in train mode here.
        opt: the optimiser.
        batches: iterable of ``(x (B, C, H, W), soft labels (B, classes), weight)``; a step minimises
            ``weight * sum of the B per-row losses`` (``1/B``: the batch mean; under DDP
            ``world_size / global batch``, so that DDP's gradient average is the global mean).
        amp: bfloat16 autocast (CUDA).
        penalty: optional ``f() -> scalar tensor`` added to every step's loss (FedProx).
        progress: optional :class:`Progress`, updated after every step.
        average: optional :class:`WeightAverage` of the model, updated after every step.

    Returns:
        ``{"loss_sum", "correct", "seen"}``: summed per-row loss, rows whose prediction agrees with
        their dominant label, rows. Raises ``FloatingPointError`` if the loss stops being finite.
    """
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for xb, yb, weight in batches:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(xb)
        per_row = soft_cross_entropy(logits.float(), yb, reduction="none")
        loss = per_row.sum() * weight
        if penalty is not None:
            loss = loss + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if average is not None:
            average.update()
        # one device-to-host transfer per step: the batch's summed loss, the step's loss, agreements
        total, value, agree = torch.stack([per_row.detach().sum(), loss.detach(),
                                           (logits.argmax(1) == yb.argmax(1)).sum().float()]).tolist()
        if not (math.isfinite(total) and math.isfinite(value)):
            raise FloatingPointError(f"training diverged: loss {total}; lower the learning rate")
        loss_sum, correct, seen = loss_sum + total, correct + int(agree), seen + len(xb)
        if progress is not None and progress.enabled:
            progress.update(1, f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen}


class Progress:
    """A progress line on stderr: ``\\r`` updates on a terminal, one line per ``every`` steps otherwise;
    with rate and ETA. ``enabled=False`` prints nothing."""

    def __init__(self, total: int, label: str, enabled: bool = True, unit: str = "", every: int | None = None):
        self.total, self.label, self.unit, self.done = total, label, unit, 0
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.every = every or (1 if self.tty else max(1, total))
        self.start = time.perf_counter()

    def update(self, n: int = 1, info: str = "") -> None:
        self.done += n
        if not self.enabled or (self.done % self.every and self.done < self.total):
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        fill = int(24 * self.done / max(self.total, 1))
        line = (f"{self.label} [{'#' * fill}{'.' * (24 - fill)}] {self.done}/{self.total} "
                f"({rate:.1f}{self.unit}/s, ETA {eta:.0f} s) {info}")
        print(("\r" if self.tty else "") + line, end="" if self.tty and self.done < self.total else "\n",
              file=sys.stderr, flush=True)

    def close(self, info: str) -> None:
        if self.enabled:
            print(("\r" if self.tty else "") + f"{self.label}: {info}" + " " * 10, file=sys.stderr, flush=True)


# -- the run folder -------------------------------------------------------------------------------
def versions() -> dict:
    """The versions a result was produced with."""
    return {"torch": torch.__version__, "python": platform.python_version(), "instahide": __version__}


class RunFolder:
    """One training run's folder ``out``: checkpoint, metrics, final summary and curves.

    ``fmt`` names the checkpoint format (a checkpoint of another trainer is refused); ``length`` is
    the configuration field that counts the run's steps (``epochs``, or ``rounds`` for a federation)
    and ``metrics`` the stem of the per-step files (``metrics.jsonl`` / ``.csv``). Only the main
    process (``main=True``) writes; every process may read.
    """

    def __init__(self, out, fmt: str, main: bool = True, *, length: str = "epochs", metrics: str = "metrics"):
        self.out, self.fmt, self.main, self.length, self.metrics = Path(out), fmt, main, length, metrics
        self.unit = length.removesuffix("s")  # the checkpoint's count of steps done: "epoch" or "round"
        self.checkpoint = self.out / CHECKPOINT

    def start(self, config: dict, resume: bool) -> dict | None:
        """The checkpoint to continue (or None for a new run), after the checks.

        Without ``resume`` an existing checkpoint is refused (never overwritten). With it, the saved
        configuration must equal ``config`` except in :data:`RUN_ONLY` fields; the length (epochs)
        may grow (the run is extended) but not shrink below what was done. The returned state has
        ``resumed_from`` (steps done) and ``extended`` (the old length, or None).
        """
        check_file_destination(self.checkpoint)  # an unusable out fails now, not after the first epoch
        if not resume:
            if self.checkpoint.exists():
                raise FileExistsError(f"{self.checkpoint} exists: pass resume=True to continue it, "
                                      "or use another out")
            return None
        if not self.checkpoint.exists():
            raise FileNotFoundError(f"nothing to resume: {self.checkpoint} does not exist")
        state = load_torch_checkpoint(self.checkpoint, self.fmt)
        saved, length = checkpoint_config(state, self.checkpoint), config[self.length]
        if isinstance(state.get(self.unit), bool) or not isinstance(state.get(self.unit), int) \
                or not isinstance(saved.get(self.length), int):
            raise ValueError(f"cannot resume {self.checkpoint}: it records no whole number of {self.length} "
                             f"done ({self.unit!r}) and planned ({self.length!r})")
        skip = (*RUN_ONLY, self.length)
        diff = {k: (v, config.get(k)) for k, v in saved.items() if k not in skip and config.get(k) != v}
        if diff:
            raise ValueError(f"cannot resume {self.checkpoint}: configuration differs in {diff} (saved, given)")
        done = state[self.unit]
        if length < done:
            raise ValueError(f"cannot resume {self.checkpoint} with {self.length}={length}: it has already run "
                             f"{done}")
        state["resumed_from"] = done
        state["extended"] = saved[self.length] if length != saved[self.length] else None
        return state

    def start_all(self, config: dict, resume: bool, info: DistInfo) -> dict | None:
        """:meth:`start` on the main process, its error raised on every rank and its state broadcast
        (a world of one: just :meth:`start`)."""
        state, err = None, None
        if info.is_main:
            try:
                state = self.start(config, resume)
            except (ValueError, OSError) as exc:
                err = exc
        all_agree(info, err)
        return broadcast_object(info, state)

    def record(self, info: DistInfo, history: list, metrics: dict, t0: float, progress: Progress, model, opt, sched,
               config: dict, **extra) -> dict:
        """End an epoch on every rank: the main process times it, appends ``metrics`` to ``history``,
        closes the progress line and saves (:meth:`save`); the others receive the same metrics, which
        are returned."""
        if info.is_main:
            metrics["epoch_seconds"] = time.perf_counter() - t0
            test = f" test acc {metrics['test_acc']:.4f}" if metrics.get("test_acc") is not None else ""
            ranks = f", {info.world_size} ranks" if info.world_size > 1 else ""
            progress.close(f"loss {metrics['train_loss']:.3f} train acc {metrics['train_acc']:.3f}{test} "
                           f"({metrics['epoch_seconds']:.1f} s{ranks})")
            history.append(metrics)
            self.save(metrics["epoch"], model, opt, sched, config, history, **extra)
        if info.world_size > 1:
            metrics = broadcast_object(info, metrics)
            if not info.is_main:
                history.append(metrics)
        return metrics

    def save(self, epoch: int, model, opt, sched, config: dict, history: list, **extra) -> None:
        """Everything needed to resume, written atomically (a killed run never leaves a torn file);
        then the metrics files. No key material: keys are regenerated (research seed) or fresh."""
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": None if opt is None else opt.state_dict(),
                 "scheduler": None if sched is None else sched.state_dict(),
                 self.unit: epoch, "config": config, "history": history, "format": self.fmt, **extra}
        atomic_torch_save(self.checkpoint, state)
        with atomic_open(self.out / f"{self.metrics}.jsonl", "w") as fh:
            for m in history:
                fh.write(json.dumps(m) + "\n")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for m in history for k in m)))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.out / f"{self.metrics}.csv", buf.getvalue())

    def finish(self, final: dict) -> dict:
        """Write ``final.json`` and ``curves.png``; returns ``final``."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "final.json", json.dumps(final, indent=2) + "\n")
            if final.get("history"):
                plot_curves(self.out / "curves.png", final["history"])
        return final


def summary(history: list[dict], state: dict | None, t_run: float, unit: str = "epoch") -> dict:
    """The fields every ``final.json`` shares: final and best test accuracy, how many epochs (or
    rounds) were run in all and in this run, from where it resumed, whether it was extended."""
    tested = [m["test_acc"] for m in history if m.get("test_acc") is not None]
    start = 0 if state is None else state["resumed_from"]
    return {"final_test_acc": history[-1].get("test_acc") if history else None,
            "final_test_loss": history[-1].get("test_loss") if history else None,
            "best_test_acc": max(tested) if tested else None,
            f"{unit}s_run": len(history), f"resumed_from_{unit}": start, f"{unit}s_this_run": len(history) - start,
            f"extended_from_{unit}s": None if state is None else state["extended"],
            "wall_seconds_this_run": time.perf_counter() - t_run, "history": history, "versions": versions()}


def plot_curves(path: Path, history: list[dict]) -> None:
    """Loss and accuracy per epoch (train on what the model saw, test on clean images); needs matplotlib."""
    try:
        plt = pyplot()
    except ImportError:
        return
    unit = "epoch" if "epoch" in history[0] else "round"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, what in zip(axes, ("loss", "acc")):
        for kind, label in (("train", "train (what the model saw)"), ("test", "test (clean)")):
            pts = [(m[unit], m[f"{kind}_{what}"]) for m in history if m.get(f"{kind}_{what}") is not None]
            if pts:
                ax.plot(*zip(*pts), label=label)
        ax.set_xlabel(unit)
        ax.set_ylabel("loss" if what == "loss" else "accuracy")
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
