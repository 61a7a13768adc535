"""encrypt / apply_key / keys against plain per-image loops written from docs/scheme.md, "The scheme"."""
import math

import numpy as np
import pytest
import torch

import instahide
from instahide.scheme import Key, LegacyGenerator, UncentredInputError, apply_key, encrypt
from instahide.scheme.encrypt import CENTRED_MIN_NEGATIVE, CENTRED_MIN_SHARE, MAX_CLASSES, check_centred


def centred(n, c=3, h=8, w=8, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def plain_loop_encrypt(private, labels_onehot, key, public=None):
    """docs/scheme.md ("The scheme"), one image at a time, from the key's draws (coefficients, slots, signs)."""
    n, k = key.coefficients.shape
    signs = key.signs()
    enc = torch.zeros((n, *private.shape[1:]), dtype=torch.float64)
    soft = torch.zeros((n, labels_onehot.shape[1]), dtype=torch.float64)
    for i in range(n):
        m = torch.zeros(private.shape[1:], dtype=torch.float64)
        for j in range(k):
            lam = float(key.coefficients[i, j])
            src = private if j < key.num_private else public
            m += lam * src[int(key.indices[i, j])].double()
            if j < key.num_private:
                soft[i] += lam * labels_onehot[int(key.indices[i, j])].double()
        enc[i] = m if signs is None else signs[i].double() * m
    return enc, soft


def check_key_follows_spec(key, n, k, upper, dom=None, pool=None):
    lam, idx = key.coefficients.double(), key.indices
    assert torch.allclose(lam.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6)
    if k > 1:
        assert lam.max() <= upper + 1e-6
    if dom is not None:
        assert (lam[:, :key.num_private].sum(1) >= dom - 1e-6).all()
    assert torch.equal(idx[:, 0], torch.arange(n))
    for row in idx.tolist():
        priv, pub = row[:key.num_private], row[key.num_private:]
        assert len(set(priv)) == len(priv) and len(set(pub)) == len(pub)
        assert all(0 <= p < n for p in priv) and all(0 <= q < (pool or 0) for q in pub)


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_inside_dataset_matches_plain_loop(k):
    x, y = centred(40), torch.arange(40) % 10
    enc = encrypt(x, y, k=k, num_classes=10, seed=1, return_key=True)
    check_key_follows_spec(enc.key, 40, k, 0.65)
    ref, ref_soft = plain_loop_encrypt(x, torch.nn.functional.one_hot(y, 10), enc.key)
    assert torch.allclose(enc.images.double(), ref, atol=1e-5)
    assert torch.allclose(enc.soft_labels.double(), ref_soft, atol=1e-6)
    assert torch.allclose(enc.soft_labels.sum(1), torch.ones(40), atol=1e-6)


@pytest.mark.parametrize("k,num_private", [(6, 2), (4, 2), (6, 3)])
def test_cross_dataset_matches_plain_loop(k, num_private):
    x, y, pub = centred(30), torch.arange(30) % 10, centred(25, seed=1)
    enc = encrypt(x, y, k=k, public=pub, num_private=num_private, dom=0.3, num_classes=10, seed=2,
                  return_key=True)
    check_key_follows_spec(enc.key, 30, k, 0.65, dom=0.3, pool=25)
    ref, ref_soft = plain_loop_encrypt(x, torch.nn.functional.one_hot(y, 10), enc.key, pub)
    assert torch.allclose(enc.images.double(), ref, atol=1e-5)
    assert torch.allclose(enc.soft_labels.double(), ref_soft, atol=1e-6)
    # soft labels sum to the private coefficients' total (not renormalised, as in the reference)
    priv = enc.key.coefficients[:, :num_private].sum(1)
    assert torch.allclose(enc.soft_labels.sum(1), priv, atol=1e-6) and (priv < 1).all()


def test_abs_encryption_equals_abs_mixup_exactly():
    x, y = centred(64), torch.arange(64) % 10
    hidden = encrypt(x, y, k=4, seed=3, return_key=True)
    mixed = encrypt(x, y, k=4, seed=3, mode="mixup", return_key=True)
    assert torch.equal(hidden.key.coefficients, mixed.key.coefficients)
    assert torch.equal(hidden.images.abs(), mixed.images.abs())
    assert mixed.key.mask_bits is None and mixed.key.signs() is None
    assert torch.equal(hidden.images, mixed.images * hidden.key.signs())


def test_mask_is_balanced_and_independent_across_channels():
    x = centred(200, c=3, h=16, w=16)
    signs = encrypt(x, k=4, seed=4, return_key=True).key.signs().double()
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    m = signs.numel()
    assert abs(signs.mean()) < 5 / math.sqrt(m)
    per_pos = 200 * 16 * 16
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        corr = (signs[:, a] * signs[:, b]).mean()
        assert abs(corr) < 5 / math.sqrt(per_pos)
    # neighbouring pixels and successive encryptions are independent too
    assert abs((signs[:, :, :, 1:] * signs[:, :, :, :-1]).mean()) < 5 / math.sqrt(m)
    assert abs((signs[1:] * signs[:-1]).mean()) < 5 / math.sqrt(m)


def test_seed_reproduces_and_default_keys_are_fresh():
    x = centred(16)
    a, b = encrypt(x, k=4, seed=9).images, encrypt(x, k=4, seed=9).images
    assert torch.equal(a, b)
    assert not torch.equal(encrypt(x, k=4).images, encrypt(x, k=4).images)
    key = encrypt(x, k=4, return_key=True).key
    assert key.meta["origin"] == "os-entropy" and "seed" not in key.meta
    assert encrypt(x, k=4, seed=9, return_key=True).key.meta["origin"] == "research-seed"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype):
    x = centred(32)
    ref = encrypt(x, k=4, seed=5, return_key=True)
    enc = encrypt(x.to(dtype), k=4, seed=5)
    assert enc.images.dtype == dtype
    tol = {torch.float16: 1e-2, torch.bfloat16: 6e-2, torch.float64: 1e-6}[dtype]
    assert torch.allclose(enc.images.float(), ref.images, atol=tol, rtol=tol)


