"""Key generator, sign masks and partner sampling."""
import math
import pickle

import numpy as np
import pytest
import torch

from instahide.scheme import (KeyGenerator, apply_mask_, pack_signs, sample_mask_bits, sample_partners,
                              unpack_signs)


def test_entropy_generators_differ_and_seeded_ones_repeat():
    assert not np.array_equal(KeyGenerator.from_entropy().random_bytes(32),
                              KeyGenerator.from_entropy().random_bytes(32))
    a, b = KeyGenerator.from_seed(3), KeyGenerator.from_seed(3)
    assert np.array_equal(a.random_bytes(64), b.random_bytes(64))
    assert not np.array_equal(KeyGenerator.from_seed(3).random_bytes(64), KeyGenerator.from_seed(4).random_bytes(64))
    # successive calls give fresh output
    assert not np.array_equal(a.random_bytes(64), a.random_bytes(64))


def test_generator_origin_is_recorded_and_key_never_printed():
    g = KeyGenerator.from_entropy()
    assert g.is_private and g.origin == "os-entropy"
    assert not KeyGenerator.from_seed(1).is_private
    assert g._key.hex() not in repr(g)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(g)


def test_spawned_generators_are_independent():
    g = KeyGenerator.from_seed(0)
    a, b = g.spawn(0).random_bytes(64), g.spawn(1).random_bytes(64)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, KeyGenerator.from_seed(0).spawn(0).random_bytes(64))


def test_uniform_integers_and_half_normal_have_the_right_law():
    g = KeyGenerator.from_seed(5)
    u = g.uniform(200_000)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / 200_000)
    counts = np.bincount(g.integers(7, 70_000), minlength=7)
    chi2 = ((counts - 10_000) ** 2 / 10_000).sum()
    assert chi2 < 22.5  # chi-square, 6 degrees of freedom, p = 0.001
    z = g.half_normal(200_000)
    assert abs(z.mean() - math.sqrt(2 / math.pi)) < 0.005 and abs((z ** 2).mean() - 1) < 0.01


def test_bits_are_balanced_and_independent():
    bits = np.unpackbits(KeyGenerator.from_seed(6).random_bytes(100_000))
    assert abs(bits.mean() - 0.5) < 5 * 0.5 / math.sqrt(len(bits))
    s = 2.0 * bits - 1
    assert abs((s[:-1] * s[1:]).mean()) < 5 / math.sqrt(len(bits))


@pytest.mark.parametrize("d", [1, 7, 8, 13, 3072])
def test_mask_pack_unpack_roundtrip_matches_numpy(d):
    bits = sample_mask_bits(9, d, KeyGenerator.from_seed(0))
    assert bits.shape == (9, (d + 7) // 8) and bits.dtype == torch.uint8
    signs = unpack_signs(bits, d)
    ref = np.unpackbits(bits.numpy(), axis=1, bitorder="little")[:, :d]
    assert np.array_equal(signs.numpy(), 1 - 2 * ref.astype(np.int8))
    assert torch.equal(pack_signs(signs), bits)  # padding bits are zero


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_apply_mask_equals_multiplying_by_signs(dtype):
    x = torch.randn(6, 37).to(dtype)
    bits = sample_mask_bits(6, 37, KeyGenerator.from_seed(1))
    y = apply_mask_(x.clone(), bits)
    assert torch.equal(y, x * unpack_signs(bits, 37).to(dtype))
    assert torch.equal(y.abs(), x.abs())


def test_apply_mask_rejects_bad_shapes_and_dtypes():
    bits = sample_mask_bits(2, 16, KeyGenerator.from_seed(1))
    with pytest.raises(ValueError, match="mask bits of shape"):
        apply_mask_(torch.zeros(3, 16), bits)
    with pytest.raises(TypeError, match="floating-point"):
        apply_mask_(torch.zeros(2, 16, dtype=torch.int32), bits)


def test_partners_are_distinct_and_exclude_self():
    idx = sample_partners(5000, 6, generator=KeyGenerator.from_seed(2)).numpy()
    assert (idx[:, 0] == np.arange(5000)).all()
    assert all(len(set(row)) == 6 for row in idx)


def test_tight_partner_sets_terminate_and_are_permutations():
    # n == k: every row must be a permutation of all images, with itself first
    idx = sample_partners(6, 6, generator=KeyGenerator.from_seed(3)).numpy()
    assert (np.sort(idx, axis=1) == np.arange(6)).all() and (idx[:, 0] == np.arange(6)).all()


def test_private_partners_are_uniform():
    n = 50
    idx = sample_partners(n, 4, generator=KeyGenerator.from_seed(4), ).numpy()
    idx = np.concatenate([sample_partners(n, 4, generator=KeyGenerator.from_seed(s)).numpy() for s in range(400)])
    # the partner offset (j - i) mod n is uniform over 1..n-1
    off = (idx[:, 1:] - idx[:, :1]) % n
    counts = np.bincount(off.ravel(), minlength=n)
    assert counts[0] == 0
    expected = off.size / (n - 1)
    chi2 = ((counts[1:] - expected) ** 2 / expected).sum()
    assert chi2 < 85.4  # chi-square, 48 degrees of freedom, p = 0.001


def test_public_indices_cover_the_whole_pool_uniformly():
    m = 1000
    idx = sample_partners(20000, 6, num_private=2, pool_size=m, generator=KeyGenerator.from_seed(5)).numpy()
    pub = idx[:, 2:]
    assert pub.min() == 0 and pub.max() == m - 1
    assert all(len(set(r)) == 4 for r in pub)
    counts = np.bincount(pub.ravel(), minlength=m)
    assert (counts > 0).all()
    expected = pub.size / m
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 1143  # chi-square, 999 degrees of freedom, p = 0.001


def test_too_few_images_is_a_clear_error():
    with pytest.raises(ValueError, match="too few images: 3 private image"):
        sample_partners(3, 4, generator=KeyGenerator.from_seed(0))
    with pytest.raises(ValueError, match="too few public images"):
        sample_partners(10, 6, num_private=2, pool_size=3, generator=KeyGenerator.from_seed(0))


# -- the ChaCha20 stream of OS-entropy keys, against a plain-Python RFC 8439 reference --------------
def _chacha_block(key: bytes, iv: bytes, counter: int) -> bytes:
    """One 64-byte ChaCha20 block (RFC 8439), state words 12..15 = the 16-byte IV, counter in word 12."""
    import struct

    def rotl(v, c):
        return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))

    def qr(s, a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 16)  # noqa: E702
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 12)  # noqa: E702
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 8)  # noqa: E702
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 7)  # noqa: E702

    words = list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key)) \
        + list(struct.unpack("<4I", iv))
    words[12] = (words[12] + counter) & 0xFFFFFFFF
    s = list(words)
    for _ in range(10):
        qr(s, 0, 4, 8, 12), qr(s, 1, 5, 9, 13), qr(s, 2, 6, 10, 14), qr(s, 3, 7, 11, 15)
        qr(s, 0, 5, 10, 15), qr(s, 1, 6, 11, 12), qr(s, 2, 7, 8, 13), qr(s, 3, 4, 9, 14)
    return struct.pack("<16I", *[(x + y) & 0xFFFFFFFF for x, y in zip(s, words)])


