"""Training on encryptions: models, batched augmentation, loss, the recipe, evaluation."""
from ..data.augment import Augment, random_crop, random_flip
from .config import TrainConfig
from .evaluate import evaluate, evaluate_instahide, predict_proba
from .loss import soft_cross_entropy
from .models import MODELS, build_model, count_parameters
from .recipe import load_checkpoint, load_model, load_train_data, train

__all__ = [
    "Augment", "MODELS", "TrainConfig", "build_model", "count_parameters", "evaluate", "evaluate_instahide",
    "load_checkpoint", "load_model", "load_train_data", "predict_proba", "random_crop", "random_flip",
    "soft_cross_entropy", "train",
]
