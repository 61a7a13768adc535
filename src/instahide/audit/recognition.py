"""The audit's measures that match what a person sees (docs/audit.md, "Identification and labels"):
per decrypted row, rank-1 identification among the private images and distractors of the same
dataset (never attacked images), and the label a classifier trained on the attacker's own images
reads off the row.

Example::

    rec = Recognition.build("digits", None, "test", truth, meta)
    rec.measure(outcome.score, outcome.decryption)["identification"]["rate"]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import load_dataset
from ..data.scaling import scale_images
from ..metrics import LinearClassifier, fit_linear_classifier, rank1, rank1_identification
from .attacks import load_attacker_images

__all__ = ["Recognition", "SIMILARITY", "CLASSIFIER"]

SIMILARITY = "ncc"  # chosen by measurement: docs/audit.md, "Identification and labels"
CLASSIFIER = ("multinomial logistic regression (torch, L-BFGS, weight decay 1e-2) on per-image standardised "
              "pixels")
_CLASSIFIER_IMAGES = 5000  # the attacker's first images it is fitted on (CIFAR-10: about 30 s on one core)


@dataclass
class Recognition:
    """The gallery (private images first, then the distractors) and the attacker's classifier."""

    gallery: np.ndarray
    gallery_note: str
    private_labels: np.ndarray
    classifier: LinearClassifier | None
    classifier_note: str
    clean_accuracy: float | None

    @classmethod
    def build(cls, dataset: str, root, split: str, truth, meta: dict, *, distractors: int = 1000,
              attacker: dict | None = None) -> "Recognition":
        """Distractors: the images of ``dataset`` after the ``truth.n`` attacked ones, then the other
        split, at most ``distractors``. Classifier: fitted on the attacker's images (``attacker``:
        ``attacker_dataset``/``attacker_root``/``attacker_split``, default the other split), its clean
        accuracy measured on the distractors of the attacked split."""
        def units(images):
            return scale_images(torch.as_tensor(images), truth.scaling, truth.params.get("private_mean"),
                                truth.params.get("private_std")).numpy()

        own = load_dataset(dataset, root=root, split=split)
        held_out = own.subset(slice(truth.n, truth.n + distractors))
        parts, labels = [held_out.images], [held_out.labels]
        other = "train" if split == "test" else "test"
        if len(held_out) < distractors:
            try:
                more = load_dataset(dataset, root=root, split=other).subset(slice(0, distractors - len(held_out)))
                parts.append(more.images)
            except (ValueError, FileNotFoundError):
                other = None
        extra = np.concatenate(parts)[:distractors]
        gallery = np.concatenate([truth.private, units(extra)]).astype(np.float32)
        note = (f"{truth.n} private + {len(extra)} other {own.name} images ({split} after the first {truth.n}"
                + (f", then {other}" if len(parts) > 1 else "") + "; none attacked)")
        clf, clf_note, acc = None, "not measured: ", None
        a = attacker or {}
        try:
            ds, a_split = load_attacker_images(meta, a.get("attacker_dataset"), a.get("attacker_root"),
                                               a.get("attacker_split"), _CLASSIFIER_IMAGES)
            if len(np.unique(ds.labels)) < 2 or held_out.labels is None or len(held_out) == 0:
                raise ValueError("it needs labelled images of at least 2 classes")
            classes = max(int(ds.labels.max()), int(truth.private_labels.max())) + 1
            clf = fit_linear_classifier(units(ds.images), ds.labels, classes)
            acc = float(np.mean(clf(units(held_out.images)).argmax(1) == held_out.labels))
            clf_note = (f"{CLASSIFIER}, fitted on the attacker's {len(ds)} {ds.name} {a_split} images; "
                        f"{acc:.1%} accurate on {len(held_out)} clean {own.name} {split} images (not attacked)")
        except (ValueError, FileNotFoundError) as exc:
            clf_note += str(exc)
        return cls(gallery, note, np.asarray(truth.private_labels), clf, clf_note, acc)

    def measure(self, score, decryption) -> dict:
        """Per row: identification (the row's private images in slots 1 and 2 are its targets, as for
        Max_SSIM) and, with a classifier, whether it reads one of their labels."""
        targets = np.stack([score.p1, score.p2], 1)
        ident = rank1_identification(decryption, self.gallery, targets, similarity=SIMILARITY)
        out = {"identification": {**ident.summary(), "similarity": SIMILARITY, "candidates_are": self.gallery_note}}
        if self.classifier is not None:
            labels = self.private_labels[targets]
            res = rank1(self.classifier(decryption), labels)
            out["labels"] = {**res.summary(), "classifier": self.classifier_note, "clean_accuracy": self.clean_accuracy}
        return out
