"""Key material: where the randomness of every one-time key comes from.

The reference code's keys came from Mersenne-Twister generators seeded with a small integer, which
is how the InstaHide challenge fell (docs/scheme.md, defect 3). :class:`KeyGenerator` is a
deterministic random bit generator keyed with 256 bits, by default from ``os.urandom``; without the
key no output can be predicted from others. Its stream: draw ``i`` is ``SHAKE-256(domain || key || i)``
(Python's standard library), or, for OS-entropy keys when the optional ``cryptography`` package is
installed, the ChaCha20 keystream under a key derived from ``key`` with nonce ``i`` (about 6x faster;
docs/scheme.md, "Keys"). A generator made from a user-given seed (:meth:`KeyGenerator.from_seed`) is for
reproducible research only: the seed recomputes every key, always with SHAKE-256, so that a seed gives
the same keys on every installation. Uniforms, half-normals and integers are derived from the bytes
with numpy, vectorised.

A generator never emits one stream in two processes: a copy in a forked child (DataLoader worker,
``os.fork``) rekeys at its first draw, from OS entropy, or for a research seed from the key, the fork
count and the DataLoader worker id (reproducible; outside a DataLoader worker it raises instead).
Nor twice in one process: a lock makes each draw take its own draw number, so threads sharing a
generator never receive the same block (single-threaded output is unchanged by it).
"""
from __future__ import annotations

import hashlib
import os
import struct
import threading
import weakref

import numpy as np
import torch.distributed as dist
from torch.utils.data import get_worker_info

_DOMAIN = b"instahide/keystream/v1\x00"
_SEED_DOMAIN = b"instahide/research-seed/v1\x00"
_SPAWN_DOMAIN = b"instahide/spawn/v1\x00"
_FORK_DOMAIN = b"instahide/fork/v1\x00"
_CHACHA_DOMAIN = b"instahide/chacha20-key/v1\x00"
STREAMS = ("shake256", "chacha20")
KEY_BYTES = 32  # 256-bit keys: well above the 128 bits of entropy docs/scheme.md (defect 3) asks for
_LIVE = weakref.WeakSet()  # every generator: each counts the forks of its process (see _forked)
_LIVE_LOCK = threading.Lock()  # guards _LIVE against threads adding generators while another forks


def _before_fork() -> None:
    _LIVE_LOCK.acquire()


def _after_fork_in_parent() -> None:
    for g in list(_LIVE):
        g._forks += 1
    _LIVE_LOCK.release()


def _after_fork_in_child() -> None:
    # the child has one thread: a lock that another parent thread held at the fork would never be
    # released, so every generator gets a fresh one (its stream is rekeyed at the first draw anyway)
    global _LIVE_LOCK
    _LIVE_LOCK = threading.Lock()
    for g in list(_LIVE):
        g._lock = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


