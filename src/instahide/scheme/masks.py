"""Step 4 of the scheme: the sign mask sigma in {-1, +1}^d, one independent sign per value.

Masks are stored packed, one bit per value (bit set = sign flipped), in rows of ``ceil(d / 8)``
bytes, little bit order (bit ``j`` of byte ``b`` is value ``8 * b + j``), so
``numpy.unpackbits(bits, axis=1, bitorder="little")[:, :d]`` reads them back. Applying a mask flips
the IEEE sign bit with an integer XOR: exact (``|e| == |m|`` bit for bit) and cheaper than a multiply.
"""
from __future__ import annotations

import numpy as np
import torch

from .rng import KeyGenerator

_SIGN_INT = {
    torch.float16: (torch.int16, -(1 << 15)),
    torch.bfloat16: (torch.int16, -(1 << 15)),
    torch.float32: (torch.int32, -(1 << 31)),
    torch.float64: (torch.int64, -(1 << 63)),
}
_WIDTH = {torch.int16: 2, torch.int32: 4, torch.int64: 8}  # bytes per word
_TABLES: dict = {}


def packed_width(d: int) -> int:
    """Bytes per packed mask row for ``d`` values."""
    return (int(d) + 7) // 8


def sample_mask_bits(n: int, d: int, generator: KeyGenerator) -> torch.Tensor:
    """Packed masks for ``n`` encryptions of ``d`` values: uint8 tensor ``(n, ceil(d / 8))``.

    Padding bits past ``d`` are zero.
    """
    width = packed_width(d)
    bits = torch.from_numpy(generator.random_bytes(n * width)).view(n, width)
    if d % 8:
        bits[:, -1] &= (1 << (d % 8)) - 1
    return bits


def _sign_table(dtype: torch.dtype, device) -> torch.Tensor:
    """``(256, 8)`` integer table: for every byte, the 8 sign words (0 or the sign bit) it encodes."""
    itype, sign = _SIGN_INT[dtype]
    key = (dtype, str(device))
    table = _TABLES.get(key)
    if table is None:
        byte = torch.arange(256).unsqueeze(1)
        bit = (byte >> torch.arange(8)) & 1
        table = (bit * sign).to(itype).to(device)
        _TABLES[key] = table
    return table


def sign_words(bits: torch.Tensor, d: int, dtype: torch.dtype) -> torch.Tensor:
    """The packed masks ``bits`` ``(n, ceil(d / 8))`` as ``(n, d)`` integer words of ``dtype``'s width:
    the sign bit where the value is flipped, 0 elsewhere (XOR them into the values' bits)."""
    itype, _ = _SIGN_INT[dtype]
    n = bits.shape[0]
    if bits.device.type == "cpu":  # numpy's unpackbits, then one shift into the sign bit: ~2x the table
        flips = torch.from_numpy(np.unpackbits(bits.numpy(), axis=1, count=d, bitorder="little"))
        return flips.to(itype).bitwise_left_shift_(8 * _WIDTH[itype] - 1)
    words = torch.index_select(_sign_table(dtype, bits.device), 0, bits.reshape(-1).int()).view(n, -1)
    return words if words.shape[1] == d else words[:, :d]


def apply_mask_(x: torch.Tensor, bits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Flip the sign of every value of ``x`` whose mask bit is set, in place or into ``out``.

    Args:
        x: float tensor ``(n, d)``, contiguous (float16, bfloat16, float32 or float64).
        bits: packed mask ``(n, ceil(d / 8))`` uint8 on the same device.
        out: optional contiguous tensor like ``x`` to write the masked values to (default: ``x``).
    Returns:
        ``out`` (``x`` when not given).
    """
    if x.dtype not in _SIGN_INT:
        raise TypeError(f"masks apply to floating-point images, got dtype {x.dtype}")
    n, d = x.shape
    if bits.shape != (n, packed_width(d)):
        raise ValueError(f"mask bits of shape {tuple(bits.shape)} for {n} rows of {d} values; "
                         f"expected ({n}, {packed_width(d)})")
    out = x if out is None else out
    itype = _SIGN_INT[x.dtype][0]
    torch.bitwise_xor(x.view(itype), sign_words(bits, d, x.dtype), out=out.view(itype))
    return out


def unpack_signs(bits: torch.Tensor, d: int) -> torch.Tensor:
    """The mask as signs: int8 tensor ``(n, d)`` of -1 (flipped) and +1."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    flipped = ((bits.unsqueeze(-1) >> shifts) & 1).view(bits.shape[0], -1)[:, :d]
    return (1 - 2 * flipped.to(torch.int8)).contiguous()


def pack_signs(signs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`unpack_signs`: signs ``(n, d)`` (negative = flipped) to packed bits."""
    flipped = (signs < 0).cpu().numpy()
    return torch.from_numpy(np.packbits(flipped, axis=1, bitorder="little")).to(signs.device)