def test_apply_key_reproduces_encryption_and_keys_roundtrip(tmp_path):
    x, pub = centred(20), centred(12, seed=1)
    enc = encrypt(x, k=6, public=pub, seed=6, return_key=True)
    path = enc.key.save(tmp_path / "key.npz")
    assert path.stat().st_mode & 0o777 == 0o600           # a key is a secret: owner only
    key = Key.load(path)
    assert key.meta == enc.key.meta
    assert torch.equal(apply_key(x, key, public=pub), enc.images)
    assert torch.equal(key[3:5].coefficients, enc.key.coefficients[3:5])


def test_key_file_refuses_pickles_and_foreign_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an instahide key file"):
        Key.load(tmp_path / "other.npz")
    np.savez(tmp_path / "evil.npz", format=np.frombuffer(b"instahide-key/1", np.uint8),
             coefficients=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="cannot read key file"):
        Key.load(tmp_path / "evil.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "other.npz").read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot read key file"):
        Key.load(tmp_path / "cut.npz")


def test_uncentred_images_are_refused_unless_allowed():
    x = torch.rand(10, 3, 8, 8)  # [0, 1]: the mask would hide nothing
    with pytest.raises(UncentredInputError, match="not centred.*allow_uncentred=True"):
        encrypt(x, k=4)
    enc = encrypt(x, k=4, allow_uncentred=True, seed=0)
    assert (enc.images < 0).any()
    encrypt(x, k=4, mode="mixup")  # Mixup has no mask to defeat
    with pytest.raises(UncentredInputError, match="public are not centred"):
        encrypt(centred(10), k=6, public=torch.rand(10, 3, 8, 8))


