"""The report of ``instahide audit`` (:func:`write_audit_report`): ``report.md`` and/or a self-contained
``report.html`` and ``summary.json``, led by the measure that shows the most leakage above chance (rank-1
identification, labels read off the pictures, or the share recovered above the SSIM threshold, always
beside it), then per attack the challenge's scores and its facts, and the pictures
``ssim_distribution.png`` and ``recovered_<attack>.png`` (they need matplotlib, ``instahide[plot]``;
without it the report says so).
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path

import numpy as np

from .._io import atomic_write_text, pyplot, save_figure
from .figures import encryption_grid, truth_unit_range

__all__ = ["write_audit_report", "ssim_distribution_png", "recovered_png", "best_rows_per_image"]

DISCLAIMER = ("InstaHide is not encryption in the cryptographic sense. These are the results of the attacks "
              "run here, at this scale; an attack that recovers little here does not show that a stronger "
              "or longer attack recovers little.")


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


def ssim_distribution_png(outcomes, path: str | os.PathLike, threshold: float = 0.8) -> Path | None:
    """Histograms of each private image's best SSIM and each row's Max_SSIM, one colour per attack."""
    scored = [o for o in outcomes if o.score is not None]
    if not scored:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.linspace(-0.2, 1.0, 31)
    for o in scored:
        best = o.score.per_private_best_ssim
        axes[0].hist(np.clip(best[np.isfinite(best)], -0.2, 1.0), bins=bins, histtype="step", linewidth=1.6,
                     label=o.name)
        axes[1].hist(np.clip(o.score.row_max_ssim, -0.2, 1.0), bins=bins, histtype="step", linewidth=1.6,
                     label=o.name)
    for ax, title in zip(axes, ("best SSIM of each private image", "Max_SSIM of each row (encryption)")):
        ax.axvline(threshold, color="k", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("SSIM")
        ax.set_ylabel("count")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


def recovered_png(outcome, truth, encryption, path: str | os.PathLike, max_images: int = 12) -> Path | None:
    """Originals / one ``|encryption|`` holding each / the attack's best recovery of each (with SSIM);
    ``encryption`` and the outcome's decryption are ``(N, C, H, W)``."""
    if outcome.score is None or outcome.decryption is None:
        return None
    rows, best = best_rows_per_image(outcome.score)
    order = [i for i in np.argsort(-np.nan_to_num(best, nan=-9)) if rows[i] >= 0]
    # show the best, the median and the worst recoveries, not only the best
    if len(order) > max_images:
        pick = np.linspace(0, len(order) - 1, max_images).round().astype(int)
        order = [order[j] for j in pick]
    n = len(order)
    if n == 0:
        return None
    held = np.abs(np.asarray(encryption, dtype=np.float32)[rows[order]])
    held = held / np.maximum(held.reshape(n, -1).max(1), 1e-12)[:, None, None, None]
    dec = np.asarray(outcome.decryption, dtype=np.float32)
    encryption_grid([("original", truth_unit_range(truth.private[order], truth)),
                     ("|encryption|\n(attacker)", held),
                     ("recovered", truth_unit_range(dec[rows[order]], truth), [f"{best[i]:.2f}" for i in order])],
                    path, title=f"{outcome.name}: best recovery of each private image (SSIM below; best to worst)")
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


HEADER = ["attack", "rows identified (rank 1)", "rows whose label it shows", "Max_SSIM", "Mean_SSIM", "rows > {t}",
          "images > {t}", "median image SSIM", "seconds", "ground truth used"]


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
                      "text": f"{s.share_above:.1%} of the rows ({imgs} of {n_private} private images in at least "
                              f"one row) recovered with SSIM > {t}; Max_SSIM {s.max_ssim:.3f}"})
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


def _cells(row) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"


