"""The comparison's outputs: ``results.csv`` (one line per method), ``frontier.png`` (accuracy against
each attack measure, one point per method; needs matplotlib) and ``report.md`` (the table, what each
number means, why a measure is "n/a" where it is, which rows do at least as well as which)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from .._io import atomic_write_text, pyplot, save_figure

__all__ = ["NA", "MEASURES", "write_outputs", "dominance", "MEANINGS"]

NA = "n/a"
# the attack measures (lower: the attack got less), their column, and their label
MEASURES = (("gradinv_ssim", "(a) gradient inversion: SSIM to the private image"),
            ("challenge_median_ssim", "(b) handed-over data: median image SSIM, best attack"),
            ("mi_lira_auc", "(c) membership, LiRA: AUC"),
            ("mi_lira_tpr_at_1pct_fpr", "(c) membership, LiRA: TPR at 1% FPR"),
            ("mi_loss_auc", "(c) membership, loss threshold: AUC"))

MEANINGS = """\
- **accuracy**: top-1 accuracy on the clean test split, mean and standard deviation over the models of
  the method (each trained on its own half of the pool; the same halves and initial weights for every
  method).
- **epsilon**: DP-SGD's privacy budget (with the delta shown) as Opacus's accountant computes it for
  the noise multiplier, sampling rate and steps of the run: a bound on what ANY attack can learn about
  one training row from the trained model, under the accountant's assumptions (Poisson sampling,
  per-sample clipping). "n/a" for rows without DP-SGD: they have no such bound. For InstaHide with
  DP-SGD the row is an encryption, and a private image is in about k of them per epoch: per image the
  bound is that of a group of about k rows, weaker than the epsilon shown.
- **(a) gradient inversion**: a federated eavesdropper holds one client's update of one training
  row (batch 1, the gradient-leakage LeNet at initialisation: the setting most favourable to the
  attacker in docs/gradient_inversion.md) and optimises an input whose gradient matches it (labels
  unknown). The number is the SSIM of what it recovers to the closest private image that row holds
  (mean over the attacked images; 1 = the image itself). For InstaHide rows the recovered input is an
  encryption, so this measures what one gradient shows directly, not what a decoder run on many
  recovered encryptions would add (docs/gradient_inversion.md, "the chain"). For DP-SGD rows the
  update is clipped and noised as DP-SGD shares it.