@pytest.mark.parametrize("bad,match,exc", [
    (torch.randn(3, 8, 8), r"Invalid images shape, expected \(N, C, H, W\). Got: \(3, 8, 8\) \(for one image", ValueError),
    (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), r"must be floating point, got dtype torch.uint8; convert", TypeError),
    ([[1.0]], r"must be a torch.Tensor", TypeError),
    (torch.randn(0, 3, 8, 8), r"too few images: images is empty", ValueError),
    (torch.randn(4, 0, 8, 8), r"images of shape \(4, 0, 8, 8\) hold no values: every image needs C, H", ValueError),
    (torch.randn(4, 3, 0, 8), r"images of shape \(4, 3, 0, 8\) hold no values", ValueError),
    (torch.randn(4, 3, 8, 0), r"images of shape \(4, 3, 8, 0\) hold no values", ValueError),
])
def test_bad_images(bad, match, exc):
    with pytest.raises(exc, match=match):
        encrypt(bad, k=1)


def test_nan_is_named():
    x = centred(10)
    x[7, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"images contain NaN or Inf in 1 image\(s\), first rows \[7\]"):
        encrypt(x, k=4)
    pub = centred(10, seed=1)
    pub[2] = float("inf")
    with pytest.raises(ValueError, match=r"public contain NaN or Inf"):
        # every pool image is used (10 private x 4 public slots out of 10), so row 2 is mixed in
        encrypt(centred(30), k=6, public=pub, seed=0)


def test_bad_scheme_arguments():
    x = centred(10)
    with pytest.raises(ValueError, match="too few images: 3 private image"):
        encrypt(centred(3), k=4)
    with pytest.raises(ValueError, match="unknown mode 'hide'"):
        encrypt(x, mode="hide")
    with pytest.raises(ValueError, match="needs a public pool"):
        encrypt(x, k=4, num_private=2)
    with pytest.raises(ValueError, match="public images have shape"):
        encrypt(x, k=4, public=torch.randn(10, 3, 4, 4))
    with pytest.raises(ValueError, match="leaves no public slot"):
        encrypt(x, k=2, public=centred(10))
    with pytest.raises(ValueError, match=r"10 images but 9 labels"):
        encrypt(x, torch.arange(9), k=2)
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=3\)"):
        encrypt(x, torch.arange(10), k=2, num_classes=3)
    with pytest.raises(ValueError, match="infeasible bound upper=0.2"):
        encrypt(x, k=4, upper=0.2)
    with pytest.raises(ValueError, match="either seed or generator"):
        encrypt(x, k=2, seed=1, generator=instahide.KeyGenerator.from_seed(1))


def reference_mixup_data(x, y_onehot, x_help, k, upper, dom, mode, num_private):
    """The reference code's mixup_data, from its published description (docs/scheme.md, the
    scheme and the defects of the reference code):
    global numpy/torch generators, per-row rejection loop, one permutation per slot, n-row public
    window, torch.randint mask."""
    n = x.shape[0]
    lams = np.random.normal(0, 1, size=(n, k))
    for i in range(n):
        lams[i] = np.abs(lams[i]) / np.sum(np.abs(lams[i]))
        if k > 1:
            while lams[i].max() > upper or (x_help is not None and lams[i][0] + lams[i][1] < dom):
                lams[i] = np.random.normal(0, 1, size=(1, k))
                lams[i] = np.abs(lams[i]) / np.sum(np.abs(lams[i]))
    lams = torch.from_numpy(lams).float()
    mixed = lams[:, 0].view(-1, 1, 1, 1) * x
    ys = lams[:, 0:1] * y_onehot
    for i in range(1, k):
        index = torch.randperm(n)
        if i < num_private:
            mixed = mixed + lams[:, i].view(-1, 1, 1, 1) * x[index]
            ys = ys + lams[:, i:i + 1] * y_onehot[index]
        else:
            mixed = mixed + lams[:, i].view(-1, 1, 1, 1) * x_help[:n][index]
    if mode == "instahide":
        sign = torch.randint(2, size=list(x.shape)) * 2.0 - 1
        mixed = mixed * sign
    return mixed, ys


