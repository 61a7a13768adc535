"""The report of ``instahide audit`` (:func:`write_audit_report`): ``report.md`` and/or a self-contained
``report.html``, ``summary.json`` and ``best_per_image.csv``. It leads with the best recovery of every
private image over all the attacks that used no secret (an attacker runs them all; :func:`best_over_attacks`),
as a spread over the images (median, 10th and 90th percentiles, shares above 0.5 and the threshold),
beside the per-row scores of the challenge (Max_SSIM is a mean over rows); then the measure that shows
the most leakage above chance (rank-1 identification, labels read off the pictures, or the share of rows
above the SSIM threshold); per attack the few facts a reader needs (all the others in the JSON); and the
pictures ``ssim_distribution.png``, ``recovered_best.png`` and ``recovered_<attack>.png`` (they need
matplotlib, ``instahide[plot]``; without it the report says so). The oracle decoder is reported as what it
is: least squares given the TRUE keys, the bound of that family of reconstructions, not of every attack.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
from pathlib import Path

import numpy as np

from .._io import atomic_open, atomic_write_text, pyplot, save_figure
from .figures import encryption_grid, truth_unit_range

__all__ = ["write_audit_report", "ssim_distribution_png", "recovered_png", "best_rows_per_image", "best_over_attacks",
           "spread", "ORACLE_NOTE"]

DISCLAIMER = ("InstaHide is not encryption in the cryptographic sense. These are the results of the attacks "
              "run here, at this scale; an attack that recovers little here does not show that a stronger "
              "or longer attack recovers little.")


ORACLE_NOTE = ("The oracle decoder is given the TRUE keys (each row's private images and coefficients) and "
               "solves by least squares: it is the bound of that family of reconstructions (the last step of "
               "Carlini et al.'s attack with a perfect clustering and assignment), not an attack, and not an "
               "upper bound on every attack: an attack that reconstructs otherwise (a learned prior, Luo et al.'s "
               "fusion network) or is scored on another measure can exceed it.")


def spread(values, thresholds=(0.5, 0.8)) -> dict:
    """The distribution of per-image (or per-row) SSIMs ``values``: count, mean, median, 10th and 90th
    percentiles, min, max over the finite values, and per threshold the share of ALL values above it
    (an image in no row, NaN, counts as not above)."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    stat = (lambda f: float(f(ok)) if len(ok) else None)
    return {"count": int(len(v)), "finite": int(len(ok)), "mean": stat(np.mean), "median": stat(np.median),
            "p10": stat(lambda x: np.percentile(x, 10)), "p90": stat(lambda x: np.percentile(x, 90)),
            "min": stat(np.min), "max": stat(np.max),
            "above": {f"{t:g}": float(np.sum(np.nan_to_num(v, nan=-np.inf) > t) / max(len(v), 1)) for t in thresholds}}


def best_over_attacks(outcomes, thresholds=(0.5, 0.8)) -> dict | None:
    """Per private image, the best recovery over the scored attacks that used no secret (an attacker
    runs them all): its best SSIM over every row of every such attack (the elementwise maximum of the
    attacks' ``score.per_private_best_ssim``), which attack and which row gave it; per row, the best of
    the attacks' row Max_SSIM. The best is picked with the truth: it says what the attacks' outputs
    hold, not which of them an attacker would know to trust. None when no such attack was scored.

    Returns a JSON-ready dict: ``attacks`` (the names considered), ``per_image`` (``ssim``, ``attack``,
    ``row`` lists, NaN as None), ``images`` (:func:`spread` of the best SSIMs), ``wins`` (images per
    attack), ``per_row`` (``max_ssim``: the mean over rows of each row's best, and its spread), and
    ``per_attack`` (each attack's own per-image and per-row spreads)."""
    scored = [o for o in outcomes if o.score is not None and not o.uses_truth]
    if not scored:
        return None
    per = np.stack([np.asarray(o.score.per_private_best_ssim, np.float64) for o in scored])  # (a, n)
    filled = np.where(np.isnan(per), -np.inf, per)
    which = filled.argmax(0)
    best = filled.max(0)
    found = np.isfinite(best)
    rows = np.full(len(best), -1, dtype=np.int64)
    for a, o in enumerate(scored):
        r, _ = best_rows_per_image(o.score)
        rows[which == a] = r[which == a]
    rows[~found] = -1
    names = [o.name for o in scored]
    row_best = np.max(np.stack([o.score.row_max_ssim for o in scored]), 0)
    return {
        "attacks": names,
        "per_image": {"ssim": [float(v) if ok else None for v, ok in zip(best, found)],
                      "attack": [names[a] if ok else None for a, ok in zip(which, found)],
                      "row": [int(r) if r >= 0 else None for r in rows]},
        "images": spread(np.where(found, best, np.nan), thresholds),
        "wins": {name: int(np.sum((which == a) & found)) for a, name in enumerate(names)},
        "per_row": {"max_ssim": float(row_best.mean()), **spread(row_best, thresholds)},
        "per_attack": {o.name: {"images": spread(o.score.per_private_best_ssim, thresholds),
                                "rows": {"max_ssim": float(o.score.max_ssim), **spread(o.score.row_max_ssim, thresholds)}}
                       for o in scored},
    }


