"""What a gradient eavesdropper on one federated client gets, with and without InstaHide
(docs/attacks.md, "Gradient inversion"; results in docs/gradient_inversion.md).

Two measurements, both on a model at its random initialisation (the first round of federated
training, the easiest case for the attacker and the one the literature reports):

1. table: for vanilla training (the client's inputs are its private images), InstaHide inside-dataset
   k=4 and cross-dataset k=6 (2 private + 4 public), batch sizes given by ``--batch-size``: the
   client computes the gradient of one step (soft-label cross-entropy); the eavesdropper inverts it
   with :func:`instahide.attacks.gradinv.invert_gradients` (labels: ``--labels given`` uses the soft
   labels, ``recover`` reads/optimises them) and we score
   (a) SSIM(recovered, the true input: private image or encryption), best permutation;
   (b) SSIM(recovered, the private images the input hides): for each recovered row, the best SSIM
       over the private images in its private slots, for the recovered input and for its absolute
       value (``|e|`` is the mixture, the mask removed).
2. chain (``--chain``): one client, batch size 1, ``--chain-n`` private images, ``--chain-epochs``
   epochs of InstaHide training (fresh keys each epoch, plain SGD lr ``--chain-lr``, so the model
   moves); every step's gradient is inverted, and the recovered encryptions are decoded with
   :func:`instahide.attacks.oracle_decode` given the TRUE keys (the upper bound of any decoder of
   the Carlini et al. family), and with ``|recovered|`` as a naive baseline; for comparison, the
   oracle on the true encryptions (what a perfect inversion would give).

Models (``--model``): ``lenet`` (defined here: the sigmoid LeNet of the gradient-leakage papers,
conv5x5/12 stride 2 - conv5x5/12 stride 2 - conv5x5/12 - linear), ``lenet-relu`` (same with ReLU),
or any :func:`instahide.train.models.build_model` name (``mnistnet``, ``fastnet``) at ``--width``.

Pixels (``--scale``): ``pm1`` = ``x/255*2-1`` (centred; SSIM data range 2) or ``unit`` = ``x/255``
(non-negative: the mask hides nothing, SSIM data range 1). Public pool: ``--pool`` built-in patches.

Usage (results append to experiments/results/gradinv.jsonl; finished rows are skipped on rerun;
the chain checkpoints its recovered rows in experiments/runs/ and resumes):
  OMP_NUM_THREADS=1 .venv/bin/python experiments/gradient_inversion.py --dataset cifar10 --batch-size 1 4
  OMP_NUM_THREADS=1 .venv/bin/python experiments/gradient_inversion.py --dataset cifar10 --chain --scale pm1
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import instahide  # noqa: E402
from instahide._io import atomic_savez, load_plain_npz  # noqa: E402
from instahide.attacks import oracle_decode  # noqa: E402
from instahide.attacks.gradinv import invert_gradients, observed_gradient  # noqa: E402
from instahide.metrics import match_batches, ssim  # noqa: E402

from _common import append_jsonl  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SETTINGS = {  # name -> encrypt() keywords (None = vanilla: the inputs are the private images)
    "vanilla": None,
    "inside-k4": dict(k=4),
    "cross-k6": dict(k=6, num_private=2),
}


# -- models --------------------------------------------------------------------------------------
def lenet(channels: int, size: int, classes: int, act=nn.Sigmoid) -> nn.Module:
    from instahide.audit.gradient import leakage_lenet

    return leakage_lenet(channels, size, classes, act)


def make_model(name: str, channels: int, size: int, classes: int, width: float, seed: int,
               sign_invariant: bool = False) -> nn.Module:
    """The client's model; with ``sign_invariant`` its first operation is |x| (instahide.sign_invariant):
    the gradient then depends on the input only through |input|, and no inversion can recover signs."""
    torch.manual_seed(seed)
    if name == "lenet":
        model = lenet(channels, size, classes)
    elif name == "lenet-relu":
        model = lenet(channels, size, classes, nn.ReLU)
    else:
        from instahide.train.models import build_model

        model = build_model(name, classes, channels, width)
    return instahide.sign_invariant(model) if sign_invariant else model


# -- data ----------------------------------------------------------------------------------------
def load_private(dataset: str, n: int, seed: int):
    from instahide.data import load_dataset

    if dataset == "cifar10":
        ds = load_dataset("cifar10", root=SHARED / "cifar-10-batches-py", split="test")
    else:
        ds = load_dataset("digits", split="test")
    sel = np.random.default_rng(seed).choice(len(ds.images), n, replace=False)
    return ds.images[sel], ds.labels[sel], ds.num_classes


def scaled(u8: np.ndarray, scale: str) -> torch.Tensor:
    x = torch.from_numpy(u8).float() / 255
    return x * 2 - 1 if scale == "pm1" else x


def public_pool(n: int, shape, scale: str) -> torch.Tensor:
    from instahide.data import load_public_pool

    pool = load_public_pool("builtin", n, tuple(shape[1:]), shape[0]).images
    return scaled(pool, scale)


def encrypt_set(x, labels, classes, setting, scale, public, gen):
    """Private set ``x (n, C, H, W)`` -> (inputs, soft labels, indices (n, k), coefficients (n, k))."""
    y = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), classes).float()
    kw = SETTINGS[setting]
    if kw is None:
        return x, y, np.arange(len(x))[:, None], np.ones((len(x), 1))
    enc = instahide.encrypt(x, torch.from_numpy(labels), num_classes=classes, generator=gen, return_key=True,
                            public=public if kw.get("num_private") else None, allow_uncentred=scale == "unit", **kw)
    return enc.images, enc.soft_labels, enc.key.indices.numpy(), enc.key.coefficients.numpy()


def ssim_nchw(a, b, data_range, win):
    return ssim(a.double(), b.double(), data_range=data_range, win_size=win, reduction="none").numpy()


def hidden_ssim(rec, private, idx_rows, num_private, data_range, win):
    """Per row: max SSIM of ``rec[i]`` against the private images in its private slots."""
    out = []
    for i in range(len(rec)):
        cand = private[torch.as_tensor(idx_rows[i, :num_private])]
        out.append(float(ssim_nchw(rec[i:i + 1].expand_as(cand), cand, data_range, win).max()))
    return np.array(out)


# -- 1. the table ----------------------------------------------------------------------------------
def run_table(args, out: Path, done: set) -> None:
    imgs, labels, classes = load_private(args.dataset, args.client_n, args.seed)
    x = scaled(imgs, args.scale)
    c, h = x.shape[1], x.shape[2]
    win = 7 if h >= 16 else 3  # 8x8 digits: a 7x7 window leaves only 2x2 positions
    rng_range = 2.0 if args.scale == "pm1" else 1.0
    public = public_pool(args.pool, x.shape[1:], args.scale) if "cross-k6" in args.settings else None
    for setting in args.settings:
        for b in args.batch_size:
            for trial in range(args.trials):
                key = dict(kind="table", dataset=args.dataset, model=args.model, width=args.width, scale=args.scale,
                           setting=setting, batch_size=b, trial=trial, steps=args.steps, restarts=args.restarts,
                           labels=args.labels, tv_weight=args.tv_weight, prior=args.prior,
                           distance=args.distance, lr=args.lr, sign_invariant=args.sign_invariant)
                tag = json.dumps(key, sort_keys=True)
                if tag in done:
                    continue
                gen = instahide.KeyGenerator.from_seed(f"gradinv-{args.seed}-{setting}-{b}-{trial}")
                inputs, soft, idx, lam = encrypt_set(x, labels, classes, setting, args.scale, public, gen)
                rows = np.random.default_rng([args.seed, trial, b]).choice(len(inputs), b, replace=False)
                batch, ybatch = inputs[rows], soft[rows]
                model = make_model(args.model, c, h, classes, args.width, args.seed + trial, args.sign_invariant)
                grads = observed_gradient(model, batch, ybatch)
                t0 = time.time()
                # recover: batch 1 reads the label off the last layer (one-hot, or tied to the input
                # as s * p(x') - dL/db when it is soft); batch > 1 optimises it jointly
                lab = ybatch if args.labels == "given" else None
                res = invert_gradients(model, grads, batch_size=b, input_shape=batch.shape[1:], labels=lab, steps=args.steps,
                                       lr=args.lr, tv_weight=args.tv_weight, prior=args.prior,
                                       restarts=args.restarts, seed=trial, distance=args.distance)
                wall = time.time() - t0
                m = match_batches(res.images, batch, data_range=rng_range, win_size=win)
                m_abs = match_batches(res.images.abs(), batch.abs(), data_range=rng_range, win_size=win)
                rec = res.images  # recovered row i matches true row order[i]
                num_private = 1 if SETTINGS[setting] is None else SETTINGS[setting].get("num_private", SETTINGS[setting]["k"])
                idx_rows = idx[rows][m.order]
                hid = hidden_ssim(rec, x, idx_rows, num_private, rng_range, win)
                hid_abs = hidden_ssim(rec.abs(), x, idx_rows, num_private, rng_range, win)
                # reference: the true input itself against the private images it hides
                ref = hidden_ssim(batch[m.order], x, idx_rows, num_private, rng_range, win)
                ref_abs = hidden_ssim(batch[m.order].abs(), x, idx_rows, num_private, rng_range, win)
                label_ok = float((res.labels.argmax(1) == ybatch[m.order].argmax(1)).float().mean())
                row = dict(key, ssim_input=m.mean_ssim, mse_input=float(m.mse.mean()), ssim_abs_input=m_abs.mean_ssim,
                           ssim_private=float(hid.mean()), ssim_private_abs=float(hid_abs.mean()),
                           ssim_private_of_true_input=float(ref.mean()),
                           ssim_private_of_true_abs=float(ref_abs.mean()),
                           label_top1=label_ok, label_source=res.label_source, grad_distance=res.gradient_distance,
                           wall_s=round(wall, 1), ssim_win=win, data_range=rng_range, client_n=args.client_n,
                           pool=args.pool if setting == "cross-k6" else 0, seed=args.seed)
                append_jsonl(out, row)
                print(f"{setting:10s} B={b} trial {trial}: SSIM input {m.mean_ssim:.3f} (|.| {m_abs.mean_ssim:.3f})  "
                      f"private {hid.mean():.3f} "
                      f"|rec| {hid_abs.mean():.3f}  ({wall:.0f}s)", flush=True)
                if trial == 0 and args.img_dir:
                    save_picture(args, setting, b, batch[m.order], rec, x, idx_rows, num_private)


def pyplot_and_show(args):
    """matplotlib's pyplot (None without it), and ``(C, H, W)`` in ``args.scale`` units -> [0, 1] for imshow."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, None
    lo = -1.0 if args.scale == "pm1" else 0.0
    return plt, lambda t: ((t.permute(1, 2, 0).numpy() - lo) / (1 - lo)).clip(0, 1).squeeze()