@pytest.mark.parametrize("k,cross,mode", [(4, False, "instahide"), (6, True, "instahide"), (4, False, "mixup")])
def test_legacy_replays_the_reference_code(k, cross, mode):
    x, y = centred(50), torch.arange(50) % 10
    pub = centred(80, seed=1) if cross else None
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    try:
        np.random.seed(1234)
        torch.manual_seed(1234)
        ref, ref_soft = reference_mixup_data(x, torch.nn.functional.one_hot(y, 10).float(), pub, k, 0.65, 0.3,
                                             mode, 2 if cross else k)
    finally:
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
    enc = encrypt(x, y, k=k, public=pub, num_classes=10, mode=mode, legacy=True, seed=1234, return_key=True)
    assert torch.allclose(enc.images, ref, atol=1e-6)
    assert torch.allclose(enc.soft_labels, ref_soft, atol=1e-6)
    assert enc.key.meta["origin"] == "legacy-seed" and enc.key.meta["seed"] == 1234
    if cross:
        assert enc.key.indices[:, 2:].max() < 50  # the n-row public window (defect 1)


def test_legacy_has_fixed_points_and_fixed_default_does_not():
    x = centred(100)
    legacy = encrypt(x, k=4, legacy=True, seed=0, return_key=True).key.indices
    fixed = (legacy[:, 1:] == legacy[:, :1]).any(1).sum()
    assert fixed > 0  # about 3 expected: 3 permutations with one fixed point each on average
    new = encrypt(x, k=4, return_key=True).key.indices
    assert not (new[:, 1:] == new[:, :1]).any()


def test_legacy_generator_continues_and_seed_is_32_bit():
    x = centred(20)
    g = LegacyGenerator(5)
    a = encrypt(x, k=4, legacy=True, generator=g).images
    b = encrypt(x, k=4, legacy=True, generator=g).images
    assert not torch.equal(a, b)
    assert torch.equal(a, encrypt(x, k=4, legacy=True, seed=5).images)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        encrypt(x, k=4, legacy=True, seed=2 ** 32)
    with pytest.raises(TypeError, match="legacy=True"):
        encrypt(x, k=4, legacy=True, generator=instahide.KeyGenerator.from_seed(1))


def test_out_buffer_is_used_and_checked():
    x = centred(12)
    out = torch.empty_like(x)
    enc = encrypt(x, k=4, seed=0, out=out)
    assert enc.images.data_ptr() == out.data_ptr()
    with pytest.raises(ValueError, match="out must be a contiguous"):
        encrypt(x, k=4, out=torch.empty(11, 3, 8, 8))


def test_chunking_does_not_change_the_result():
    x, pub = centred(37), centred(20, seed=1)
    key = encrypt(x, k=6, public=pub, seed=1, return_key=True).key
    whole = apply_key(x, key, public=pub, chunk_rows=1000)
    assert torch.equal(apply_key(x, key, public=pub, chunk_rows=5), whole)
    assert torch.equal(apply_key(x, key, public=pub, chunk_rows=1), whole)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x, pub = centred(64), centred(40, seed=1)
    key = encrypt(x, k=6, public=pub, seed=2, return_key=True).key
    cpu = apply_key(x, key, public=pub)
    gpu = apply_key(x.cuda(), key, public=pub.cuda())
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-5)
    enc = encrypt(x.cuda().half(), torch.arange(64).cuda() % 10, k=4, num_classes=10)
    assert enc.images.dtype == torch.float16 and enc.soft_labels.is_cuda


def test_huge_but_finite_values_are_not_mistaken_for_nan():
    # the chunk sums overflow float32 here; the guard must fall back to the exact check and pass
    x = torch.full((6, 1, 2, 2), 3e38)
    x[:, :, 0] = -3e38
    enc = encrypt(x, k=2, seed=0)
    assert torch.isfinite(enc.images).all()
    assert torch.allclose(enc.images.abs(), torch.full_like(x, 3e38), rtol=1e-5)


def test_out_overlapping_the_input_is_refused_and_a_disjoint_view_is_exact():
    x = centred(4000)
    ref = encrypt(x.clone(), k=4, seed=0).images
    for out_of in (lambda b: b, lambda b: b[1:]):  # out = images, out overlapping images by one row
        buf = torch.cat([x.clone(), centred(1)])
        with pytest.raises(ValueError, match="out overlaps images or public"):
            encrypt(buf[:4000], k=4, seed=0, out=out_of(buf)[:4000])
    pool = centred(50, seed=2)
    with pytest.raises(ValueError, match="out overlaps images or public"):
        encrypt(pool[:10], k=6, public=pool, out=pool[40:50])
    buf = torch.cat([x, torch.empty_like(x)])  # one storage, disjoint halves: allowed and exact
    assert torch.equal(encrypt(buf[:4000], k=4, seed=0, out=buf[4000:]).images, ref)


