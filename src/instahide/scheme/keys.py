"""The one-time key of every encryption, and how to store it.

A :class:`Key` holds everything drawn at random for ``N`` encryptions: the coefficients, the index of
the image in every slot (private or public), and the packed sign masks. With the key and the images,
:func:`instahide.scheme.encrypt.apply_key` recomputes the encryptions exactly. Keys are secrets: whoever
holds one can undo the mask and read off the mixture. They are saved as ``.npz`` without pickles.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_savez, load_plain_npz
from .masks import packed_width, unpack_signs

_FORMAT = "instahide-key/1"


@dataclass
class Key:
    """Key material of ``N`` encryptions of ``k`` slots.

    Attributes:
        coefficients: float32 ``(N, k)``, lambda of every slot (rows sum to 1).
        indices: int64 ``(N, k)``, the image in every slot; columns ``< num_private`` index the
            private set, the others the public pool. Column 0 is the encrypted image itself.
        num_private: number of private slots (``k`` for inside-dataset and Mixup).
        mask_bits: uint8 ``(N, ceil(d / 8))`` packed sign masks (see :mod:`~instahide.scheme.masks`),
            or None for Mixup (no mask).
        image_shape: ``(C, H, W)``.
        meta: the scheme parameters and the key's origin (``"os-entropy"``, ``"research-seed"`` or
            ``"legacy-seed"`` with the seed).
    """

    coefficients: torch.Tensor
    indices: torch.Tensor
    num_private: int
    mask_bits: torch.Tensor | None
    image_shape: tuple[int, int, int]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, k = self.coefficients.shape
        if self.indices.shape != (n, k):
            raise ValueError(f"key indices {tuple(self.indices.shape)} do not match coefficients {(n, k)}")
        if not 1 <= self.num_private <= k:
            raise ValueError(f"num_private={self.num_private} out of range for k={k}")
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if self.mask_bits is not None:
            want = (n, packed_width(int(np.prod(self.image_shape))))
            if tuple(self.mask_bits.shape) != want:
                raise ValueError(f"key mask of shape {tuple(self.mask_bits.shape)}, expected {want}")

    def __len__(self) -> int:
        return self.coefficients.shape[0]

    @property
    def k(self) -> int:
        return self.coefficients.shape[1]

    def signs(self) -> torch.Tensor | None:
        """The masks as int8 signs ``(N, C, H, W)`` (+1 or -1), or None for Mixup."""
        if self.mask_bits is None:
            return None
        d = int(np.prod(self.image_shape))
        return unpack_signs(self.mask_bits, d).view(len(self), *self.image_shape)

    def __getitem__(self, rows) -> "Key":
        """The keys of some encryptions (indices keep pointing into the same image sets)."""
        return replace(
            self,
            coefficients=self.coefficients[rows],
            indices=self.indices[rows],
            mask_bits=None if self.mask_bits is None else self.mask_bits[rows],
            meta=dict(self.meta),
        )

    def unmasked(self) -> "Key":
        """The same key without the mask: applying it gives the Mixup of the same images."""
        return replace(self, mask_bits=None, meta=dict(self.meta))

    @staticmethod
    def cat(keys: list["Key"]) -> "Key":
        """Concatenate the keys of several epochs (same scheme and image shape)."""
        if not keys:
            raise ValueError("no keys to concatenate")
        first = keys[0]
        for other in keys[1:]:
            if (other.k, other.num_private, other.image_shape) != (first.k, first.num_private, first.image_shape):
                raise ValueError("cannot concatenate keys of different schemes or image shapes")
            if (other.mask_bits is None) != (first.mask_bits is None):
                raise ValueError("cannot concatenate masked and unmasked keys")
        return replace(
            first,
            coefficients=torch.cat([x.coefficients.cpu() for x in keys]),
            indices=torch.cat([x.indices.cpu() for x in keys]),
            mask_bits=None if first.mask_bits is None else torch.cat([x.mask_bits.cpu() for x in keys]),
            meta=dict(first.meta, parts=len(keys)),
        )

    # -- storage ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the key to ``path`` (``.npz``) atomically (a temporary file, then a rename), readable
        by its owner only (mode 0600): whoever holds a key can undo the mask."""
        path = Path(path)
        arrays = {
            "format": np.frombuffer(_FORMAT.encode(), dtype=np.uint8),
            "coefficients": self.coefficients.cpu().numpy(),
            "indices": self.indices.cpu().numpy(),
            "num_private": np.array(self.num_private),
            "image_shape": np.array(self.image_shape),
            "meta": np.frombuffer(json.dumps(self.meta, default=str).encode(), dtype=np.uint8),
        }
        if self.mask_bits is not None:
            arrays["mask_bits"] = self.mask_bits.cpu().numpy()
        atomic_savez(path, arrays, secret=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Key":
        """Read a key written by :meth:`save`; refuses pickles and malformed files."""
        if Path(path).is_file() and not zipfile.is_zipfile(path):  # e.g. a .npy array, a truncated file
            raise ValueError(f"cannot read key file {path}: it is not an .npz archive")
        fields = load_plain_npz(path, "key file")
        if "format" not in fields or bytes(fields["format"]).decode(errors="replace") != _FORMAT:
            raise ValueError(f"{path} is not an instahide key file ({_FORMAT})")
        try:
            return cls(
                coefficients=torch.from_numpy(fields["coefficients"]),
                indices=torch.from_numpy(fields["indices"]),
                num_private=int(fields["num_private"]),
                mask_bits=torch.from_numpy(fields["mask_bits"]) if "mask_bits" in fields else None,
                image_shape=tuple(fields["image_shape"].tolist()),
                meta=json.loads(bytes(fields["meta"]).decode()),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"malformed key file {path}: {exc}") from exc
