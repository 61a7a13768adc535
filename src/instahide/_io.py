"""Atomic file writes: a crash or a kill never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file next to ``path``; on a clean exit it is flushed, synced and renamed to
    ``path`` (``os.replace``), on an exception it is removed and ``path`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_savez(path: str | os.PathLike, arrays: dict) -> None:
    """``numpy.savez`` of ``arrays`` to ``path``, atomically."""
    with atomic_open(path) as fh:
        np.savez(fh, **arrays)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``numpy.save`` of ``array`` to ``path``, atomically."""
    with atomic_open(path) as fh:
        np.save(fh, array, allow_pickle=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def load_plain_npz(path: str | os.PathLike, what: str) -> dict:
    """All arrays of an ``.npz`` file as a dict, read with ``allow_pickle=False``.

    Raises FileNotFoundError if there is no file, and a ValueError naming ``what`` and the file when it
    is truncated, corrupt or holds pickled objects.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in f.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc} ({what}s hold plain arrays only; "
                         "pickled objects are refused)") from exc


def atomic_torch_save(path: str | os.PathLike, obj) -> None:
    """``torch.save`` of ``obj`` (tensors and plain containers only) to ``path``, atomically."""
    import torch

    with atomic_open(path) as fh:
        torch.save(obj, fh)


def load_torch_checkpoint(path: str | os.PathLike, fmt: str, what: str = "checkpoint") -> dict:
    """A checkpoint dict written by :func:`atomic_torch_save` whose ``"format"`` is ``fmt``, read with
    ``weights_only=True`` (no code from an untrusted file). FileNotFoundError without a file, a
    ValueError naming the file when it is corrupt, truncated or of another format."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"{path} is not an instahide {what} ({fmt})")
    return state
