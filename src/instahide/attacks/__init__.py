"""Attacks on InstaHide and Mixup (docs/attacks.md), to measure how much a configuration hides.

Needs scipy (``pip install "instahide[audit]"``), imported inside the functions that use it.

All attacks take the challenge's arrays channels-first: encryptions ``(N, C, H, W)``, rows
epoch-major (row ``t * n + i`` hides private image ``i`` in slot 1 in epoch ``t``), leaked labels
``(N, classes)``, and return one recovered image per row (a "decryption", ``(N, C, H, W)``).
Their input checks live in :mod:`instahide.attacks.inputs`.

:func:`oracle_decode` (the TRUE keys: an upper bound), :func:`demix` (Mixup without the mask),
:mod:`instahide.attacks.carlini` (Carlini et al.; every option in one
:class:`~instahide.attacks.carlini.CarliniConfig`), :func:`recover_seed` (``legacy`` keys) and
:func:`invert_gradients` (a shared gradient; recovers encryptions, not private images).

Example::

    from instahide.attacks import recover_seed
    found = recover_seed(encryption, label, n_private=100, k=6, num_private=2, seed_range=(0, 2**20))
    if found is not None:
        decryption = found.decryption
"""
from .carlini import CarliniConfig, CarliniResult, carlini_attack
from .demix import DemixResult, demix
from .gradinv import (GradientInversionResult, gradient_distance, gradient_from_update, invert_gradients,
                      observed_gradient, recover_label_from_gradient, total_variation)
from .oracle import OracleResult, oracle_decode
from .seed import SeedRecovery, mt19937_outputs, recover_seed, replay_keys, seed_candidates, seed_rate

__all__ = [
    "GradientInversionResult", "gradient_distance", "gradient_from_update", "invert_gradients",
    "observed_gradient", "recover_label_from_gradient", "total_variation",
    "CarliniConfig", "CarliniResult", "carlini_attack", "DemixResult", "OracleResult", "SeedRecovery", "demix",
    "mt19937_outputs", "oracle_decode", "recover_seed", "replay_keys", "seed_candidates", "seed_rate",
]
