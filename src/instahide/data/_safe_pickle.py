"""A pickle loader that only rebuilds numpy arrays: enough for CIFAR's "python version" files.

The CIFAR batch files are Python-2 pickles of plain dicts (str keys, lists of ints, str file names)
plus one numpy array (``data``). Unpickling them needs exactly three globals (checked with
``pickletools`` on the official files): ``numpy.core.multiarray._reconstruct`` (``numpy._core`` in
numpy >= 2 pickles), ``numpy.ndarray`` and ``numpy.dtype``. Python-3 re-pickles add at most three
more: ``numpy._core.numeric._frombuffer`` (arrays, protocol 5), and for ``bytes`` at protocol 2
``_codecs.encode(text, "latin1")`` and ``bytes()``, each admitted only with exactly those arguments.
:func:`safe_load_pickle` resolves these itself and refuses every other global, so a tampered file
cannot run code (``os.system``, ``builtins.eval``, ...) while it is read.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["UntrustedPickleError", "safe_load_pickle"]


class UntrustedPickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global (or a call) that a CIFAR batch file never contains."""


try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer


def _pickled_bytes(*args: Any) -> bytes:
    """``bytes`` as Python 3 pickles them at protocol < 3: ``_codecs.encode(text, "latin1")``, and
    ``bytes()`` for ``b""``. Any other arguments are refused."""
    if not args:
        return b""
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise UntrustedPickleError(f"_codecs.encode/bytes called with {args!r:.60}, not the (text, 'latin1') "
                                   f"of pickled bytes")
    return args[0].encode("latin1")


# (module, name) -> object, resolved here so that unpickling never imports anything. Both spellings
# of the numpy core module (numpy < 2 and >= 2 pickles) map to the same function.
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _pickled_bytes,
    ("__builtin__", "bytes"): _pickled_bytes,
    ("builtins", "bytes"): _pickled_bytes,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if (module, name) not in _ALLOWED:
            raise UntrustedPickleError(f"global '{module}.{name}' is not allowed in a CIFAR batch file")
        return _ALLOWED[(module, name)]


# How deeply containers (dicts, lists, tuples, sets, object arrays) may nest in a loaded pickle. A CIFAR
# batch is 2 deep (a dict of lists and arrays); a deeper one, or one holding itself, is refused before
# anything recurses over it (Python's recursion limit is about 1,000).
MAX_DEPTH = 32


def _children(obj: Any) -> Any:
    """What a container holds (None for anything else)."""
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        return obj.ravel().tolist() if obj.ndim else [obj.item()]
    return None


def _check_structure(obj: Any, source: str) -> None:
    """Refuse a container that holds itself (at any distance) or nesting deeper than
    :data:`MAX_DEPTH`, walking without recursion and visiting each container once (shared ones
    too, so a pickle of 40 levels of ``[a, a]`` takes 40 steps, not 2^40)."""
    done: set[int] = set()
    path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(obj, 0, False)]
    while stack:
        item, depth, leaving = stack.pop()
        if leaving:
            path.discard(id(item))
            done.add(id(item))
            continue
        children = _children(item)
        if children is None or id(item) in done:
            continue
        if id(item) in path:
            raise ValueError(f"{source}: the pickle holds a {type(item).__name__} that contains itself; a CIFAR "
                             f"batch file is a dict of arrays and lists")
        if depth >= MAX_DEPTH:
            raise ValueError(f"{source}: the pickle nests containers more than {MAX_DEPTH} levels deep; a CIFAR "
                             f"batch file is a dict of arrays and lists")
        path.add(id(item))
        stack.append((item, depth, True))
        stack.extend((child, depth + 1, False) for child in children)


def _str_keys(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """Dict keys (Python-2 ``str`` read as ``bytes``) decoded to ``str``, recursively for dicts
    (after :func:`_check_structure`: no cycles, bounded depth; a dict shared by several is rebuilt once)."""
    if not isinstance(obj, dict):
        return obj
    memo = {} if memo is None else memo
    if id(obj) not in memo:
        memo[id(obj)] = {(k.decode("latin1") if isinstance(k, bytes) else k): _str_keys(v, memo)
                         for k, v in obj.items()}
    return memo[id(obj)]


def safe_load_pickle(fileobj_or_path: str | os.PathLike | IO[bytes], *, name: str | None = None) -> Any:
    """Load a CIFAR-style pickle, allowing only the numpy globals such files need.

    Python-2 strings come back as ``bytes`` (``encoding="bytes"``); dict keys are then decoded to
    ``str``, so ``d["data"]`` works for the official files and for Python-3 re-pickles alike.

    Args:
        fileobj_or_path: a path or a binary file object.
        name: how to call the file in error messages (default: the path, or the file object's name).

    Raises:
        UntrustedPickleError: the pickle refers to any other global, or calls an allowed one
            with other arguments (nothing else is called).
        ValueError: the file is truncated or not a pickle, or holds a container that contains
            itself or containers nested more than :data:`MAX_DEPTH` deep; the message names the file.

    Example: ``batch = safe_load_pickle("cifar-10-batches-py/data_batch_1")``
    """
    if isinstance(fileobj_or_path, (str, os.PathLike)):
        path = Path(fileobj_or_path)
        with open(path, "rb") as f:
            return safe_load_pickle(f, name=name or str(path))
    source, data = name or str(getattr(fileobj_or_path, "name", "<stream>")), fileobj_or_path.read()
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UntrustedPickleError as exc:
        raise UntrustedPickleError(f"refusing to load untrusted pickle: {exc} ({source})") from None
    except Exception as exc:  # EOFError, UnpicklingError, struct/index errors, numpy setstate errors
        raise ValueError(f"{source}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); "
                         f"the file is {len(data)} bytes") from exc
    _check_structure(obj, source)
    return _str_keys(obj)
