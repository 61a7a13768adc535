"""Training on encryptions: loss (models, recipes and the trainer build on it)."""
from .loss import soft_cross_entropy

__all__ = ["soft_cross_entropy"]
