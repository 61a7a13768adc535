"""The InstaHide scheme: coefficients, partners, masks, keys, and encryption (docs/scheme.md)."""
from .coefficients import check_bounds, sample_coefficients
from .encrypt import (MODES, Encryption, UncentredInputError, apply_key, check_images, encrypt,
                      mix_labels, sample_key)
from .keys import Key
from .legacy import LegacyGenerator, legacy_coefficients, legacy_key
from .masks import apply_mask_, pack_signs, sample_mask_bits, unpack_signs
from .partners import sample_partners
from .rng import KeyGenerator, resolve_generator
from .stored import Uint8Images

__all__ = [
    "MODES", "Encryption", "Key", "KeyGenerator", "LegacyGenerator", "UncentredInputError",
    "apply_key", "apply_mask_", "check_bounds", "check_images", "encrypt",
    "legacy_coefficients", "legacy_key", "mix_labels", "pack_signs", "resolve_generator",
    "sample_coefficients", "sample_key", "sample_mask_bits", "sample_partners", "unpack_signs", "Uint8Images",
]
