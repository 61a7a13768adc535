"""Attacks on InstaHide and Mixup (SPEC section 5), to measure how much a configuration hides.

Needs scipy (``pip install "instahide[audit]"``), imported inside the functions that use it.

All attacks take the challenge format: encryptions ``(N, H, W, C)`` channels-last, rows
epoch-major (row ``t * n + i`` hides private image ``i`` in slot 1 in epoch ``t``), leaked labels
``(N, classes)``, and return one recovered image per row (a "decryption", ``(N, H, W, C)``).

* :func:`oracle_decode` (5.E): the reconstruction step given the TRUE assignment and
  coefficients; the upper bound for attacks of the Carlini et al. family.
* :func:`demix` (5.A): clustering + least squares on Mixup without the mask, from the encryptions
  and labels alone; fails once the mask is on.
* :func:`invert_gradients` (5.D): recovers a training batch from a shared gradient (Geiping et al.);
  against InstaHide it recovers the encryptions, not the private images (docs/gradient_inversion.md).
* :mod:`instahide.attacks.carlini` (5.B): Carlini et al.'s pipeline, every step its own function
  (docs/carlini.md).
* :func:`recover_seed` (5.C): brute-forces the seed of ``legacy`` keys, replays them, undoes the
  masks and solves for the images; has nothing to search against the default keys.

Example::

    from instahide.attacks import recover_seed
    found = recover_seed(encryption, label, n_private=100, k=6, num_private=2, seed_range=(0, 2**20))
    if found is not None:
        decryption = found.decryption
"""
from .carlini import CarliniResult, carlini_attack
from .demix import DemixResult, demix
from .gradinv import (GradientInversionResult, MatchResult, gradient_distance, gradient_from_update, invert_gradients,
                      match_batches, observed_gradient, recover_label_from_gradient, total_variation)
from .oracle import OracleResult, oracle_decode
from .seed import SeedRecovery, mt19937_outputs, recover_seed, replay_keys, seed_candidates, seed_rate

__all__ = [
    "GradientInversionResult", "MatchResult", "gradient_distance", "gradient_from_update", "invert_gradients",
    "match_batches", "observed_gradient", "recover_label_from_gradient", "total_variation",
    "CarliniResult", "carlini_attack", "DemixResult", "OracleResult", "SeedRecovery", "demix", "mt19937_outputs", "oracle_decode",
    "recover_seed", "replay_keys", "seed_candidates", "seed_rate",
]
