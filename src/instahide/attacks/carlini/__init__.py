"""Carlini et al.'s attack on InstaHide (IEEE S&P 2021; docs/attacks.md, "Carlini et al."; measured in
docs/carlini.md): :func:`carlini_attack` runs the steps (:mod:`.network`, :mod:`.graph`, :mod:`.reconstruct`)
with every option in one :class:`CarliniConfig` (presets ``tiny``, ``cpu``, ``full``).

Example::

    from instahide.attacks.carlini import CarliniConfig, carlini_attack
    res = carlini_attack(enc, label, n_private=20, k=6, num_private=2, attacker_images=own.images,
                         attacker_labels=own.labels, attacker_public=own_pool.images,
                         config=CarliniConfig.preset("cpu"))
    res.decryption.shape   # (N, C, H, W)
"""
from .attack import CarliniResult, StepCache, carlini_attack, run_steps, scheme_params, score_steps
from .config import PRESETS, RECONSTRUCTIONS, CarliniConfig
from .graph import (assign_rows, assignment_accuracy, cluster_affinity, cluster_metrics, compatibility,
                    grow_clusters, label_support, pair_metrics, refine_assignment, roc_auc, similarity_graph,
                    true_member_sets)
from .network import (EncryptionSampler, PairNet, PairNetConfig, SignNet, embed, load_pair_network,
                      save_pair_network, train_pair_network, train_sign_network)
from .reconstruct import (ColourNet, apply_colour_correction, choose_sign, estimated_keys, fit_colour_correction,
                          fit_loss, public_mass, reconstruct_gd, reconstruct_oracle)

__all__ = [
    "CarliniResult", "carlini_attack", "CarliniConfig", "PRESETS", "RECONSTRUCTIONS", "scheme_params",
    "run_steps", "score_steps", "StepCache",
    "PairNet", "PairNetConfig", "SignNet", "EncryptionSampler", "train_pair_network", "train_sign_network",
    "save_pair_network", "load_pair_network", "embed",
    "label_support", "compatibility", "similarity_graph", "grow_clusters", "cluster_affinity", "assign_rows",
    "refine_assignment", "pair_metrics", "cluster_metrics", "assignment_accuracy", "true_member_sets", "roc_auc",
    "public_mass", "estimated_keys", "reconstruct_oracle", "reconstruct_gd", "choose_sign", "fit_loss",
    "ColourNet", "fit_colour_correction", "apply_colour_correction",
]
