"""Generate an InstaHide challenge in the published format (docs/challenge.md, "Format"), and keep its
ground truth apart.

``OUT`` holds ``encryption.npy`` (float32 ``(N, H, W, C)``, channels last), ``label.npy`` (float32
``(N, classes)``) and ``meta.json`` (the public parameters: no secrets, no local paths); rows are
epoch-major (row ``t * n + i`` encrypts private image ``i`` in epoch ``t``). The ground truth goes to a
SEPARATE ``.npz`` (default ``<OUT>-truth.npz`` next to ``OUT``, mode 0600), read back without unpickling.
In Python images are ``(N, C, H, W)``; :func:`write_challenge` and the loaders convert. Pixel units:
:mod:`instahide.data.scaling` (with ``"unit"`` the mask hides nothing, and ``meta.json`` says so).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_save_npy, atomic_savez, atomic_write_text, load_plain_npz, output_set
from ..data.arrays import default_stats
from ..data.augment import Augment
from ..data.scaling import SCALINGS, private_stats, scale_images, scaling_data_range
from ..scheme import Key, KeyGenerator, LegacyGenerator, encrypt, resolve_generator
from ..scheme.defaults import DOM, UPPER

__all__ = [
    "ChallengeTruth", "make_challenge", "write_challenge", "load_challenge", "save_truth", "load_truth",
    "challenge_meta", "default_truth_path", "TRUTH_FORMAT",
]

TRUTH_FORMAT = "instahide-challenge-truth/1"
CHALLENGE_FORMAT = "instahide-challenge/1"
CHALLENGE_FILES = ("encryption.npy", "label.npy", "meta.json")
# Parameters that are secrets: kept in the truth file, never written to meta.json.
_SECRET_PARAMS = ("research_seed", "legacy_seed", "augment_seed")
_UNIT_WARNING = ("scaling 'unit': pixels in [0, 1] are non-negative, so every mixture is non-negative "
                 "and |encryption| equals it exactly: the sign mask hides NOTHING here (generated with "
                 "allow_uncentred=True, to measure exactly that)")


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


@dataclass
class ChallengeTruth:
    """The ground truth of a challenge of ``N = n * T`` rows (secrets: keep it away from ``OUT``).

    Attributes:
        private: float32 ``(n, C, H, W)``, the private images in the encryptions' pixel units.
        private_labels: int64 ``(n,)``.
        indices: int64 ``(N, k)``, the image in every slot of every row; columns
            ``< num_private`` index ``private``, the others ``public``. Column 0 of row ``t * n + i``
            is ``i``.
        coefficients: float32 ``(N, k)``, lambda of every slot.
        num_private: private slots per row (2 in the challenge).
        mask_bits: uint8 ``(N, ceil(C*H*W / 8))``, the packed sign masks as
            :class:`instahide.scheme.Key` stores them; None for ``mode="mixup"``.
        scaling: ``"pm1"``, ``"normalize"`` or ``"unit"``; data_range: its SSIM data range.
        legacy_seed: the 32-bit seed of a ``legacy`` challenge (its keys follow from it), else -1.
        params: every parameter of the generation (including secrets such as the research seed).
        public: float32 ``(M, C, H, W)``, the public pool in the same units, or None (no public slot).
    """

    private: np.ndarray
    private_labels: np.ndarray
    indices: np.ndarray
    coefficients: np.ndarray
    num_private: int
    mask_bits: np.ndarray | None
    scaling: str
    legacy_seed: int
    data_range: float
    params: dict = field(default_factory=dict)
    public: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.private = np.asarray(self.private, dtype=np.float32)
        self.private_labels = np.asarray(self.private_labels, dtype=np.int64)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.coefficients = np.asarray(self.coefficients, dtype=np.float32)
        if self.private.ndim != 4:
            raise ValueError(f"truth: private images must be (n, C, H, W), got {self.private.shape}")
        n = len(self.private)
        if self.private_labels.shape != (n,):
            raise ValueError(f"truth: {n} private images but labels of shape {self.private_labels.shape}")
        if self.indices.ndim != 2 or self.coefficients.shape != self.indices.shape:
            raise ValueError(f"truth: indices {self.indices.shape} and coefficients "
                             f"{self.coefficients.shape} must both be (N, k)")
        if n == 0 or len(self.indices) % n:
            raise ValueError(f"truth: {len(self.indices)} rows are not a whole number of epochs of {n} images")
        if not 1 <= self.num_private <= self.indices.shape[1]:
            raise ValueError(f"truth: num_private={self.num_private} out of range for k={self.indices.shape[1]}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"truth: unknown scaling {self.scaling!r}; expected one of {SCALINGS}")
        if self.public is not None:
            self.public = np.asarray(self.public, dtype=np.float32)

    @property
    def n(self) -> int:
        """Number of private images."""
        return len(self.private)

    @property
    def N(self) -> int:  # noqa: N802 - the paper's name
        """Number of encryptions (rows), ``n * T``."""
        return len(self.indices)

    @property
    def T(self) -> int:  # noqa: N802
        """Encryptions per private image (epochs)."""
        return self.N // self.n

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.private.shape[1:])  # type: ignore[return-value]

    @property
    def encryption_shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)``: the shape of the encryptions and of a decryption."""
        return (self.N, *self.image_shape)

    @property
    def pairs(self) -> np.ndarray:
        """int64 ``(N, 2)``: the private images in slots 1 and 2 of every row (slot 1 twice when
        ``num_private == 1``)."""
        second = 1 if self.num_private >= 2 else 0
        return self.indices[:, [0, second]]

    def key(self) -> Key:
        """The keys as a :class:`instahide.scheme.Key`: ``apply_key`` of the private images and the
        public pool recomputes the encryptions."""
        return Key(torch.from_numpy(self.coefficients), torch.from_numpy(self.indices), self.num_private,
                   None if self.mask_bits is None else torch.from_numpy(self.mask_bits), self.image_shape,
                   {"legacy": self.legacy_seed >= 0})