def test_plain_chacha_reference_matches_rfc8439_vector():
    # RFC 8439, section 2.3.2: key 00..1f, counter 1, nonce 00:00:00:09:00:00:00:4a:00:00:00:00
    iv = (1).to_bytes(4, "little") + bytes.fromhex("000000090000004a00000000")
    out = _chacha_block(bytes(range(32)), iv, 0)
    assert out[:16].hex() == "10f1e7e4d13b5915500fdd1fa32071c4"


def test_entropy_keys_use_the_chacha20_stream_exactly_as_documented():
    import hashlib
    import struct

    pytest.importorskip("cryptography")
    from instahide.scheme import rng

    assert KeyGenerator.from_entropy().stream == "chacha20"
    assert KeyGenerator.from_seed(0).stream == "shake256"  # a seed gives the same keys everywhere
    key = bytes(range(100, 132))
    g = KeyGenerator(key, stream="chacha20")
    sub = hashlib.shake_256(rng._CHACHA_DOMAIN + key).digest(32)
    for draw, n in ((0, 200), (1, 64), (2, 7)):
        iv = bytes(8) + struct.pack("<Q", draw)
        ref = b"".join(_chacha_block(sub, iv, j) for j in range(-(-n // 64)))[:n]
        assert g.random_bytes(n).tobytes() == ref
    assert g.spawn(0).stream == "chacha20"
    child = g.spawn(0).random_bytes(32).tobytes()
    assert child != KeyGenerator(key, stream="chacha20").random_bytes(32).tobytes()


def test_without_cryptography_entropy_keys_fall_back_to_shake(monkeypatch):
    from instahide.scheme import rng

    monkeypatch.setattr(rng, "_CHACHA", None)
    g = KeyGenerator.from_entropy()
    assert g.stream == "shake256" and len(g.random_bytes(16)) == 16
    with pytest.raises(ImportError, match="cryptography"):
        KeyGenerator(bytes(32), stream="chacha20")
    with pytest.raises(ValueError, match="stream must be one of"):
        KeyGenerator(bytes(32), stream="aes")


@pytest.mark.parametrize("index,exc,match", [
    (5.9, TypeError, r"spawn\(index\): index must be an integer, got 5.9 \(float\)"),  # was spawn(5), silently
    (True, TypeError, r"index must be an integer, got True \(bool\)"),
    ("5", TypeError, r"index must be an integer"),
    (-1, ValueError, r"index must be in \[0, 2\*\*64\), got -1"),                 # was a struct.error
    (2 ** 64, ValueError, r"index must be in \[0, 2\*\*64\)"),
])
def test_spawn_refuses_an_index_that_is_not_a_non_negative_64_bit_integer(index, exc, match):
    for g in (KeyGenerator.from_seed(0), KeyGenerator.from_entropy()):
        with pytest.raises(exc, match=match):
            g.spawn(index)


def test_spawn_takes_numpy_integers_and_the_whole_64_bit_range():
    g = KeyGenerator.from_seed(0)
    assert np.array_equal(g.spawn(np.int64(5)).random_bytes(16), g.spawn(5).random_bytes(16))
    assert not np.array_equal(g.spawn(2 ** 64 - 1).random_bytes(16), g.spawn(0).random_bytes(16))