def write_audit_report(out: str | os.PathLike, config: dict, meta: dict, outcomes, truth, encryption, *,
                       formats=("md", "html"), threshold: float = 0.8, notes=()) -> dict[str, Path]:
    """Write the report files into ``out`` (and ``summary.json``: the measures, most leakage first);
    returns their paths (``md``, ``html``, ``summary``, pictures)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    pictures: list[tuple[str, Path]] = []
    picture_note = None
    try:
        p = ssim_distribution_png(outcomes, out / "ssim_distribution.png", threshold)
        if p:
            paths["ssim_distribution"] = p
            pictures.append(("SSIM distribution", p))
        for o in outcomes:
            p = recovered_png(o, truth, encryption, out / f"recovered_{o.name}.png")
            if p:
                paths[f"recovered_{o.name}"] = p
                pictures.append((f"{o.name}: originals, |encryption|, recovered", p))
    except ImportError:
        picture_note = 'pictures skipped: they need matplotlib (pip install "instahide[plot]")'

    t = threshold
    header = [h.format(t=t) for h in HEADER]
    scheme = (f"{meta.get('mode')} k={meta.get('k')} ({meta.get('num_private')} private + "
              f"{meta.get('num_public')} public), c1={meta.get('upper')}, c2={meta.get('dom')}, "
              f"{truth.n} private images x T={truth.T} encryptions, pixels {meta.get('scaling')}, "
              f"public pool {meta.get('public_pool_size')}, augmentation "
              f"{'crop ' + str(meta['augment']['crop_padding']) + ' + flip' if meta.get('augment') else 'none'}, "
              f"keys {_KEYS.get('legacy' if meta.get('legacy') else meta.get('key_origin'), _KEYS['os-entropy'])}")
    lines = ["# InstaHide privacy audit", "", f"**Configuration:** {scheme}.", "",
             f"> {DISCLAIMER}", ""]
    leads = _leads(outcomes, truth.n, t)
    headline = None
    if leads:
        top = leads[0]
        ssim_lead = next(m for m in leads if m["measure"] == "ssim" and m["attack"] == top["attack"])
        others = [m for m in leads if m["attack"] == top["attack"] and m is not top and m is not ssim_lead]
        headline = (f"**Measured leakage** ({top['attack']}, the attack that used no secret with the most "
                    f"leakage above chance; threshold: {top['threshold']}): {top['text']}.")
        lines += [headline, ""]
        lines += [f"- {m['text']}." for m in others + ([ssim_lead] if ssim_lead is not top else [])] + [""]
    lines += [_cells(header), "|" + "---|" * len(header)]
    lines += [_cells(r) for r in _rows(outcomes, truth.n)]
    lines += ["", "Rows identified: the share of decrypted rows more alike (normalised correlation, blind to "
              "brightness and contrast) to one of the row's two private images than to every other candidate "
              "(the private images and other images of the same dataset, none attacked). Label: the share of "
              "rows whose label, as read by a classifier trained on the attacker's own images, is one of the "
              "row's private labels. Chance: the larger of a uniform guess and the same answers given to "
              "random other rows (docs/audit.md). "
              "SSIM: scikit-image's `structural_similarity` conventions (7x7 uniform window, "
              f"channel_axis=-1), data range {truth.data_range:g}; 'images > {t}' counts private images whose "
              "best row exceeds the threshold. The oracle decoder is given the true keys: it is an upper bound "
              "for the reconstruction step of Carlini et al.'s family, not an attack.", ""]
    lines += ["## Attacks", ""]
    for o in outcomes:
        lines += [f"### {o.name} ({o.seconds:.1f} s)", "", _cells(["fact", "value"]), "|---|---|"]
        lines += [_cells(r) for r in _flat(o.info)] + [""]
    for note in notes:
        lines += [f"- note: {note}"]
    if picture_note:
        lines += [f"- {picture_note}", ""]
    lines += ["## Pictures", ""]
    for title, p in pictures:
        lines += [f"### {title}", "", f"![{title}]({p.name})", ""]
    lines += ["## Configuration (complete)", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    md = "\n".join(lines) + "\n"
    paths["summary"] = out / "summary.json"
    summary = {"headline": headline, "lead": leads[0] if leads else None, "measures": leads,
               "attacks": {o.name: {"score": None if o.score is None else o.score.summary(),
                                    "recognition": o.recognition, "seconds": o.seconds,
                                    "uses_truth": o.uses_truth} for o in outcomes},
               "notes": list(notes), "config": config}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2, default=str) + "\n")
    if "md" in formats:
        paths["md"] = out / "report.md"
        atomic_write_text(paths["md"], md)
    if "html" in formats:
        paths["html"] = out / "report.html"
        atomic_write_text(paths["html"], _html(md, out))
    return paths


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
