"""Attacks on InstaHide and Mixup (docs/attacks.md), to measure how much a configuration hides; scipy
(``pip install "instahide[audit]"``) is imported where used.

Inputs are the challenge's arrays channels-first (encryptions ``(N, C, H, W)``, epoch-major rows;
labels ``(N, classes)``; checks in :mod:`instahide.attacks.inputs`); each attack returns one recovered
image per row (``decryption``). :func:`oracle_decode` (TRUE keys: the bound of the least-squares
family, not of every attack), :func:`demix`, :mod:`instahide.attacks.carlini` (:class:`CarliniConfig`), :func:`recover_seed` (``legacy`` keys),
:func:`invert_gradients` (a shared gradient), :func:`fusion_attack` (Luo et al.'s learned fusion of a
cluster's encryptions).

Example::

    found = recover_seed(encryption, label, n_private=100, k=6, num_private=2, seed_range=(0, 2**20))
"""
from .carlini import CarliniConfig, CarliniResult, carlini_attack
from .demix import DemixResult, demix
from .fusion import FusionNet, FusionResult, fusion_attack, train_fusion_network, true_groups
from .gradinv import (GradientInversionResult, gradient_distance, gradient_from_update, invert_gradients,
                      observed_gradient, recover_label_from_gradient, total_variation)
from .legacy import RecurringPublic, legacy_decode, public_slots, solve_recurring_public
from .oracle import OracleResult, oracle_decode
from .seed import SeedRecovery, mt19937_outputs, recover_seed, replay_keys, seed_candidates, seed_rate

__all__ = [
    "GradientInversionResult", "gradient_distance", "gradient_from_update", "invert_gradients",
    "observed_gradient", "recover_label_from_gradient", "total_variation",
    "CarliniConfig", "CarliniResult", "carlini_attack", "DemixResult", "OracleResult", "SeedRecovery", "demix",
    "FusionNet", "FusionResult", "fusion_attack", "train_fusion_network", "true_groups",
    "RecurringPublic", "legacy_decode", "public_slots", "solve_recurring_public",
    "mt19937_outputs", "oracle_decode", "recover_seed", "replay_keys", "seed_candidates", "seed_rate",
]
