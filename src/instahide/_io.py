"""Atomic file writes: a crash or a kill never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, secret: bool = False):
    """Open a temporary file next to ``path``; on a clean exit it is flushed, synced and renamed to
    ``path`` (``os.replace``), on an exception it is removed and ``path`` is left untouched.
    ``secret=True`` files (keys, ground truth) are readable by their owner only (mode 0600); others
    get the usual permissions (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if not secret:  # mkstemp makes 0600 files
        os.chmod(tmp, 0o666 & ~_umask())
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


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, force: bool = False, *, owned=()):
    """Write a set of files that belong together: yields an empty temporary folder next to ``path``
    to write them into; on a clean exit it takes ``path``'s place in one step (Linux
    ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames) and the previous folder is deleted, on an
    exception it is deleted and ``path`` is left as it was. A kill at any moment leaves ``path``
    holding the old complete set or the new one; the temporary folder a kill leaves behind is removed
    by the next call for the same ``path``, as are folders it created for ``path``'s parent on failure.

    ``path`` may be absent or empty; a folder with files only when ``force`` is true and it holds
    nothing but ``owned`` names (what this command wrote before), since the whole folder is replaced.
    These checks, and creating the temporary folder, happen on entry, before anything is written:
    NotADirectoryError, FileExistsError or another OSError names the problem.
    """
    path = Path(path).resolve()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    _check_parent(path)
    present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    foreign = [name for name in present if name not in owned]
    if foreign:
        raise FileExistsError(f"{path} holds files this command did not write ({', '.join(foreign[:5])}); "
                              "the whole folder is replaced, so give a new or empty one")
    if present and not force:
        raise FileExistsError(f"{path} already holds {', '.join(present)} (pass --force to replace them)")
    created = []
    for parent in reversed([path.parent, *path.parent.parents]):
        if not parent.exists():
            parent.mkdir()  # NotADirectoryError/PermissionError name the culprit
            created.append(parent)
    mode = (path.stat().st_mode & 0o7777) if path.is_dir() else 0o777 & ~_umask()
    _sweep(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    done = False
    try:
        yield tmp
        os.chmod(tmp, mode)
        _fsync(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif not _exchange(tmp, path):
            old = tmp.with_name(tmp.name[:-4] + ".old.tmp")
            os.rename(path, old)
            os.rename(tmp, path)
            tmp = old
        done = True
        _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new folder on failure, the old one after the swap
        for parent in reversed(created if not done else []):
            with contextlib.suppress(OSError):
                parent.rmdir()


def check_file_destination(path: str | os.PathLike) -> None:
    """Raise an OSError naming the problem unless a file can be written at ``path`` (not a folder,
    under a folder this process can create files in); nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file name")
    _check_parent(path)


def _check_parent(path: Path) -> None:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is not a folder")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise type(exc)(f"cannot write {path}: cannot create files in {folder} ({exc.strerror or exc})") from exc


def _sweep(path: Path) -> None:
    """Remove temporary siblings of ``path`` left by :func:`output_folder` runs that were killed."""
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = stale.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)  # still running (or someone else's: PermissionError): leave it
            except ProcessLookupError:
                shutil.rmtree(stale, ignore_errors=True)
            except PermissionError:
                pass


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_savez(path: str | os.PathLike, arrays: dict, *, secret: bool = False) -> None:
    """``numpy.savez`` of ``arrays`` to ``path``, atomically (``secret``: see :func:`atomic_open`)."""
    with atomic_open(path, secret=secret) as fh:
        np.savez(fh, **arrays)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray, *, secret: bool = False) -> None:
    """``numpy.save`` of ``array`` to ``path``, atomically (``secret``: see :func:`atomic_open`)."""
    with atomic_open(path, secret=secret) as fh:
        np.save(fh, array, allow_pickle=False)


def atomic_write_text(path: str | os.PathLike, text: str, *, secret: bool = False) -> None:
    with atomic_open(path, "w", secret=secret) as fh:
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


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend; ImportError without the plot extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('pictures need matplotlib: pip install "instahide[plot]"') from exc
    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG atomically (a killed run never leaves a half-written picture) and close it."""
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png", dpi=100)
    pyplot().close(fig)
