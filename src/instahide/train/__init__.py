"""Training on encryptions: models, loss, the engine (one loop, one run folder), the recipe, evaluation.

The training loop is :func:`instahide.train.engine.train_epoch`; the recipe of ``instahide train``
(and its torchrun mode) is :func:`instahide.train.recipe.train`; private sets larger than memory are
encrypted batch by batch in ``DataLoader`` workers by :mod:`instahide.train.loader`.
"""
from ..data.augment import Augment, random_crop, random_flip
from ..scheme.config import SchemeConfig
from .config import TrainConfig
from .engine import Progress, RunFolder, derive_seed, load_weights, make_optimizer, train_epoch
from .evaluate import evaluate, evaluate_instahide, predict_proba
from .loss import soft_cross_entropy
from .loader import EncryptedBatches, PixelSource, encrypt_rows
from .models import MODELS, build_model, count_parameters
from .recipe import (StreamData, TrainData, load_checkpoint, load_model, load_stream_data, load_train_data, pick_subset,
                     train)

__all__ = [
    "Augment", "EncryptedBatches", "MODELS", "PixelSource", "Progress", "RunFolder", "SchemeConfig", "StreamData",
    "TrainConfig", "TrainData", "build_model", "count_parameters", "derive_seed", "encrypt_rows", "evaluate",
    "evaluate_instahide", "load_checkpoint", "load_model", "load_stream_data", "load_train_data", "load_weights",
    "make_optimizer", "pick_subset", "predict_proba", "random_crop", "random_flip", "soft_cross_entropy", "train",
    "train_epoch",
]
