"""InstaHide beside the alternatives (``instahide compare``, docs/compare.md): vanilla training, Mixup,
InstaHide inside- and cross-dataset, DP-SGD through Opacus (optional extra ``dp``) and InstaHide with
DP-SGD on top, trained with the same network, budget and halves of the pool, then attacked under
three threat models: (a) gradient inversion of one client's update, (b) the challenge attacks on the
data handed over, (c) membership inference against the final model (loss threshold and LiRA).
Outputs: ``results.csv``, ``frontier.png``, ``report.md``.

Example::

    from instahide.compare import CompareConfig, run_compare
    result = run_compare(CompareConfig.make(out="runs/compare"))      # the digits defaults
    print(result.paths["md"])
"""
from .config import ACCOUNTANTS, DEFAULT_METHODS, CompareConfig, Method
from .report import NA, dominance, write_outputs
from .run import CompareResult, membership_measures, run_compare
from .threats import dp_gradient_inversion, gradient_threat, handed_over_threat
from .training import build_network, dp_noise, group_norm, member_splits, train_member_model

__all__ = ["ACCOUNTANTS", "DEFAULT_METHODS", "CompareConfig", "CompareResult", "Method", "NA", "build_network",
           "dominance", "dp_gradient_inversion", "dp_noise", "gradient_threat", "group_norm", "handed_over_threat",
           "member_splits", "membership_measures", "run_compare", "train_member_model", "write_outputs"]