class KeyGenerator:
    """A keystream: the source of coefficients, partners and masks.

    Args:
        key: 32 bytes of key material. Use :meth:`from_entropy` (the default everywhere) or
            :meth:`from_seed` (reproducible research only) rather than passing it directly.
        origin: how the key was made (``"os-entropy"`` or ``"research-seed"``); recorded in keys and
            reports so that a key made from a seed is never mistaken for a private one.
        stream: ``"shake256"`` (the default; standard library) or ``"chacha20"`` (needs the
            ``cryptography`` package).

    Example:
        >>> g = KeyGenerator.from_seed(0)   # reproducible, NOT private
        >>> g.random_bytes(4).shape
        (4,)
    """

    __slots__ = ("_key", "_counter", "_pid", "_forks", "_chacha", "_lock", "origin", "seed", "stream",
                 "__weakref__")

    def __init__(self, key: bytes, *, origin: str = "os-entropy", seed=None, stream: str = "shake256") -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ValueError(f"KeyGenerator needs a {KEY_BYTES}-byte key, got {type(key).__name__} "
                             f"of length {len(key) if hasattr(key, '__len__') else '?'}")
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
        if stream == "chacha20" and _chacha20() is None:
            raise ImportError("stream='chacha20' needs the cryptography package (pip install cryptography)")
        self._counter, self._pid, self._forks = 0, os.getpid(), 0
        self._lock = threading.Lock()  # one draw number per draw, also when threads share the generator
        self.origin, self.seed, self.stream = origin, seed, stream
        self._rekey(bytes(key))
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _rekey(self, key: bytes) -> None:
        self._key = key
        self._chacha = (hashlib.shake_256(_CHACHA_DOMAIN + key).digest(KEY_BYTES)
                        if self.stream == "chacha20" else None)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_entropy(cls) -> "KeyGenerator":
        """A generator keyed with 256 bits from ``os.urandom`` (the operating system's CSPRNG); its
        stream is ChaCha20 when the ``cryptography`` package is installed, else SHAKE-256."""
        return cls(os.urandom(KEY_BYTES), origin="os-entropy",
                   stream="chacha20" if _chacha20() is not None else "shake256")

    @classmethod
    def from_seed(cls, seed: int | str | bytes) -> "KeyGenerator":
        """A generator derived from ``seed``, FOR REPRODUCIBLE RESEARCH ONLY.

        Every key it produces can be recomputed by anyone who knows (or guesses) the seed; a small
        integer seed is exactly what broke the InstaHide challenge. Never use it for data you want to
        keep private. In a distributed job the rank is folded in, so the ranks never share a stream:
        the same seed gives each rank its own. The rank comes from the ``torch.distributed`` process
        group when one is initialised (``torch.multiprocessing.spawn`` with
        ``init_process_group(rank=, world_size=)``), else from ``RANK`` when ``WORLD_SIZE > 1`` (as
        torchrun sets); a world size above 1 with no rank known is refused. Make the generator after
        ``init_process_group``: before it a spawned rank cannot know that it is one.
        """
        material = _seed_material(seed)
        rank, world = distributed_rank()
        if world > 1:
            material += b"/rank" + str(rank).encode()
        key = hashlib.shake_256(_SEED_DOMAIN + material).digest(KEY_BYTES)
        return cls(key, origin="research-seed", seed=seed if not isinstance(seed, np.integer) else int(seed))

    @property
    def is_private(self) -> bool:
        """True when the key came from the OS entropy source (no seed anyone could guess)."""
        return self.origin == "os-entropy"

    def spawn(self, index: int) -> "KeyGenerator":
        """An independent child generator (e.g. one per distributed rank or per worker); ``index`` is an
        integer in ``[0, 2**64)``, and each index gives another child."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"spawn(index): index must be an integer, got {index!r} ({type(index).__name__})")
        if not 0 <= int(index) < 2 ** 64:
            raise ValueError(f"spawn(index): index must be in [0, 2**64), got {int(index)}")
        with self._lock:
            if self._pid != os.getpid():
                self._forked()
            parent = self._key
        key = hashlib.shake_256(_SPAWN_DOMAIN + parent + struct.pack("<Q", int(index))).digest(KEY_BYTES)
        return KeyGenerator(key, origin=self.origin, seed=self.seed, stream=self.stream)

    def __repr__(self) -> str:  # never print the key
        extra = f", seed={self.seed!r}" if self.seed is not None else ""
        return f"KeyGenerator(origin={self.origin!r}{extra})"

    def __getstate__(self):
        raise TypeError("KeyGenerator holds secret key material and is not picklable; "
                        "use spawn() to give each worker its own generator")

    # -- raw bytes --------------------------------------------------------------------------------
    def random_bytes(self, n: int) -> np.ndarray:
        """``n`` fresh random bytes as a uint8 array of shape ``(n,)``."""
        n = int(n)
        if n < 0:
            raise ValueError(f"number of bytes must be >= 0, got {n}")
        with self._lock:  # the draw number, and the key it goes with, are taken as one step
            if self._pid != os.getpid():
                self._forked()
            block = struct.pack("<Q", self._counter)
            self._counter += 1
            key, chacha = self._key, self._chacha
        if n == 0:
            return np.empty(0, dtype=np.uint8)
        if chacha is not None:  # nonce: 8 zero bytes (block counter from 0), then the draw number
            return _chacha20()(chacha, bytes(8) + block, n)
        data = hashlib.shake_256(_DOMAIN + key + block).digest(n)
        return np.frombuffer(bytearray(data), dtype=np.uint8)  # writable, no second copy

    def _forked(self) -> None:
        """In a forked child: rekey, so that parent and children never share a stream (called with
        ``_lock`` held)."""
        worker = get_worker_info()
        if self.origin == "os-entropy":
            self._rekey(os.urandom(KEY_BYTES))
        elif worker is None:
            raise RuntimeError(f"a research-seeded {self!r} was copied into a forked process that is not a "
                               "DataLoader worker, where it would repeat the parent's keys; spawn() one "
                               "generator per process before forking, or use KeyGenerator.from_entropy()")
        else:  # reproducible, and distinct per worker, per fork (epoch) and per rank
            who = struct.pack("<QQQQ", self._forks, worker.id, distributed_rank()[0], self._counter)
            self._rekey(hashlib.shake_256(_FORK_DOMAIN + self._key + who).digest(KEY_BYTES))
        self._counter, self._pid, self._forks = 0, os.getpid(), 0

    # -- derived draws ----------------------------------------------------------------------------
    def uniform(self, shape) -> np.ndarray:
        """float64 draws uniform on the open interval (0, 1), with 53 random bits each."""
        shape = _shape(shape)
        count = int(np.prod(shape, dtype=np.int64))
        words = self.random_bytes(8 * count).view(np.uint64)
        words >>= np.uint64(11)  # in place: large temporaries cost their page faults
        u = words.astype(np.float64)
        u += 0.5
        u *= 1.0 / 9007199254740992.0
        return u.reshape(shape)

    def half_normal(self, shape) -> np.ndarray:
        """float64 draws of ``|N(0, 1)|`` (Box-Muller; one uniform pair per draw)."""
        shape = _shape(shape)
        count = int(np.prod(shape, dtype=np.int64))
        u = self.uniform((2, count))
        r, c = u  # sqrt(-2 log u0) * cos(2 pi u1), computed in place
        np.log(r, out=r)
        r *= -2.0
        np.sqrt(r, out=r)
        c *= 2.0 * np.pi
        np.cos(c, out=c)
        r *= c
        return np.abs(r, out=r).reshape(shape)

    def integers(self, high, shape=None) -> np.ndarray:
        """int64 draws uniform on ``[0, high)``; ``high`` may be an array broadcast to ``shape``.

        Computed as ``floor(u * high)`` from 53-bit uniforms: the bias is below ``high / 2**53``.
        """
        high_arr = np.asarray(high, dtype=np.int64)
        if shape is None:
            shape = high_arr.shape
        shape = _shape(shape)
        if np.any(high_arr < 1):
            raise ValueError(f"integers() needs high >= 1, got {high}")
        u = self.uniform(shape)
        out = np.floor(u * high_arr).astype(np.int64)
        return np.minimum(out, high_arr - 1)


def _seed_material(seed) -> bytes:
    if isinstance(seed, bool) or not isinstance(seed, (int, str, bytes, np.integer)):
        raise TypeError(f"seed must be an int, str or bytes, got {type(seed).__name__}")
    if isinstance(seed, (int, np.integer)):
        return b"i" + str(int(seed)).encode()
    if isinstance(seed, str):
        return b"s" + seed.encode()
    return b"b" + bytes(seed)


def fixed_generator(label: str) -> KeyGenerator:
    """The same stream in every process and on every rank, for sampling that is not key material
    (e.g. the centring check's mixtures, whose verdict must not depend on the rank): equal to
    ``KeyGenerator.from_seed(label)`` outside a distributed job."""
    key = hashlib.shake_256(_SEED_DOMAIN + _seed_material(label)).digest(KEY_BYTES)
    return KeyGenerator(key, origin="research-seed", seed=label)


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in a distributed job, ``(0, 1)`` outside one.

    From the ``torch.distributed`` process group when one is initialised (also under
    ``torch.multiprocessing.spawn``, where no environment variable names the rank), else from
    ``RANK`` / ``WORLD_SIZE`` (torchrun). A world size above 1 without a readable rank is refused:
    every rank would otherwise derive the same research-seeded keys.
    """
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    world_env, rank_env = os.environ.get("WORLD_SIZE"), os.environ.get("RANK")
    try:
        world = int(world_env) if world_env not in (None, "") else 1
    except ValueError:
        raise RuntimeError(f"cannot read WORLD_SIZE={world_env!r} as an integer: the ranks of a distributed "
                           "job must be known to give each its own research-seeded keys") from None
    if world <= 1:
        return 0, 1
    try:
        rank = int(rank_env)
    except (TypeError, ValueError):
        rank = -1
    if not 0 <= rank < world:
        raise RuntimeError(
            f"WORLD_SIZE={world} but the rank is unknown (RANK={rank_env!r}, no torch.distributed process "
            "group initialised): every rank would draw the same research-seeded keys. Call "
            "torch.distributed.init_process_group(...) before making the generator, set RANK, or use "
            "KeyGenerator.from_entropy()")
    return rank, world


def _chacha20():
    """``f(key, nonce, n) -> (n,) uint8``, the first ``n`` bytes of the ChaCha20 keystream (RFC 8439 with
    a 64-bit block counter, as OpenSSL's), or None without the optional ``cryptography`` package."""
    global _CHACHA
    if _CHACHA is False:
        try:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
        except ImportError:
            _CHACHA = None
        else:
            def stream(key: bytes, nonce: bytes, n: int) -> np.ndarray:
                out = bytearray(n)  # zeros; encrypting them in place leaves the keystream
                Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update_into(out, out)
                return np.frombuffer(out, dtype=np.uint8)
            _CHACHA = stream
    return _CHACHA


_CHACHA = False  # not looked up yet


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def resolve_generator(seed=None, generator: KeyGenerator | None = None) -> KeyGenerator:
    """The generator to draw keys from: ``generator`` if given, else one from ``seed`` (research
    only), else a fresh one from the OS entropy source. Giving both is an error."""
    if generator is not None and seed is not None:
        raise ValueError("give either seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, KeyGenerator):
            raise TypeError(
                f"generator must be an instahide KeyGenerator, got {type(generator).__name__}; "
                "torch/numpy generators are Mersenne-Twister or 64-bit seeded and are only used by "
                "legacy=True"
            )
        return generator
    if seed is not None:
        return KeyGenerator.from_seed(seed)
    return KeyGenerator.from_entropy()