def save_figure(plt, fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_picture(args, setting, b, true_in, rec, private, idx_rows, num_private):
    """Rows: true input, recovered, |recovered|, then the private images it hides."""
    plt, show = pyplot_and_show(args)
    if plt is None:
        return
    n_rows = 3 + (num_private if SETTINGS[setting] is not None else 0)
    fig, ax = plt.subplots(n_rows, b, figsize=(1.3 * b + 0.8, 1.3 * n_rows), squeeze=False)
    names = ["true input", "recovered", "|recovered|"] + [f"private {j + 1}" for j in range(n_rows - 3)]
    for i in range(b):
        pics = [true_in[i], rec[i], rec[i].abs()] + [private[int(j)] for j in idx_rows[i, :n_rows - 3]]
        for r, p in enumerate(pics):
            ax[r, i].imshow(show(p), cmap="gray", vmin=0, vmax=1)
            ax[r, i].set_xticks([]), ax[r, i].set_yticks([])
            if i == 0:
                ax[r, i].set_ylabel(names[r], fontsize=7)
    fig.suptitle(f"{args.dataset} {setting} B={b} ({args.model}, {args.scale})", fontsize=8)
    save_figure(plt, fig, Path(args.img_dir) / (f"gradinv_{args.dataset}_{setting}_b{b}_{args.scale}_{args.model}_"
                                               f"{args.distance}{args.steps}{'_abs' if args.sign_invariant else ''}.png"))


# -- 2. the chain: inversion over T epochs of one client, then the oracle decoder --------------------
def run_chain(args, out: Path, done: set) -> None:
    imgs, labels, classes = load_private(args.dataset, args.chain_n, args.seed + 100)
    x = scaled(imgs, args.scale)
    c, h = x.shape[1], x.shape[2]
    win = 7 if h >= 16 else 3  # 8x8 digits: a 7x7 window leaves only 2x2 positions
    data_range = 2.0 if args.scale == "pm1" else 1.0
    for setting in [s for s in args.settings if s != "vanilla"]:
        key = dict(kind="chain", dataset=args.dataset, model=args.model, width=args.width, scale=args.scale,
                   setting=setting, n=args.chain_n, epochs=args.chain_epochs, steps=args.steps,
                   restarts=args.restarts, chain_lr=args.chain_lr, tv_weight=args.tv_weight, prior=args.prior,
                   distance=args.distance, lr=args.lr, sign_invariant=args.sign_invariant)
        tag = json.dumps(key, sort_keys=True)
        if tag in done:
            continue
        kw = SETTINGS[setting]
        num_private = kw.get("num_private", kw["k"])
        public = public_pool(args.pool, x.shape[1:], args.scale) if num_private < kw["k"] else None
        ckpt = ROOT / "experiments" / "runs" / f"gradinv_chain_{hashlib.sha256(tag.encode()).hexdigest()[:12]}.npz"
        state = load_plain_npz(ckpt, "chain checkpoint") if ckpt.exists() else None
        model = make_model(args.model, c, h, classes, args.width, args.seed, args.sign_invariant)
        opt = torch.optim.SGD(model.parameters(), lr=args.chain_lr)
        rec_rows, true_rows, idx_all, lam_all = [], [], [], []
        wall = 0.0
        start = 0
        if state is not None:
            rec_rows, true_rows = list(state["recovered"]), list(state["true"])
            idx_all, lam_all = list(state["indices"]), list(state["coefficients"])
            model.load_state_dict({k[6:]: torch.from_numpy(v) for k, v in state.items() if k.startswith("model.")})
            start, wall = len(rec_rows), float(state["wall"])
        gen = instahide.KeyGenerator.from_seed(f"gradinv-chain-{args.seed}-{setting}")
        step = 0
        for epoch in range(args.chain_epochs):
            inputs, soft, idx, lam = encrypt_set(x, labels, classes, setting, args.scale, public, gen)
            for i in range(len(inputs)):  # batch size 1, in order
                if step < start:
                    step += 1
                    continue
                xb, yb = inputs[i:i + 1], soft[i:i + 1]
                grads = observed_gradient(model, xb, yb)
                t0 = time.time()
                res = invert_gradients(model, grads, batch_size=1, input_shape=xb.shape[1:], labels=yb,
                                       steps=args.steps, lr=args.lr, tv_weight=args.tv_weight, prior=args.prior,
                                       restarts=args.restarts, seed=step, distance=args.distance)
                wall += time.time() - t0
                rec_rows.append(res.images[0].numpy()), true_rows.append(xb[0].numpy())
                idx_all.append(idx[i]), lam_all.append(lam[i])
                with torch.no_grad():  # the client's own SGD step with that gradient
                    for p, g in zip(model.parameters(), grads):
                        p -= args.chain_lr * g
                step += 1
                if step % 5 == 0 or step == args.chain_n * args.chain_epochs:
                    atomic_savez(ckpt, {"recovered": np.stack(rec_rows), "true": np.stack(true_rows),
                                        "indices": np.stack(idx_all), "coefficients": np.stack(lam_all),
                                        "wall": np.array(wall),
                                        **{"model." + k: v.numpy() for k, v in model.state_dict().items()}})
                    print(f"chain {setting}: {step}/{args.chain_n * args.chain_epochs} inversions, {wall:.0f}s", flush=True)
        del opt
        rec = torch.from_numpy(np.stack(rec_rows)).float()
        true = torch.from_numpy(np.stack(true_rows)).float()
        idx_a, lam_a = np.stack(idx_all), np.stack(lam_all)
        in_ssim = ssim_nchw(rec, true, data_range, win)
        in_ssim_abs = ssim_nchw(rec.abs(), true.abs(), data_range, win)
        truth_cl = x.numpy()
        scores = {}
        for name, enc in (("recovered", rec), ("true_encryptions", true)):
            o = oracle_decode(enc.numpy(), idx_a, lam_a, num_private, args.chain_n, pixel_range=args.scale,
                              evaluate_with=truth_cl)
            per = ssim(o.recovered.astype(np.float64), truth_cl.astype(np.float64), data_range=data_range,
                       win_size=win, reduction="none").numpy()
            scores[name] = dict(mean_ssim=float(per.mean()), method=o.method, sign=o.sign,
                                sign_chosen_by=o.sign_chosen_by)
            if name == "recovered" and args.img_dir:
                save_chain_picture(args, setting, x, torch.from_numpy(o.recovered))
        naive = hidden_ssim(rec.abs(), x, idx_a, num_private, data_range, win)
        row = dict(key, ssim_inversion_mean=float(in_ssim.mean()), ssim_inversion_min=float(in_ssim.min()),
                   ssim_abs_inversion_mean=float(in_ssim_abs.mean()),
                   oracle_on_recovered=scores["recovered"], oracle_on_true=scores["true_encryptions"],
                   naive_abs_max_ssim=float(naive.mean()), rows=len(rec), wall_s=round(wall, 1),
                   ssim_win=win, data_range=data_range, pool=args.pool if public is not None else 0, seed=args.seed)
        append_jsonl(out, row)
        print(json.dumps(row), flush=True)


def save_chain_picture(args, setting, private, decoded):
    plt, show = pyplot_and_show(args)
    if plt is None:
        return
    n = min(10, len(private))
    fig, ax = plt.subplots(2, n, figsize=(1.2 * n, 2.7), squeeze=False)
    for i in range(n):
        for r, t in enumerate((private[i], decoded[i])):
            ax[r, i].imshow(show(t), cmap="gray", vmin=0, vmax=1)
            ax[r, i].set_xticks([]), ax[r, i].set_yticks([])
    ax[0, 0].set_ylabel("private", fontsize=7)
    ax[1, 0].set_ylabel("decoded", fontsize=7)
    fig.suptitle(f"{args.dataset} {setting}, {args.scale}: inversion -> oracle decoder (true keys), "
                 f"{args.chain_epochs} epochs", fontsize=8)
    save_figure(plt, fig, Path(args.img_dir) / (f"gradinv_chain_{args.dataset}_{setting}_{args.scale}"
                                               f"{'_abs' if args.sign_invariant else ''}.png"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("digits", "cifar10"), default="digits")
    p.add_argument("--model", default="lenet", help="lenet, lenet-relu, mnistnet, fastnet")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier for mnistnet/fastnet")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 4])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--scale", choices=("pm1", "unit"), default="pm1")
    p.add_argument("--steps", type=int, default=1000, help="inversion steps per restart")
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.03, help="inversion Adam learning rate (signed gradients)")
    p.add_argument("--tv-weight", type=float, default=0.0)
    p.add_argument("--prior", choices=("tv", "tv-abs"), default="tv")
    p.add_argument("--distance", choices=("cosine", "cosine-global", "l2"), default="l2",
                   help="gradient distance (l2 converged on CPU budgets where cosine did not, see docs)")
    p.add_argument("--labels", choices=("given", "recover"), default="given")
    p.add_argument("--trials", type=int, default=2, help="batches per (setting, batch size)")
    p.add_argument("--client-n", type=int, default=16, help="private images of the client (table)")
    p.add_argument("--pool", type=int, default=500, help="public pool size (built-in patches), cross-k6")
    p.add_argument("--chain", action="store_true", help="run the chain measurement instead of the table")
    p.add_argument("--chain-n", type=int, default=10)
    p.add_argument("--chain-epochs", type=int, default=5)
    p.add_argument("--chain-lr", type=float, default=0.01, help="the client's SGD learning rate")
    p.add_argument("--sign-invariant", action="store_true",
                   help="the client's model starts with |x| (what training on InstaHide now does by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "gradinv.jsonl"))
    p.add_argument("--img-dir", default=str(ROOT / "docs" / "img"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            fields = (("kind", "dataset", "model", "width", "scale", "setting", "batch_size", "trial", "steps",
                       "restarts", "labels", "tv_weight", "prior", "distance", "lr") if r["kind"] == "table" else
                      ("kind", "dataset", "model", "width", "scale", "setting", "n", "epochs", "steps", "restarts",
                       "chain_lr", "tv_weight", "prior", "distance", "lr"))
            done.add(json.dumps({**{k: r[k] for k in fields}, "sign_invariant": r.get("sign_invariant", False)},
                                sort_keys=True))
    t0 = time.time()
    (run_chain if args.chain else run_table)(args, out, done)
    print(f"total wall {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