def uniform(n, seed=1):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def reference_mixed_negative_share(x, k, draws=4000, seed=3):
    """Plain loop: the share of negative values in random k-image mixtures (|N(0,1)| coefficients)."""
    g = torch.Generator().manual_seed(seed)
    neg = 0.0
    for _ in range(draws):
        rows = torch.randint(len(x), (k,), generator=g)
        lam = torch.randn(k, generator=g).abs()
        neg += float(((lam / lam.sum()).view(k, 1, 1, 1) * x[rows]).sum(0).lt(0).float().mean())
    return neg / draws


def test_centring_a_set_whose_last_quarter_is_in_0_1_is_judged_on_all_rows():
    # 1023 rows: the old check (every 3rd row, first 256 of those) never looked at rows >= 766.
    x = torch.cat([centred(767), uniform(256)])
    share = check_centred(x, 4)  # accepted: the mask still hides the sign of ~38% of mixed values
    assert abs(share - reference_mixed_negative_share(x, 4)) < 0.04
    assert share < check_centred(centred(1023), 4) - 0.06  # the [0, 1] quarter is seen
    encrypt(x, k=4)


def test_centring_refuses_0_1_images_with_a_few_slightly_negative_values():
    x = uniform(1000)
    x[torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.02] = -0.01  # 2% negative
    assert reference_mixed_negative_share(x, 4, draws=500) < 0.01  # the mask hides ~no sign
    with pytest.raises(UncentredInputError, match=r"only 0\.\d\d% of mixed values are negative"):
        encrypt(x, k=4)


def test_centring_accepts_a_half_centred_set():
    x = torch.cat([uniform(255), centred(255)])  # 25% negative values; the first 256 rows uncentred
    assert float((x < 0).float().mean()) > 0.2
    assert check_centred(x, 4) > 2 * CENTRED_MIN_NEGATIVE
    encrypt(x, k=4)


def reference_mixed_sign_shares(x, k, draws=2000, seed=3):
    """Plain loop: the shares of negative and of positive values in random k-image mixtures."""
    g = torch.Generator().manual_seed(seed)
    neg = pos = 0.0
    for _ in range(draws):
        rows = torch.randint(len(x), (k,), generator=g)
        lam = torch.randn(k, generator=g).abs()
        m = ((lam / lam.sum()).view(k, 1, 1, 1) * x[rows]).sum(0)
        neg += float(m.lt(0).float().mean())
        pos += float(m.gt(0).float().mean())
    return neg / draws, pos / draws


@pytest.mark.parametrize("make", [
    lambda: torch.rand(64, 3, 8, 8) - 1,                      # all negative: -|e| is the exact Mixup
    lambda: -uniform(1000),
    lambda: centred(200) - 2.5,                               # ~99% negative
])
def test_centring_refuses_inputs_whose_mixtures_are_all_or_mostly_negative(make):
    x = make()
    neg, pos = reference_mixed_sign_shares(x, 4, draws=300)
    assert pos < 0.05 < neg  # the mask hides the sign of almost no mixed value
    with pytest.raises(UncentredInputError, match=r"images are not centred: only \d\.\d\d% of mixed values are "
                                                  r"positive .*of each sign needed"):
        encrypt(x, k=4)
    with pytest.raises(UncentredInputError, match="public are not centred: .* positive"):
        encrypt(centred(10), k=6, public=x[:10])
    with pytest.raises(UncentredInputError, match="positive"):
        instahide.InstaHideDataset(x, torch.arange(len(x)) % 2, k=4)
    enc = encrypt(x, k=4, allow_uncentred=True, seed=0)  # still possible when asked for
    assert (enc.images > 0).any()


