"""The scheme's options in one place: :class:`SchemeConfig` and the reference code's defaults.

Every command and every configuration that encrypts (training, federated parties, the challenge, the
audit, ``instahide encrypt``) composes one :class:`SchemeConfig`, validated once here, so the options
have the same names, defaults, checks and help everywhere (docs/scheme.md, "Reference defaults").

>>> cfg = SchemeConfig(public="builtin").validate()   # cross-dataset: k and num_private follow the pool
>>> cfg.k, cfg.num_private, cfg.private_slots
(6, 2, 2)
>>> SchemeConfig(k=4).validate().private_slots         # inside-dataset: every slot is private
4
"""
from __future__ import annotations

from dataclasses import dataclass

from .._config import Config, check_types
from .coefficients import check_bounds
from .defaults import DOM, K_CROSS, K_INSIDE, NUM_PRIVATE_CROSS, PUBLIC_SIZE, UPPER

__all__ = ["SchemeConfig", "SCHEME_MODES", "DOM", "K_CROSS", "K_INSIDE", "NUM_PRIVATE_CROSS", "PUBLIC_SIZE", "UPPER"]

SCHEME_MODES = ("vanilla", "mixup", "instahide")


@dataclass
class SchemeConfig(Config):
    mode: str = "instahide"              # instahide (mix and mask) | mixup (mix, no mask) | vanilla (training only:
                                         # plain images)
    k: int | None = None                 # images per encryption; default 4 inside-dataset, 6 with a public pool
    upper: float = UPPER                 # c1: largest coefficient (the reference: 0.65)
    dom: float = DOM                     # c2: smallest sum of the private coefficients, cross-dataset only (0.3)
    num_private: int | None = None       # private slots with a public pool (default 2; the rest are public)
    public: str | None = None            # public pool (cross-dataset InstaHide): builtin (photographs shipped
                                         # with scikit-image), a folder of photographs, or a .npy/.npz array
    public_size: int = PUBLIC_SIZE       # patches cut for the public pool
    public_resize: int | None = None     # short side of the photographs before cutting patches (paper: 40 for 32x32)
    legacy: bool = False                 # the reference code's keys and defects (public window, self-mixing,
                                         # 32-bit Mersenne-Twister seeds): for replaying attacks only

    @property
    def cross(self) -> bool:
        """Cross-dataset InstaHide (a public pool fills the non-private slots)."""
        return self.public is not None

    @property
    def private_slots(self) -> int:
        """Private images per encryption (``k`` inside-dataset)."""
        return (self.num_private or NUM_PRIVATE_CROSS) if self.cross else (self.k or K_INSIDE)

    def validate(self) -> "SchemeConfig":
        """Check the options together and fill the defaults that depend on the public pool (``k``,
        ``num_private``); raises a ``ValueError`` naming the option. Returns ``self``."""
        check_types(self)
        if self.mode not in SCHEME_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {', '.join(SCHEME_MODES)}")
        if self.public_size < 1:
            raise ValueError(f"public_size must be >= 1, got {self.public_size}")
        if self.mode == "vanilla":
            if self.cross:
                raise ValueError("vanilla training mixes nothing: drop public or pick mode mixup/instahide")
            if self.legacy:
                raise ValueError("legacy keys need a scheme that draws keys: pick mode mixup/instahide")
        if self.num_private is not None and not self.cross:
            raise ValueError("num_private needs a public pool (cross-dataset mode): set public")
        if self.k is None:
            self.k = K_CROSS if self.cross else K_INSIDE
        if self.cross and self.num_private is None:
            self.num_private = NUM_PRIVATE_CROSS
        if self.mode != "vanilla":
            check_bounds(self.k, self.upper, self.dom if self.cross else None, self.private_slots)
            if self.cross and self.private_slots >= self.k:
                raise ValueError(f"cross-dataset mode with k={self.k} and num_private={self.num_private} leaves "
                                 "no public slot")
        return self

    def encrypt_kwargs(self) -> dict:
        """Keyword arguments of :func:`~instahide.scheme.encrypt` for this scheme (after validate)."""
        if self.mode == "vanilla":
            raise ValueError("mode vanilla does not encrypt")
        kw = dict(k=self.k, upper=self.upper, mode=self.mode, legacy=self.legacy)
        if self.cross:
            kw.update(dom=self.dom, num_private=self.num_private)
        return kw