- **(b) handed-over data**: the encoded training rows themselves (Mixup, InstaHide) given to another
  party: the audit's challenge of the same scheme, its attacks that use no secret (Mixup: demixing;
  InstaHide: demixing, Carlini et al., Luo et al.'s fusion), and per private image its best recovery
  over them; the number is the median over the images of that best SSIM (10th-90th percentile
  beside it). "control" is a decryption that knows nothing (every row the attacker's mean image): on
  the 8x8 digits, mostly black background, it already scores about 0.57, so read the digits'
  numbers against it.
- **(c) membership inference**: given the final model and an image of the pool, was it in the
  training half? Loss threshold: one threshold on the loss; LiRA: the target's confidence on the
  image against its distribution under reference models trained with and without it (the method's
  other models). AUC 0.5 = the attack cannot tell; TPR at 1% FPR = the share of members it finds
  while wrongly accusing 1% of the non-members (what an attacker confident about a few examples
  gets; the chance level is 0.01). Mean over the targets (each model in turn).
- **s/epoch**: wall seconds per training epoch (mean over the models), on a shared machine: compare
  rows with each other, not with other runs.
- Lower is less leakage for every attack measure; no number here shows that an attack not run here,
  or run longer, recovers as little."""


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return NA
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def dominance(rows: list[dict]) -> dict[str, list[str]]:
    """Per method, the methods that do at least as well on accuracy (mean) and on every attack measure
    both have, and strictly better on one: ``{method: [methods that dominate it]}``."""
    out = {}
    for b in rows:
        better = []
        for a in rows:
            if a is b or _num(a["accuracy_mean"]) is None:
                continue
            shared = [m for m, _ in MEASURES if _num(a.get(m)) is not None and _num(b.get(m)) is not None]
            if not shared or a["accuracy_mean"] < b["accuracy_mean"]:
                continue
            if all(a[m] <= b[m] for m in shared) and (a["accuracy_mean"] > b["accuracy_mean"]
                                                     or any(a[m] < b[m] for m in shared)):
                better.append(a["method"])
        out[b["method"]] = better
    return out


def frontier_png(path: Path, rows: list[dict]) -> Path | None:
    """Accuracy (mean, error bar: std over the models) against each attack measure, one point per
    method; measures with no value in any row are left out. None without matplotlib."""
    try:
        plt = pyplot()
    except ImportError:
        return None
    shown = [(m, label) for m, label in MEASURES if any(_num(r.get(m)) is not None for r in rows)]
    if not shown:
        return None
    colours = {"vanilla": "k", "mixup": "tab:orange", "instahide": "tab:blue"}
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4.0), squeeze=False)
    for ax, (m, label) in zip(axes[0], shown):
        for r in rows:
            x, y = _num(r.get(m)), _num(r["accuracy_mean"])
            if x is None or y is None:
                continue
            colour = "tab:green" if r["dp_sgd"] and r["mode"] == "vanilla" else \
                "tab:purple" if r["dp_sgd"] else colours.get(r["mode"], "tab:gray")
            ax.errorbar(x, y, yerr=r["accuracy_std"], fmt="o", color=colour, capsize=2)
            ax.annotate(r["method"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label + "\n(lower: the attack got less)", fontsize=8)
        ax.set_ylabel("clean test accuracy")
        ax.grid(alpha=0.3)
        missing = [r["method"] for r in rows if _num(r.get(m)) is None]
        if missing:
            ax.set_title(f"n/a for: {', '.join(missing)}", fontsize=7)
    fig.suptitle("accuracy against what each attack gets (one point per method; see report.md)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _table(rows: list[dict]) -> str:
    head = ("| method | accuracy (mean ± std) | epsilon (delta) | (a) gradient inversion SSIM | (b) handed over: "
            "median image SSIM (p10-p90) [control] | (c) loss AUC | (c) LiRA AUC | (c) LiRA TPR @ 1% FPR | s/epoch |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        eps = f"{r['epsilon']:.2f} ({r['delta']:.1e})" if _num(r["epsilon"]) is not None else NA
        ch = NA
        if _num(r["challenge_median_ssim"]) is not None:
            ctl = _fmt(r["challenge_control_median"])
            ch = (f"{r['challenge_median_ssim']:.3f} ({r['challenge_p10']:.3f}-{r['challenge_p90']:.3f}) "
                  f"[{ctl}]")
        lira = NA if _num(r["mi_lira_auc"]) is None else f"{r['mi_lira_auc']:.3f} ± {r['mi_lira_auc_std']:.3f}"
        lines.append(f"| {r['method']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {eps} | "
                     f"{_fmt(r['gradinv_ssim'])} | {ch} | {_fmt(r['mi_loss_auc'])} | {lira} | "
                     f"{_fmt(r['mi_lira_tpr_at_1pct_fpr'])} | {_fmt(r['epoch_seconds'], 2)} |")
    return "\n".join(lines)


def _reasons(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        for col, note in (("epsilon", "epsilon_note"), ("gradinv_ssim", "gradinv_note"),
                          ("challenge_median_ssim", "challenge_note"), ("mi_lira_auc", "mi_note")):
            if r.get(note) and (r.get(col) == NA or col == "epsilon" or col == "challenge_median_ssim"):
                lines.append(f"- {r['method']}, {col.split('_')[0]}: {r[note]}")
    return "\n".join(lines)


def write_report(path: Path, cfg, rows: list[dict], environment: dict, seconds: float, n_pool: int, n_test: int,
                 delta: float, done: bool) -> None:
    dom = dominance(rows)
    status = "" if done else "\n**Partial: the run is still going; the rows so far.**\n"
    methods = ", ".join(r["method"] for r in rows)
    dom_lines = "\n".join(f"- {m}: " + (", ".join(v) if v else "none of the other rows") for m, v in dom.items())
    text = f"""# InstaHide beside the alternatives: accuracy and what the attacks get
{status}
Not a proof of privacy: these are the attacks run here, at this scale. No configuration here is
called secure; DP-SGD's epsilon is the only number that bounds every attack, and only under its
assumptions.

## Setup

- data: {cfg.dataset}{'' if cfg.root is None else f' ({cfg.root})'}; the pool is {n_pool} train-split images,
  each of the {cfg.models} models of a method trains on its own half (every image is in exactly half of
  the models; the same halves and initial weights for every method); accuracy on {n_test} test images.
- every method: the same network ({cfg.model}, width {cfg.width}, norm {cfg.norm}), {cfg.epochs} epochs,
  batch {cfg.batch_size}, SGD lr {cfg.lr} (DP rows: {cfg.dp_lr if cfg.dp_lr is not None else cfg.lr}),
  momentum {cfg.momentum}, weight decay {cfg.weight_decay}, recipe {cfg.recipe}; InstaHide and Mixup
  re-encode the training half every epoch with fresh keys (research seed {cfg.seed}).
- DP-SGD (Opacus {environment.get('opacus') or 'not installed'}): per-sample clipping to
  {cfg.max_grad_norm}, Gaussian noise, Poisson sampling at the batch size, the noise multiplier that
  the {cfg.accountant} accountant gives for the target epsilon at delta {delta:.3g} (1 / the largest
  training half unless set).
- (a) gradient inversion: {cfg.gradinv_images} test images, {cfg.gradinv_steps} steps each.
- (b) challenge: {cfg.challenge_images} test images x T = {cfg.challenge_T}, attacks
  {', '.join(cfg.challenge_attacks)} where they apply, fusion trained at most {cfg.fusion_time:g} s,
  Carlini preset {cfg.carlini_preset}; the attacker's own images are the train split.
- machine: {environment['cpu']}, {environment['threads']} torch threads, models on {environment.get('device')},
  torch {environment['torch']},
  instahide {environment['instahide']}; wall time {seconds:.0f} s ({seconds / 60:.1f} min) for the rows
  below{' in this resumed run (what was done before was reused)' if environment.get('resumed') else ''},
  on a machine that may have been shared (timings are noisy).

## Results ({methods})

{_table(rows)}

Lower is less leakage for (a), (b) and (c); higher is better for accuracy. `results.csv` has every
number (and the spread over the models), `frontier.png` the same as pictures.

## Where a measure does not apply, and other notes

{_reasons(rows) or '- none'}

## What each number means

{MEANINGS}

## Which rows do at least as well as which

A row is listed under another when it is at least as accurate and no worse on every attack measure
both rows have (and strictly better on one). Rows without a measure are compared on the others only.

{dom_lines}
"""
    atomic_write_text(path, text)


def write_outputs(out: Path, cfg, rows: list[dict], environment: dict, seconds: float, n_pool: int, n_test: int,
                  delta: float, done: bool = False) -> dict:
    """Write ``results.csv``, ``frontier.png`` (when matplotlib is there) and ``report.md`` into ``out``."""
    out = Path(out)
    paths = {"csv": out / "results.csv", "md": out / "report.md"}
    write_csv(paths["csv"], rows)
    png = frontier_png(out / "frontier.png", rows)
    if png is not None:
        paths["png"] = png
    write_report(paths["md"], cfg, rows, environment, seconds, n_pool, n_test, delta, done)
    return paths