def test_centring_refuses_dark_uint8_images_normalised_with_imagenet_statistics():
    """The CLI case of the report: dark pixels (0-40 of 255) normalised with ImageNet's mean/std come
    out 100% negative, and were encrypted as a success."""
    from instahide.data import normalize_images

    dark = torch.randint(0, 41, (200, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 255
    x = normalize_images(dark, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert float((x < 0).float().mean()) == 1.0
    with pytest.raises(UncentredInputError, match=r"only 0\.00% of mixed values are positive"):
        encrypt(x, k=4)


def test_centring_judges_the_rarer_sign_in_both_directions():
    for sign in (1, -1):
        x = sign * torch.cat([centred(767), uniform(256)])  # 3/4 centred, 1/4 of one sign
        share = check_centred(x, 4)
        neg, pos = reference_mixed_sign_shares(x, 4)
        assert abs(share - min(neg, pos)) < 0.04 and share > CENTRED_MIN_SHARE
        assert check_centred(x, 4) == check_centred(-x, 4)  # the verdict does not depend on the sign
    assert CENTRED_MIN_NEGATIVE == CENTRED_MIN_SHARE == 0.10  # the former name stays


def test_centring_accepts_normalised_cifar10(cifar10_root):
    from instahide.data import load_cifar10

    x, _ = load_cifar10(cifar10_root, "test").subset(slice(0, 1000)).to_tensor()
    for k in (1, 4, 6):
        assert check_centred(x, k) > 0.4  # about half of the mixed values are negative
    encrypt(x, k=6, public=x.flip(0), num_private=2)


def test_a_npy_or_junk_key_file_gives_one_line_naming_it(tmp_path):
    np.save(tmp_path / "key.npy", np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    for name in ("key.npy", "junk.npz"):
        with pytest.raises(ValueError, match=f"cannot read key file .*{name}: it is not an .npz archive") as err:
            Key.load(tmp_path / name)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("labels,num_classes,exc,match", [
    (torch.tensor(3), None, ValueError, r"labels must have shape \(N,\) or \(N, num_classes\), one per image; got a scalar"),
    (3, 10, ValueError, r"got a scalar \(0-d\)"),
    (np.int64(3), 10, ValueError, r"got a scalar \(0-d\)"),
    (torch.full((10,), 2 ** 40), None, ValueError, r"labels go up to 1099511627776, .*above the limit of 1,000,000"),
    (torch.full((10,), 2 ** 40), 10, ValueError, r"num_classes=10\)"),
    (torch.arange(10), 10 ** 12, ValueError, r"num_classes must be a positive integer of at most 1,000,000.*got 1000000000000"),
    (torch.arange(10), MAX_CLASSES + 1, ValueError, r"num_classes must be a positive integer of at most"),
    (torch.arange(10), "10", TypeError, r"num_classes must be a positive integer or None, got '10' \(str\)"),
    (torch.arange(10), 10.0, TypeError, r"num_classes must be a positive integer or None, got 10.0 \(float\)"),
    (torch.arange(10), True, TypeError, r"num_classes must be a positive integer or None, got True \(bool\)"),
    (torch.arange(10), np.bool_(True), TypeError, r"num_classes must be a positive integer"),
    (None, "10", TypeError, r"num_classes must be a positive integer"),  # refused with or without labels
    (torch.arange(10).view(10, 1, 1).float(), 10, ValueError, r"Invalid labels shape"),
])
def test_bad_labels_and_num_classes_are_refused_before_any_allocation(labels, num_classes, exc, match):
    with pytest.raises(exc, match=match) as err:
        encrypt(centred(10), labels, k=2, num_classes=num_classes)
    assert "\n" not in str(err.value)


def test_numpy_integer_num_classes_and_labels_are_accepted():
    x, y = centred(10), torch.arange(10) % 4
    a = encrypt(x, y, k=2, num_classes=np.int64(6), seed=0)
    b = encrypt(x, y.numpy().astype(np.int32), k=2, num_classes=6, seed=0)
    assert a.soft_labels.shape == (10, 6) and torch.equal(a.soft_labels, b.soft_labels)
    assert encrypt(x, torch.full((10,), MAX_CLASSES - 1), k=2, seed=0).soft_labels.shape == (10, MAX_CLASSES)
