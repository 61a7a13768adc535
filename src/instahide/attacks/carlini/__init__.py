"""Carlini et al.'s attack on InstaHide (IEEE S&P 2021; SPEC 5.B), every step a function of its own.

1. work on ``|e|`` (the mask removed exactly);
2. :func:`train_pair_network`: a siamese pair-similarity network (:class:`PairNet`) trained on the
   attacker's OWN encryptions made with this library (disjoint images, own public pool, the attacked
   challenge's public parameters); save/load with :func:`save_pair_network` / :func:`load_pair_network`;
3. :func:`similarity_graph`: all ``N^2`` pair probabilities, class-impossible pairs masked;
4. :func:`grow_clusters`: dense clusters, one per private image;
5. :func:`assign_rows` / :func:`refine_assignment`: each row to its ``num_private`` clusters,
   coefficients read off the leaked labels;
6. :func:`reconstruct_oracle` (the oracle solver on the estimated keys) or :func:`reconstruct_gd`
   (Carlini's gradient descent), the global sign from the attacker's own data prior
   (:func:`choose_sign`);
7. optional colour correction (:func:`fit_colour_correction`).

:func:`carlini_attack` runs them all and reports each step's accuracy when given the truth (which it
never uses to steer). Measured numbers: docs/carlini.md.

Example::

    from instahide.attacks.carlini import carlini_attack
    res = carlini_attack(enc, label, n_private=20, k=6, num_private=2, attacker_images=own.images,
                         attacker_labels=own.labels, attacker_public=own_pool.images, train_steps=300)
    res.decryption.shape   # (N, H, W, C)
"""
from .attack import RECONSTRUCTIONS, CarliniResult, carlini_attack, scheme_params
from .graph import (assign_rows, assignment_accuracy, cluster_affinity, cluster_metrics, compatibility,
                    grow_clusters, label_support, pair_metrics, refine_assignment, roc_auc, similarity_graph,
                    true_member_sets)
from .network import (EncryptionSampler, PairNet, PairNetConfig, SignNet, embed, load_pair_network,
                      save_pair_network, train_pair_network, train_sign_network)
from .reconstruct import (ColourNet, apply_colour_correction, choose_sign, estimated_keys, fit_colour_correction,
                          fit_loss, public_mass, reconstruct_gd, reconstruct_oracle)

__all__ = [
    "CarliniResult", "carlini_attack", "RECONSTRUCTIONS", "scheme_params",
    "PairNet", "PairNetConfig", "SignNet", "EncryptionSampler", "train_pair_network", "train_sign_network",
    "save_pair_network", "load_pair_network", "embed",
    "label_support", "compatibility", "similarity_graph", "grow_clusters", "cluster_affinity", "assign_rows",
    "refine_assignment", "pair_metrics", "cluster_metrics", "assignment_accuracy", "true_member_sets", "roc_auc",
    "public_mass", "estimated_keys", "reconstruct_oracle", "reconstruct_gd", "choose_sign", "fit_loss",
    "ColourNet", "fit_colour_correction", "apply_colour_correction",
]