def best_rows_per_image(score) -> tuple[np.ndarray, np.ndarray]:
    """For each private image, the row whose decryption matches it best and that SSIM.

    Returns ``(rows (n,), ssim (n,))``; ``rows[i] == -1`` (and SSIM NaN) for an image in no row."""
    n = len(score.per_private_best_ssim)
    rows = np.full(n, -1, dtype=np.int64)
    best = np.full(n, -np.inf)
    for p, s in ((score.p1, score.ssim1), (score.p2, score.ssim2)):
        for r in np.argsort(-s, kind="stable"):
            i = p[r]
            if s[r] > best[i]:
                best[i], rows[i] = s[r], r
    best[rows < 0] = np.nan
    return rows, best


def ssim_distribution_png(outcomes, path: str | os.PathLike, threshold: float = 0.8, best=None,
                          controls=()) -> Path | None:
    """Histograms of each private image's best SSIM and each row's Max_SSIM, one colour per attack;
    ``best`` (:func:`best_over_attacks`) adds the best over the attacks that used no secret (black),
    ``controls`` the decryptions that know nothing (grey, dotted)."""
    scored = [o for o in outcomes if o.score is not None]
    if not scored:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.linspace(-0.2, 1.0, 31)
    for o in scored:
        per_image = o.score.per_private_best_ssim
        axes[0].hist(np.clip(per_image[np.isfinite(per_image)], -0.2, 1.0), bins=bins, histtype="step",
                     linewidth=1.6, label=o.name)
        axes[1].hist(np.clip(o.score.row_max_ssim, -0.2, 1.0), bins=bins, histtype="step", linewidth=1.6,
                     label=o.name)
    for c in controls:
        per_image = c.score.per_private_best_ssim
        for ax, v in ((axes[0], per_image[np.isfinite(per_image)]), (axes[1], c.score.row_max_ssim)):
            ax.hist(np.clip(v, -0.2, 1.0), bins=bins, histtype="step", linewidth=1.2, color="0.55",
                    linestyle=":", label=f"control: {c.name}")
    if best is not None:
        b = np.array([np.nan if v is None else v for v in best["per_image"]["ssim"]], dtype=np.float64)
        axes[0].hist(np.clip(b[np.isfinite(b)], -0.2, 1.0), bins=bins, histtype="step", linewidth=2.2,
                     color="k", linestyle="--", label="best over attacks")
    for ax, title in zip(axes, ("per private image: its best SSIM (best row)",
                                "per row: Max_SSIM (vs the closer of its 2 private images)")):
        ax.axvline(threshold, color="k", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("SSIM")
        ax.set_ylabel("count")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


def _display_order(best: np.ndarray, max_images: int) -> list[int]:
    """Images with a recovery, best to worst; at most ``max_images`` spread over the range (the best,
    the median and the worst recoveries, not only the best)."""
    order = [int(i) for i in np.argsort(-np.nan_to_num(best, nan=-9), kind="stable") if np.isfinite(best[i])]
    if len(order) > max_images:
        pick = np.linspace(0, len(order) - 1, max_images).round().astype(int)
        order = [order[j] for j in pick]
    return order


def _held(encryption, rows) -> np.ndarray:
    held = np.abs(np.asarray(encryption, dtype=np.float32)[rows])
    return held / np.maximum(held.reshape(len(rows), -1).max(1), 1e-12)[:, None, None, None]


def recovered_png(outcome, truth, encryption, path: str | os.PathLike, max_images: int = 12) -> Path | None:
    """Originals / one ``|encryption|`` holding each / the attack's best recovery of each (with SSIM);
    ``encryption`` and the outcome's decryption are ``(N, C, H, W)``."""
    if outcome.score is None or outcome.decryption is None:
        return None
    rows, best = best_rows_per_image(outcome.score)
    order = [i for i in _display_order(best, max_images) if rows[i] >= 0]
    if not order:
        return None
    dec = np.asarray(outcome.decryption, dtype=np.float32)
    encryption_grid([("original", truth_unit_range(truth.private[order], truth)),
                     ("|encryption|\n(attacker)", _held(encryption, rows[order])),
                     ("recovered", truth_unit_range(dec[rows[order]], truth), [f"{best[i]:.2f}" for i in order])],
                    path, title=f"{outcome.name}: best recovery of each private image (SSIM below; best to worst)")
    return Path(path)


def recovered_best_png(best: dict, outcomes, truth, encryption, path: str | os.PathLike,
                       max_images: int = 12) -> Path | None:
    """Originals / the ``|encryption|`` of the row that gave each image's best recovery over the attacks
    / that recovery, captioned with its SSIM and attack (``best``: :func:`best_over_attacks`)."""
    per = best["per_image"]
    ssim_best = np.array([np.nan if v is None else v for v in per["ssim"]], dtype=np.float64)
    order = _display_order(ssim_best, max_images)
    if not order:
        return None
    by = {o.name: o for o in outcomes}
    rows = np.array([per["row"][i] for i in order], dtype=np.int64)
    rec = np.stack([np.asarray(by[per["attack"][i]].decryption, np.float32)[per["row"][i]] for i in order])
    encryption_grid([("original", truth_unit_range(truth.private[order], truth)),
                     ("|encryption|\n(attacker)", _held(encryption, rows)),
                     ("best of all\nattacks", truth_unit_range(rec, truth),
                      [f"{ssim_best[i]:.2f} {per['attack'][i]}" for i in order])],
                    path, title="best recovery of each private image over the attacks that used no secret "
                                "(SSIM and attack below; best to worst)")
    return Path(path)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if not np.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _rate(measure: dict | None) -> str:
    if not measure:
        return "-"
    return f"{measure['rate']:.1%} (chance {max(measure['chance'], measure['shuffled']):.1%})"


def _rows(outcomes, n_private: int) -> list[list[str]]:
    out = []
    for o in outcomes:
        rec = o.recognition or {}
        rec = [_rate(rec.get("identification")), _rate(rec.get("labels"))]
        if o.score is not None:
            s = o.score
            above = int(np.sum(s.per_private_best_ssim > s.threshold))
            out.append([o.name, *rec, _fmt(s.max_ssim), _fmt(s.mean_ssim), f"{s.share_above:.1%}",
                        f"{above}/{n_private}", _fmt(float(np.nanmedian(s.per_private_best_ssim))),
                        f"{o.seconds:.1f}", o.uses_truth or "nothing"])
        else:
            out.append([o.name, *rec, "-", "-", "-", "0/" + str(n_private), "-", f"{o.seconds:.1f}",
                        o.uses_truth or "nothing"])
    return out


HEADER = ["attack", "rows identified (rank 1)", "rows whose label it shows", "Max_SSIM (per row, mean)",
          "Mean_SSIM (per row, mean)", "rows > {t}", "images > {t}", "median image SSIM", "seconds",
          "ground truth used"]
IMAGE_HEADER = ["", "median", "10th percentile", "90th percentile", "min", "max", "images > 0.5", "images > {t}",
                "best of all attacks for"]


_RECOGNITION = {  # measure: (its threshold, what the rows that pass it do)
    "identification": ("rank 1: more alike than every other candidate",
                       "identified: more alike (normalised correlation) to one of the row's private images than "
                       "to every other of {candidates} candidates ({candidates_are})"),
    "labels": ("the classifier's top label is one of the row's private labels",
               "show the label of one of the row's private images to a classifier trained on the attacker's own "
               "images only ({clean_accuracy:.1%} accurate on clean images)"),
}


_KEYS = {"legacy": "legacy (reference code)", "research-seed": "from a research seed (reproducible, not private)",
         "os-entropy": "default (256-bit OS-entropy keystream)"}


def _leads(outcomes, n_private: int, t: float) -> list[dict]:
    """Every measure of every attack that used no secret, most leakage (rate above chance) first."""
    found = []
    for o in outcomes:
        if o.score is None or o.uses_truth:
            continue
        s, rec = o.score, o.recognition or {}
        imgs = int(np.sum(s.per_private_best_ssim > t))
        found.append({"measure": "ssim", "attack": o.name, "rate": s.share_above, "chance": 0.0,
                      "above_chance": s.share_above, "threshold": f"SSIM > {t}",
                      "text": f"{s.share_above:.1%} of the decrypted rows (per row) recovered with SSIM > {t}; "
                              f"{imgs} of {n_private} private images (per image) in at least one such row; "
                              f"Max_SSIM {s.max_ssim:.3f} (the mean over rows)"})
        for name, (threshold, what) in _RECOGNITION.items():
            m = rec.get(name)
            if m:
                found.append({"measure": name, "attack": o.name, **m, "threshold": threshold,
                              "text": f"{m['rate']:.1%} of the {m['queries']} decrypted rows {what.format(**m)}; "
                                      f"chance {max(m['chance'], m['shuffled']):.1%}"})
    return sorted(found, key=lambda m: -m["above_chance"])


def _flat(info: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested facts as ``(name, value)`` rows; long lists are left out (they are in outcome.json)."""
    rows = []
    for k, v in info.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k} / ")
        elif not isinstance(v, list) or len(json.dumps(v, default=str)) < 300:
            rows.append((f"{prefix}{k}", f"{v:.4g}" if isinstance(v, float) else
                         json.dumps(v) if isinstance(v, list) else "-" if v is None else str(v)))
    return rows


def _attacker_fact(info: dict) -> tuple[str, str] | None:
    a = info.get("attacker")
    if not a:
        return None
    return ("the attacker's own data", f"{a.get('images')} {a.get('dataset')} {a.get('split')} images"
            + (f"; its public pool (the public dataset it assumes): {a['public']}" if a.get("public") else ""))


def _facts(o, n_private: int) -> list[tuple[str, str]]:
    """The few facts a reader needs about one attack (everything else is in the JSON)."""
    info = o.info or {}
    head = [("Max_SSIM (per row, mean)", _fmt(o.score.max_ssim) if o.score is not None else "-")]
    if o.name == "carlini":
        steps = info.get("per_step") or {}
        cl, asg = steps.get("clusters") or {}, steps.get("assignment_final") or steps.get("assignment") or {}
        found = cl.get("clusters", len(o.groups) if o.groups else None)
        facts = [("clusters found", "-" if found is None else
                  f"{found} for {n_private} private images" + (
                      f"; {round(cl['coverage'] * n_private)} distinct images are a cluster's majority, core purity "
                      f"{cl['core_purity']:.1%}" if "coverage" in cl and "core_purity" in cl else ""))]
        if asg:
            facts.append(("assignment accuracy", f"{asg['exact']:.1%} of rows assigned exactly their private "
                          f"images; {asg['slot']:.1%} of assigned slots right (against the truth, after the fact)"))
        train = (info.get("steps_seconds") or {}).get("train_pair_network")
        facts.append(("time", f"{o.seconds:.1f} s" + (f" ({train:.1f} s training the pair network)"
                                                     if train is not None else "")))
        facts.append(("preset", str(info.get("preset", "-"))))
        return head + facts + [f for f in [_attacker_fact(info)] if f]
    if o.name == "fusion":
        tr = info.get("train") or {}
        facts = [("groups decoded", f"{info.get('groups')} ({info.get('groups_from', 'carlini')}'s clusters)")]
        if tr:
            budget = f", budget {tr['budget_s']:.0f} s" if tr.get("budget_s") else ""
            loss = (f"; L1 loss {tr['loss_first']:.3f} -> {tr['loss_last']:.3f}"
                    if tr.get("loss_first") is not None else "")
            facts.append(("network training", f"{tr.get('steps')} steps (at most {tr.get('max_steps')}{budget}) "
                          f"in {tr.get('seconds', 0):.1f} s{loss}"))
        facts.append(("time", f"{o.seconds:.1f} s"))
        return head + facts + [f for f in [_attacker_fact(info)] if f]
    return head + _flat(info)


def _cells(row) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"


def _pct(share: float, n: int) -> str:
    return f"{round(share * n)} ({share:.0%})"


def _image_row(name: str, sp: dict, n: int, t: float, wins: str = "") -> list[str]:
    return [name, _fmt(sp["median"]), _fmt(sp["p10"]), _fmt(sp["p90"]), _fmt(sp["min"]), _fmt(sp["max"]),
            _pct(sp["above"]["0.5"], n), _pct(sp["above"][f"{t:g}"], n), wins]


def _best_text(best: dict, n: int, t: float, rows_per_image: float) -> str:
    im, pr = best["images"], best["per_row"]
    wins = ", ".join(f"{k} {v}" for k, v in sorted(best["wins"].items(), key=lambda kv: -kv[1]) if v)
    top = max(best["per_attack"].items(), key=lambda kv: kv[1]["rows"]["max_ssim"])
    return (f"**Best recovery of each private image** (per image, over the {len(best['attacks'])} attacks that "
            f"used no secret: {', '.join(best['attacks'])}; an image's score is its best-matching decrypted row "
            f"of any of them): median SSIM {_fmt(im['median'])}, 10th-90th percentile {_fmt(im['p10'])}-"
            f"{_fmt(im['p90'])}, worst {_fmt(im['min'])}, best {_fmt(im['max'])}; "
            f"{_pct(im['above']['0.5'], n)} of the {n} images above 0.5 and {_pct(im['above'][f'{t:g}'], n)} "
            f"above {t:g}. Best for: {wins or '-'}. **Per row** (the challenge's scores: every decrypted row "
            f"scored against the closer of its two private images, then averaged over the "
            f"{pr['count']} rows): the best attack, {top[0]}, has Max_SSIM {top[1]['rows']['max_ssim']:.3f} "
            f"with {top[1]['rows']['above'][f'{t:g}']:.1%} of rows above {t:g}; taking each row's best "
            f"attack, {pr['max_ssim']:.3f} and {pr['above'][f'{t:g}']:.1%}. A per-image score takes the best of "
            f"an image's ~{rows_per_image:.0f} rows, a per-row mean counts every row that missed, so the first "
            f"is higher; the best is chosen with the truth, so it says what the attacks' outputs hold, not "
            f"which output an attacker would know to trust.")


_VERSUS = (("Max_SSIM", lambda o: o.score.max_ssim, "{:.3f}"),
           ("Mean_SSIM", lambda o: o.score.mean_ssim, "{:.3f}"),
           ("rows > {t}", lambda o: o.score.share_above, "{:.1%}"),
           ("images > {t}", lambda o: int(np.sum(o.score.per_private_best_ssim > o.score.threshold)), "{}"),
           ("median image SSIM", lambda o: float(np.nanmedian(o.score.per_private_best_ssim)), "{:.3f}"),
           ("rows identified", lambda o: ((o.recognition or {}).get("identification") or {}).get("rate"), "{:.1%}"),
           ("rows showing a label", lambda o: ((o.recognition or {}).get("labels") or {}).get("rate"), "{:.1%}"))


def _beats_oracle(outcomes, t: float) -> list[dict]:
    """Where an attack that used no secret scores above the oracle (the true-key least squares)."""
    oracle = next((o for o in outcomes if o.name == "oracle" and o.score is not None), None)
    if oracle is None:
        return []
    found = []
    for o in outcomes:
        if o.score is None or o.uses_truth:
            continue
        for name, get, fmt in _VERSUS:
            a, b = get(o), get(oracle)
            if a is not None and b is not None and np.isfinite(a) and np.isfinite(b) and a > b:
                found.append({"attack": o.name, "measure": name.format(t=t), "attack_value": a, "oracle_value": b,
                              "text": f"{o.name} on {name.format(t=t)} ({fmt.format(a)} vs {fmt.format(b)})"})
    return found


def write_audit_report(out: str | os.PathLike, config: dict, meta: dict, outcomes, truth, encryption, *,
                       formats=("md", "html"), threshold: float = 0.8, notes=(), controls=()) -> dict[str, Path]:
    """Write the report files into ``out`` (and ``summary.json``: the best recovery per image over the
    attacks, then the measures, most leakage first; ``best_per_image.csv``); returns their paths (``md``,
    ``html``, ``summary``, ``best_per_image``, pictures). ``controls``: scored outcomes that are not
    attacks (e.g. every row decrypted as the attacker's mean image), reported for scale only."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = threshold
    thresholds = tuple(sorted({0.5, float(t)}))
    n = truth.n
    best = best_over_attacks(outcomes, thresholds)
    paths: dict[str, Path] = {}
    pictures: list[tuple[str, Path]] = []
    picture_note = None
    try:
        p = ssim_distribution_png(outcomes, out / "ssim_distribution.png", threshold, best,
                                  [c for c in controls if c.score is not None])
        if p:
            paths["ssim_distribution"] = p
            pictures.append(("SSIM distribution", p))
        if best is not None:
            p = recovered_best_png(best, outcomes, truth, encryption, out / "recovered_best.png")
            if p:
                paths["recovered_best"] = p
                pictures.append(("best of all attacks: originals, |encryption|, recovered", p))
        for o in outcomes:
            p = recovered_png(o, truth, encryption, out / f"recovered_{o.name}.png")
            if p:
                paths[f"recovered_{o.name}"] = p
                pictures.append((f"{o.name}: originals, |encryption|, recovered", p))
    except ImportError:
        picture_note = 'pictures skipped: they need matplotlib (pip install "instahide[plot]")'

    header = [h.format(t=t) for h in HEADER]
    scheme = (f"{meta.get('mode')} k={meta.get('k')} ({meta.get('num_private')} private + "
              f"{meta.get('num_public')} public), c1={meta.get('upper')}, c2={meta.get('dom')}, "
              f"{n} private images x T={truth.T} encryptions, pixels {meta.get('scaling')}, "
              f"public pool {meta.get('public_pool_size')}, augmentation "
              f"{'crop ' + str(meta['augment']['crop_padding']) + ' + flip' if meta.get('augment') else 'none'}, "
              f"keys {_KEYS.get('legacy' if meta.get('legacy') else meta.get('key_origin'), _KEYS['os-entropy'])}")
    lines = ["# InstaHide privacy audit", "", f"**Configuration:** {scheme}.", "",
             f"> {DISCLAIMER}", ""]
    p1, p2 = truth.pairs[:, 0], truth.pairs[:, 1]
    rows_per_image = float(np.median(np.bincount(p1, minlength=n) + np.bincount(p2[p2 != p1], minlength=n)))
    scored_controls = [c for c in controls if c.score is not None]
    if best is not None:
        best["text"] = _best_text(best, n, t, rows_per_image)
        for c in scored_controls:
            sp = spread(c.score.per_private_best_ssim, thresholds)
            b = np.array([np.nan if v is None else v for v in best["per_image"]["ssim"]], dtype=np.float64)
            above = int(np.sum(np.nan_to_num(b, nan=-np.inf) > np.nan_to_num(c.score.per_private_best_ssim,
                                                                             nan=np.inf)))
            best.setdefault("above_control", {})[c.name] = above
            best["text"] += (f" For scale, a decryption that knows nothing ({c.info.get('what', c.name)}) scores "
                             f"a median image SSIM of {_fmt(sp['median'])}, {_pct(sp['above']['0.5'], n)} images "
                             f"above 0.5, and Max_SSIM {c.score.max_ssim:.3f} per row; the best recovery beats "
                             f"it on {above} of the {n} images.")
        lines += [best["text"], ""]
    leads = _leads(outcomes, n, t)
    headline = None
    if leads:
        top = leads[0]
        ssim_lead = next(m for m in leads if m["measure"] == "ssim" and m["attack"] == top["attack"])
        others = [m for m in leads if m["attack"] == top["attack"] and m is not top and m is not ssim_lead]
        headline = (f"**Measured leakage** ({top['attack']}, the attack that used no secret with the most "
                    f"leakage above chance; threshold: {top['threshold']}): {top['text']}.")
        lines += [headline, ""]
        lines += [f"- {m['text']}." for m in others + ([ssim_lead] if ssim_lead is not top else [])] + [""]
    lines += ["## Per decrypted row", ""]
    lines += [_cells(header), "|" + "---|" * len(header)]
    lines += [_cells(r) for r in _rows(outcomes, n)]
    beats = _beats_oracle(outcomes, t)
    oracle_run = any(o.name == "oracle" and o.score is not None for o in outcomes)
    versus = ""
    if oracle_run:
        versus = (" In this audit an attack exceeds it on: " + "; ".join(b["text"] for b in beats) + "."
                  if beats else " In this audit no attack exceeds it on the measures above.")
    lines += ["", "Per row: each decrypted row is scored against the closer of its two private images (slots 1 "
              "and 2); Max_SSIM and Mean_SSIM are means over all rows, 'rows > {t}' the share of rows above the "
              "threshold. Per image: 'images > {t}' counts private images whose best row exceeds it, 'median image "
              "SSIM' is the median over images of their best row. ".format(t=t) +
              "Rows identified: the share of decrypted rows more alike (normalised correlation, blind to "
              "brightness and contrast) to one of the row's two private images than to every other candidate "
              "(the private images and other images of the same dataset, none attacked). Label: the share of "
              "rows whose label, as read by a classifier trained on the attacker's own images, is one of the "
              "row's private labels. Chance: the larger of a uniform guess and the same answers given to "
              "random other rows (docs/audit.md). "
              "SSIM: scikit-image's `structural_similarity` conventions (7x7 uniform window, "
              f"channel_axis=-1), data range {truth.data_range:g}.", ""]
    if oracle_run:
        lines += [ORACLE_NOTE + versus, ""]
    if best is not None:
        img_header = [h.format(t=t) for h in IMAGE_HEADER]
        img_header[0] = "per private image: its best row's SSIM"
        lines += ["## Per private image", "", _cells(img_header), "|" + "---|" * len(img_header)]
        for name in best["attacks"]:
            lines += [_cells(_image_row(name, best["per_attack"][name]["images"], n, t, str(best["wins"][name])))]
        lines += [_cells(_image_row(f"best of all {len(best['attacks'])} attacks", best["images"], n, t,
                                    f"{best['images']['finite']}"))]
        for o in outcomes:
            if o.uses_truth and o.score is not None:
                lines += [_cells(_image_row(f"{o.name} (true keys; not an attack)",
                                            spread(o.score.per_private_best_ssim, thresholds), n, t, "-"))]
        for c in scored_controls:
            lines += [_cells(_image_row(f"control: {c.name}", spread(c.score.per_private_best_ssim, thresholds),
                                        n, t, "-"))]
        lines += ["", f"Spread over the {n} private images of each one's best SSIM (its best row; an image in no "
                  "row counts as not above). 'best of all attacks' takes, per image, the highest of the attacks "
                  "that used no secret; its last column counts the images it scores. Every image: "
                  "`best_per_image.csv` and `summary.json` (`best_over_attacks`).", ""]
        if n <= 40:
            names = best["attacks"]
            lines += [_cells(["image", "class", "best SSIM", "by", *names]), "|" + "---|" * (4 + len(names))]
            for i in range(n):
                lines += [_cells([i, int(truth.private_labels[i]), _fmt(best["per_image"]["ssim"][i]),
                                  best["per_image"]["attack"][i] or "-",
                                  *[_fmt(float(next(o for o in outcomes if o.name == a)
                                               .score.per_private_best_ssim[i])) for a in names]])]
            lines += [""]
    lines += ["## Attacks", ""]
    for o in outcomes:
        lines += [f"### {o.name} ({o.seconds:.1f} s)", "", _cells(["fact", "value"]), "|---|---|"]
        lines += [_cells(r) for r in _facts(o, n)] + [""]
    lines += [f"Every other value of each attack (timings of every step, per-step accuracies against the truth, "
              f"options): `attacks/<name>/outcome.json` and `summary.json` (`attacks.<name>.info`).", ""]
    for note in notes:
        lines += [f"- note: {note}"]
    if notes:
        lines += [""]
    if picture_note:
        lines += [f"- {picture_note}", ""]
    lines += ["## Pictures", ""]
    for title, p in pictures:
        lines += [f"### {title}", "", f"![{title}]({p.name})", ""]
    lines += ["## Configuration (complete)", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    md = "\n".join(lines) + "\n"
    if best is not None:
        paths["best_per_image"] = out / "best_per_image.csv"
        _write_best_csv(paths["best_per_image"], best, outcomes, truth)
    paths["summary"] = out / "summary.json"
    summary = {"best_over_attacks": best, "headline": headline, "lead": leads[0] if leads else None,
               "measures": leads, "oracle": {"what": ORACLE_NOTE, "exceeded_by": beats} if oracle_run else None,
               "attacks": {o.name: {"score": None if o.score is None else o.score.summary(),
                                    "recognition": o.recognition, "seconds": o.seconds,
                                    "uses_truth": o.uses_truth, "info": o.info} for o in outcomes},
               "controls": {c.name: {"score": c.score.summary(), "info": c.info,
                                     "images": spread(c.score.per_private_best_ssim, thresholds)}
                            for c in scored_controls},
               "notes": list(notes), "config": config}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2, default=str) + "\n")
    if "md" in formats:
        paths["md"] = out / "report.md"
        atomic_write_text(paths["md"], md)
    if "html" in formats:
        paths["html"] = out / "report.html"
        atomic_write_text(paths["html"], _html(md, out))
    return paths


def _write_best_csv(path: Path, best: dict, outcomes, truth) -> None:
    """One line per private image: its class, best SSIM, the attack and row that gave it, and every
    attack's own best SSIM for it."""
    by = {o.name: o for o in outcomes}
    with atomic_open(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "class", "best_ssim", "attack", "row", *best["attacks"]])
        for i in range(truth.n):
            v = best["per_image"]["ssim"][i]
            w.writerow([i, int(truth.private_labels[i]), "" if v is None else f"{v:.6f}",
                        best["per_image"]["attack"][i] or "", "" if best["per_image"]["row"][i] is None
                        else best["per_image"]["row"][i],
                        *[("" if not np.isfinite(x) else f"{x:.6f}") for x in
                          (float(by[a].score.per_private_best_ssim[i]) for a in best["attacks"])]])


def _html(md: str, folder: Path) -> str:
    """A small Markdown-to-HTML rendering of the report (headings, tables, lists, code, images inlined)."""
    body, in_table, in_code, in_list = [], False, False, False
    for line in md.splitlines():
        if line.startswith("```"):
            body.append("<pre>" if not in_code else "</pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if all(re.fullmatch(r"-+", c) for c in cells):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        m = re.fullmatch(r"!\[(.*)\]\((.*)\)", line)
        if m:
            data = base64.b64encode((folder / m.group(2)).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("> "):
            body.append(f"<blockquote>{_inline(line[2:])}</blockquote>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    if in_list:
        body.append("</ul>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}blockquote{color:#933}"
             "pre{background:#f4f4f4;padding:8px;overflow:auto}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>InstaHide privacy audit</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