def _uint8_images(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a uint8 array (N, C, H, W), got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 pixels (N, C, H, W) as loaded (ImageDataset.images), got {x.dtype}; "
                        "the challenge scales them itself (scaling=...)")
    if x.ndim != 4:
        raise ValueError(f"Invalid {name} shape, expected (N, C, H, W). Got: {tuple(x.shape)}")
    return x.cpu()


def make_challenge(
    private_images,
    private_labels,
    public=None,
    *,
    T: int = 50,  # noqa: N803 - the paper's name
    k: int = 6,
    num_private: int | None = None,
    mode: str = "instahide",
    upper: float = UPPER,
    dom: float = DOM,
    scaling: str = "pm1",
    legacy: bool = False,
    research_seed=None,
    generator: KeyGenerator | LegacyGenerator | None = None,
    num_classes: int | None = None,
    mean=None,
    std=None,
    info: dict | None = None,
    augment_padding: int | None = None,
    augment_seed: int | None = None,
    allow_uncentred: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, ChallengeTruth]:
    """Encrypt ``n`` private images ``T`` times each (epoch-major), the InstaHide challenge's way.

    Args:
        private_images: uint8 ``(n, C, H, W)`` (the challenge: 100 CIFAR-10 images).
        private_labels: ``(n,)`` class indices.
        public: uint8 ``(M, C, H, W)`` public pool (cross-dataset InstaHide, the challenge's setting),
            or None for inside-dataset InstaHide (then every slot is private).
        T: encryptions per private image, one per epoch, each under fresh keys (the challenge: 50).
        k: images per encryption (the challenge: 6).
        num_private: private slots; default 2 with a public pool (the challenge), ``k`` without.
        mode: ``"instahide"`` (mix and mask) or ``"mixup"`` (no mask).
        upper, dom: c1 and c2 (c2 only with a public pool), the reference's 0.65 and 0.3.
        scaling: pixel units ``"pm1"`` (default), ``"normalize"`` or ``"unit"``.
        legacy: draw keys the reference code's way, defects included (docs/scheme.md): one
            :class:`~instahide.scheme.LegacyGenerator` across the epochs; ``research_seed`` is then the
            32-bit legacy seed (OS entropy if None), stored in the truth: it alone recovers every key.
        research_seed: the key seed, FOR REPRODUCIBLE RESEARCH ONLY (anyone who knows it recomputes
            every key); default: keys from 256 bits of OS entropy.
        generator: a :class:`~instahide.scheme.KeyGenerator` (or ``LegacyGenerator`` with
            ``legacy=True``) to draw from instead of ``research_seed``.
        num_classes: width of the labels; default ``max(private_labels) + 1``.
        mean, std: the private set's per-channel statistics for ``scaling="normalize"`` (default
            CIFAR-10's); the public pool uses ImageNet's.
        info: extra descriptive entries for the parameters, e.g. the data's source (``root`` and
            local ``source`` entries stay in the truth, out of ``meta.json``).
        augment_padding: the training recipe's random crop with this padding (black fill; 0 = none) and
            flip before every epoch's encryption, per image and epoch; None (default, the published
            setting): no augmentation. The truth keeps the UN-augmented images.
        augment_seed: seed of the augmentation draws (not key material); default OS entropy.
        allow_uncentred: skip the check that the mask hides signs (default: skipped on ``"unit"``
            pixels only). An attacker simulating challenges on small batches of its own images passes
            True: a batch of 8 dark images can fail the check that protects a user's data.

    Returns:
        ``(encryption, label, truth)``: float32 ``(n*T, C, H, W)``, float32 ``(n*T, classes)`` and a
        :class:`ChallengeTruth`. Write them with :func:`write_challenge`.

    Example:
        >>> from instahide.data import load_dataset, load_public_pool
        >>> ds = load_dataset("digits", split="test").subset(slice(0, 20))
        >>> pool = load_public_pool("builtin", n=200, size=(8, 8), channels=1, resize=40)
        >>> enc, lab, truth = make_challenge(ds.images, ds.labels, pool.images, T=5, research_seed=0)
        >>> enc.shape, lab.shape, truth.pairs.shape
        ((100, 1, 8, 8), (100, 10), (100, 2))
    """
    x8 = _uint8_images(private_images, "private_images")
    n, c, h, w = x8.shape
    labels = torch.as_tensor(np.asarray(private_labels)).long().flatten()
    if labels.shape != (n,):
        raise ValueError(f"{n} private images but private_labels of shape {tuple(np.shape(private_labels))}")
    if n < 1:
        raise ValueError("no private images")
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T (encryptions per image) must be an integer >= 1, got {T!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; expected one of {SCALINGS}")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"private labels must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")
    pub8 = None
    if public is not None:
        pub8 = _uint8_images(public, "public")
        if pub8.shape[1:] != x8.shape[1:]:
            raise ValueError(f"public images are {tuple(pub8.shape[1:])}, private images {tuple(x8.shape[1:])}; "
                             "they must match")
        num_private = 2 if num_private is None else num_private
    else:
        num_private = k if num_private is None else num_private

    p_mean = p_std = q_mean = q_std = None
    if scaling == "normalize":
        p_mean, p_std = private_stats(c, mean, std)
        q_mean, q_std = default_stats(c)
    x = scale_images(x8, scaling, p_mean, p_std)
    pub = None if pub8 is None else scale_images(pub8, scaling, q_mean, q_std)

    aug = aug_gen = None
    if augment_padding is not None:
        if not isinstance(augment_padding, (int, np.integer)) or augment_padding < 0:
            raise ValueError(f"augment_padding is the crop padding, an integer >= 0, got {augment_padding!r}")
        black = scale_images(torch.zeros(1, c, 1, 1, dtype=torch.uint8), scaling, p_mean, p_std).flatten()
        aug = Augment(padding=int(augment_padding), flip=True, fill=black.tolist())
        if augment_seed is None:
            augment_seed = int.from_bytes(os.urandom(8), "little") >> 1
        aug_gen = torch.Generator().manual_seed(int(augment_seed))

    if legacy:
        if generator is not None and research_seed is not None:
            raise ValueError("give either research_seed or generator, not both")
        if generator is not None and not isinstance(generator, LegacyGenerator):
            raise TypeError("legacy=True draws from the reference's Mersenne-Twister generators: pass "
                            "research_seed=<int> or generator=LegacyGenerator(seed)")
        gen = generator if generator is not None else LegacyGenerator(research_seed)
        origin, legacy_seed = "legacy-seed", int(gen.seed)
    else:
        gen = resolve_generator(research_seed, generator)
        origin, legacy_seed = gen.origin, -1

    encryption = np.empty((n * T, c, h, w), dtype=np.float32)
    label = np.empty((n * T, num_classes), dtype=np.float32)
    keys = []
    for t in range(T):
        xt = x if aug is None else aug(x, generator=aug_gen)
        enc = encrypt(xt, labels, k=k, upper=upper, mode=mode, public=pub, num_private=num_private, dom=dom,
                      num_classes=num_classes, generator=gen, return_key=True, legacy=legacy,
                      allow_uncentred=scaling == "unit" if allow_uncentred is None else bool(allow_uncentred))
        encryption[t * n:(t + 1) * n] = enc.images.numpy()
        label[t * n:(t + 1) * n] = enc.soft_labels.numpy()
        keys.append(enc.key)
    key = Key.cat(keys)

    params = {
        "format": CHALLENGE_FORMAT,
        "challenge_id": os.urandom(8).hex(),  # ties meta.json to its truth file (not a secret)
        "n_private": n, "T": int(T), "rows": n * T,
        "row_order": "epoch-major: row t*n + i is the encryption of private image i in epoch t",
        "image_shape_hwc": [h, w, c], "num_classes": num_classes,
        "k": k, "num_private": num_private, "num_public": k - num_private, "mode": mode, "upper": upper,
        "dom": dom if num_private < k else None,
        "scaling": scaling, "data_range": scaling_data_range(scaling, p_std),
        "private_mean": list(p_mean) if p_mean else None, "private_std": list(p_std) if p_std else None,
        "public_mean": list(q_mean) if q_mean else None, "public_std": list(q_std) if q_std else None,
        "public_pool_size": None if pub8 is None else len(pub8),
        "legacy": bool(legacy), "key_origin": origin,
        "research_seed": gen.seed if (not legacy and getattr(gen, "seed", None) is not None) else None,
        "legacy_seed": legacy_seed if legacy else None,
        "label": "sum over the private slots of lambda_j * one_hot(y_j) (not renormalised)",
        "mask_hides_nothing": scaling == "unit" and mode == "instahide",
        "augment": None if aug is None else {"crop_padding": int(augment_padding), "flip": True,
                                             "note": "fresh crop and flip per image and epoch; truth holds "
                                                     "the un-augmented images"},
        "augment_seed": augment_seed if aug is not None else None,  # secret: it tells the crops
    }
    if legacy and pub8 is not None:
        params["public_window"] = f"legacy: public partners come from the pool's first {n} rows only"
    if scaling == "unit":
        params["warning"] = _UNIT_WARNING
    params.update(info or {})
    truth = ChallengeTruth(
        private=x.numpy(), private_labels=labels.numpy(),
        indices=key.indices.numpy(), coefficients=key.coefficients.numpy(), num_private=num_private,
        mask_bits=None if key.mask_bits is None else key.mask_bits.numpy(), scaling=scaling,
        legacy_seed=legacy_seed, data_range=params["data_range"], params=params,
        public=None if pub is None else pub.numpy(),
    )
    return encryption, label, truth


def _public_source(source):
    """A data-source description without what names the machine (``root``, a local ``source`` path)."""
    if not isinstance(source, dict):
        return source
    out = {k: v for k, v in source.items() if k not in ("root", "source")}
    if "source" in source:
        out["source"] = source["source"] if source["source"] == "builtin" else "local files"
    return out


def challenge_meta(truth: ChallengeTruth) -> dict:
    """The public description of a challenge (what ``meta.json`` holds): every parameter except the
    secrets (research, legacy or augmentation seed) and local paths (data roots and sources)."""
    meta = {key: _public_source(value) if key.endswith("_source") else value
            for key, value in truth.params.items() if key not in _SECRET_PARAMS}
    shape = [truth.N, *truth.params["image_shape_hwc"]]
    meta["files"] = {"encryption.npy": f"float32 {shape} (N, H, W, C), channels last",
                     "label.npy": f"float32 [{truth.N}, {truth.params.get('num_classes')}]"}
    meta["submission"] = (f"decryption.npy: float32 {shape}, one recovered image per row, "
                          "in the same pixel units; scored by Max_SSIM (see instahide challenge score)")
    return meta


# -- files ---------------------------------------------------------------------------------------------
def default_truth_path(out: str | os.PathLike) -> Path:
    """``<OUT>-truth.npz`` next to the folder ``OUT`` (never inside it)."""
    out = Path(out)
    return out.resolve().parent / f"{out.resolve().name}-truth.npz"


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def write_challenge(out: str | os.PathLike, encryption: np.ndarray, label: np.ndarray, truth: ChallengeTruth,
                    *, truth_path: str | os.PathLike | None = None, force: bool = False) -> dict[str, Path]:
    """Write ``OUT/encryption.npy`` (``encryption`` ``(N, C, H, W)``, stored channels last),
    ``OUT/label.npy``, ``OUT/meta.json`` and the truth file (default :func:`default_truth_path`).
    ``OUT`` and the truth file are replaced together (:func:`instahide._io.output_set`): a failure
    or a kill leaves the old challenge and its truth or the new pair. Refuses a truth path inside ``OUT``, an ``OUT`` with
    files of its own and, without ``force``, existing files. Returns the paths written."""
    out = Path(out)
    truth_path = default_truth_path(out) if truth_path is None else Path(truth_path)
    if _inside(truth_path, out):
        raise ValueError(f"the truth file {truth_path} would be inside {out}, which is what is handed to "
                         "attackers; put it elsewhere (default: <OUT>-truth.npz next to OUT)")
    if encryption.shape != truth.encryption_shape or label.shape[0] != truth.N:
        raise ValueError(f"mismatched ground truth: encryption {encryption.shape} and label {label.shape} "
                         f"vs a truth of {truth.encryption_shape}")
    paths = {"encryption": out / "encryption.npy", "label": out / "label.npy", "meta": out / "meta.json",
             "truth": truth_path}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (force=True / --force)")
    with output_set(out, force, owned=CHALLENGE_FILES, secret=truth_path) as (tmp, truth_tmp):
        atomic_save_npy(tmp / "encryption.npy", _nhwc(encryption.astype(np.float32, copy=False)))
        atomic_save_npy(tmp / "label.npy", np.ascontiguousarray(label, dtype=np.float32))
        atomic_write_text(tmp / "meta.json", json.dumps(challenge_meta(truth), indent=2, default=str) + "\n")
        save_truth(truth_tmp, truth)  # moved to truth_path together with the folder
    return paths


def read_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """``numpy.load`` without pickles; FileNotFoundError or a ValueError naming ``what`` and ``path``."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from exc


# meta.json's whole-number fields and the least each may be (checked when present and not null)
_META_COUNTS = {"n_private": 1, "T": 1, "rows": 1, "k": 1, "num_private": 1, "num_public": 0, "num_classes": 1}
_MODES = ("vanilla", "mixup", "instahide")


def check_challenge_meta(meta, enc_shape: tuple[int, ...], label_shape: tuple[int, ...], source="meta.json") -> dict:
    """``meta`` (a challenge's parsed ``meta.json``) checked against itself and against the arrays
    it describes: ``encryption.npy`` of shape ``enc_shape`` ``(N, H, W, C)`` and ``label.npy`` of
    ``label_shape`` ``(N, classes)``. Counts (``n_private``, ``T``, ``rows``, ``k``, ``num_private``,
    ...) must be whole numbers (``50.0`` is read as 50, ``"six"`` is refused), ``rows`` and
    ``n_private * T`` the encryptions' rows, ``num_private <= k``. A ``ValueError`` names ``source``
    (the file) and the field. Returns ``meta`` with the counts as ints."""
    if not isinstance(meta, dict):
        raise ValueError(f"{source}: expected a JSON object of the challenge's parameters, got {type(meta).__name__}")
    meta = dict(meta)
    for key, least in _META_COUNTS.items():
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{source}: {key!r} must be a whole number >= {least}, got {value!r}")
        meta[key] = value
    n_rows = enc_shape[0]
    if len(label_shape) != 2 or label_shape[0] != n_rows:
        raise ValueError(f"{source}: label.npy has shape {tuple(label_shape)}, expected ({n_rows}, classes): one "
                         f"soft label per row of encryption.npy")
    get = meta.get
    if get("rows") is not None and get("rows") != n_rows:
        raise ValueError(f"{source}: 'rows' is {get('rows')} but encryption.npy has {n_rows} rows")
    if get("n_private") is not None:
        if get("T") is not None and get("n_private") * get("T") != n_rows:
            raise ValueError(f"{source}: 'n_private' x 'T' = {get('n_private')} x {get('T')} = "
                             f"{get('n_private') * get('T')} rows, but encryption.npy has {n_rows}")
        if n_rows % get("n_private"):
            raise ValueError(f"{source}: encryption.npy's {n_rows} rows are not a whole number of epochs of "
                             f"'n_private' = {get('n_private')} images")
    if get("k") is not None and get("num_private") is not None:
        if get("num_private") > get("k"):
            raise ValueError(f"{source}: 'num_private' ({get('num_private')}) is more than 'k' ({get('k')})")
        if get("num_public") is not None and get("num_public") != get("k") - get("num_private"):
            raise ValueError(f"{source}: 'num_public' ({get('num_public')}) is not 'k' - 'num_private' "
                             f"({get('k')} - {get('num_private')})")
    if get("num_classes") is not None and get("num_classes") != label_shape[1]:
        raise ValueError(f"{source}: 'num_classes' is {get('num_classes')} but label.npy has {label_shape[1]} columns")
    if get("mode") is not None and get("mode") not in _MODES:
        raise ValueError(f"{source}: 'mode' must be one of {', '.join(_MODES)}, got {get('mode')!r}")
    if get("scaling") is not None and not isinstance(get("scaling"), str):
        raise ValueError(f"{source}: 'scaling' must be a name such as 'pm1', got {get('scaling')!r}")
    for key in ("upper", "dom", "data_range"):
        value = get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not np.isfinite(value) or value < 0):
            raise ValueError(f"{source}: {key!r} must be a finite number >= 0, got {value!r}")
    shape = get("image_shape_hwc")
    if shape is not None and (not isinstance(shape, list) or [*shape] != [*enc_shape[1:]]):
        raise ValueError(f"{source}: 'image_shape_hwc' is {shape!r} but encryption.npy's images are "
                         f"{list(enc_shape[1:])} (H, W, C)")
    return meta


def load_challenge(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(encryption (N, C, H, W), label (N, classes), meta)`` of a challenge folder in the published
    format (``encryption.npy`` channels last, ``label.npy``, ``meta.json``); ``meta`` is checked
    against the arrays (:func:`check_challenge_meta`)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} has no meta.json: the attacks need the challenge's public parameters")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"cannot read {meta_path}: {type(exc).__name__}: {exc}") from None
    enc = read_npy(folder / "encryption.npy", "encryption")
    if enc.ndim != 4:
        raise ValueError(f"{folder / 'encryption.npy'} must be (N, H, W, C), got shape {enc.shape}")
    label = read_npy(folder / "label.npy", "label")
    meta = check_challenge_meta(meta, enc.shape, label.shape, meta_path)
    return _nchw(enc), label, meta


def save_truth(path: str | os.PathLike, truth: ChallengeTruth) -> Path:
    """Write the truth to ``path`` (``.npz`` of plain arrays, images channels last, no pickles, mode
    0600), atomically."""
    path = Path(path)
    arrays = {
        "format": np.frombuffer(TRUTH_FORMAT.encode(), dtype=np.uint8),
        "private": _nhwc(truth.private), "private_labels": truth.private_labels,
        "indices": truth.indices, "coefficients": truth.coefficients,
        "num_private": np.array(truth.num_private, dtype=np.int64),
        "scaling": np.array(truth.scaling), "legacy_seed": np.array(truth.legacy_seed, dtype=np.int64),
        "data_range": np.array(truth.data_range, dtype=np.float64),
        "params": np.array(json.dumps(truth.params, default=str)),
    }
    if truth.mask_bits is not None:
        arrays["mask_bits"] = np.asarray(truth.mask_bits, dtype=np.uint8)
    if truth.public is not None:
        arrays["public"] = _nhwc(truth.public)
    atomic_savez(path, arrays, secret=True)  # owner-only: it undoes every encryption
    return path


def load_truth(path: str | os.PathLike) -> ChallengeTruth:
    """Read a truth file written by :func:`save_truth`/:func:`write_challenge` (``allow_pickle=False``)."""
    try:
        fields = load_plain_npz(path, "ground-truth file")
    except (TypeError, AttributeError):  # np.load gave one array (a .npy), not an archive
        raise ValueError(f"{path} is a single array (.npy), not a ground-truth file (<OUT>-truth.npz)") from None
    if "format" not in fields or bytes(fields["format"]).decode(errors="replace") != TRUTH_FORMAT:
        raise ValueError(f"{path} is not an instahide challenge truth file ({TRUTH_FORMAT})")
    try:
        public = fields.get("public")
        return ChallengeTruth(
            private=_nchw(fields["private"]), private_labels=fields["private_labels"], indices=fields["indices"],
            coefficients=fields["coefficients"], num_private=int(fields["num_private"]),
            mask_bits=fields.get("mask_bits"), scaling=str(fields["scaling"]),
            legacy_seed=int(fields["legacy_seed"]), data_range=float(fields["data_range"]),
            params=json.loads(str(fields["params"])), public=None if public is None else _nchw(public),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed ground-truth file {path}: {exc}") from exc
