"""Audit a configuration: build a challenge from it and the user's own images, run the attacks that
apply, and report the measured leakage (``instahide audit``); and the one interface over the attacks
behind ``instahide attack NAME``.

Example::

    from instahide.audit import AuditConfig, run_audit
    result = run_audit(AuditConfig.make(dataset="digits", n_private=20, T=20), "runs/audit")
    print(result.paths["md"])
"""
from .attacks import (ATTACKS, FUSION_STEPS, FUSION_TIME_S, AttackOutcome, attack_names, load_attacker_public,
                      run_attack)
from .run import DEFAULT_ATTACKS, AuditConfig, AuditResult, load_groups, run_audit, save_outcome

__all__ = ["ATTACKS", "AttackOutcome", "attack_names", "run_attack", "AuditConfig", "AuditResult", "run_audit",
           "save_outcome", "load_groups", "load_attacker_public", "DEFAULT_ATTACKS", "FUSION_STEPS", "FUSION_TIME_S"]
