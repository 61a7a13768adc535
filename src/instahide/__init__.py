"""instahide: InstaHide (Huang, Song, Li, Arora, ICML 2020) for private collaborative learning,
and the tools to measure how much it hides.

InstaHide is not encryption in the cryptographic sense and has published attacks; see the README's
"What it hides" and the audit tools before relying on it.

The scheme::

    import instahide
    enc = instahide.encrypt(images, labels, k=4)               # (N, C, H, W), centred floats
    enc.images, enc.soft_labels

In a training loop: :class:`InstaHide` (a module), :class:`InstaHideLoader` (re-encrypts every epoch)
or :class:`InstaHideDataset` (encrypts each batch in DataLoader workers),
and a model with ``|x|`` first (:func:`sign_invariant`): the mask's signs carry nothing to learn from.
Data loaders live in :mod:`instahide.data`.
"""
__version__ = "0.1.0"  # first: submodules read it while the package loads

from .modules import InstaHide, InstaHideDataset, InstaHideLoader
from .scheme import (Encryption, Key, KeyGenerator, LegacyGenerator, UncentredInputError, apply_key,
                     encrypt, mix_labels, sample_coefficients, sample_key)
from .train.loss import soft_cross_entropy
from .train.models import SignInvariant, sign_invariant

__all__ = [
    "Encryption", "InstaHide", "InstaHideDataset", "InstaHideLoader", "Key", "KeyGenerator", "LegacyGenerator",
    "SignInvariant", "UncentredInputError", "apply_key", "encrypt", "mix_labels", "sample_coefficients",
    "sample_key", "sign_invariant", "soft_cross_entropy",
]
