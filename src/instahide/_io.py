"""Atomic file writes: a crash or a kill never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, secret: bool = False):
    """Open a temporary file next to ``path``; on a clean exit it is flushed, synced and renamed to
    ``path`` (``os.replace``), on an exception it is removed and ``path`` is left untouched.
    ``secret=True`` files (keys, ground truth) are readable by their owner only (mode 0600); others
    get the usual permissions (0666 less the umask). The temporary name carries this process's id,
    so that one a kill leaves behind is removed by the next :func:`sweep` of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_tag()}.", suffix=".tmp")
    _LIVE.add(os.path.realpath(tmp))
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
    finally:
        _LIVE.discard(os.path.realpath(tmp))


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, force: bool = False, *, owned=()):
    """Write a set of files that belong together: yields an empty temporary folder next to ``path``
    to write them into; on a clean exit it takes ``path``'s place in one step and the previous folder
    is deleted, on an exception it is deleted and ``path`` is left as it was. :func:`output_set`
    (without a secret file) tells the rest."""
    with output_set(path, force, owned=owned) as (tmp, _):
        yield tmp


@contextlib.contextmanager
def output_set(path: str | os.PathLike, force: bool = False, *, owned=(), secret=None):
    """Write a folder of files that belong together, and optionally one secret file kept outside it
    (a key, a challenge's ground truth) that must stay paired with it: yields ``(tmp, secret_tmp)``,
    an empty temporary folder next to ``path`` and a temporary name next to ``secret`` (None without
    one) to write into. On a clean exit both take their places together; on an exception (or
    SIGTERM) neither does and the temporaries are deleted.

    The folder is committed in one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two
    renames), the secret file by a second rename. A journal next to ``path`` records the commit: a
    kill at any moment leaves the old folder and secret file, or the new pair, except a kill between
    the two renames, which leaves the journal; the next :func:`sweep` of ``path``'s parent (every
    ``output_set`` or ``output_folder`` there does one on entry) then completes the commit. An
    exception during the commit puts the old folder back. The sweep also removes what killed runs
    left behind (their temporaries carry the process id), as this context removes folders it
    created for ``path``'s parent (and ``secret``'s, made 0700) on failure.

    ``path`` may be absent or empty; a folder with files only when ``force`` is true and it holds
    nothing but ``owned`` names (what this command wrote before), since the whole folder is replaced;
    the same goes for an existing ``secret`` file. These checks, and creating the temporaries, happen
    on entry, before anything is written: NotADirectoryError, FileExistsError or another OSError
    names the problem. Another process that commits ``path`` meanwhile (two runs to the same folder)
    makes the commit fail with FileExistsError instead of replacing that run's work: the check and
    the commit are one step under a lock on ``path``'s parent.
    """
    path = Path(path).resolve()
    secret = None if secret is None else Path(secret).resolve()
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
    if secret is not None:
        if secret == path or path in secret.parents:
            raise ValueError(f"the secret file {secret} would be inside {path}, which is replaced as a whole")
        check_file_destination(secret)
        if os.path.lexists(secret) and not force:
            raise FileExistsError(f"{secret} exists (pass --force to replace it)")
    created = _make_parents(path, 0o777)
    done = keep = False
    tmp = old = secret_tmp = journal = None
    with _terminate_cleanly() as term:
        try:
            if secret is not None:
                created += _make_parents(secret, 0o700)  # the secret's folder: its owner only
            sweep(path.parent)  # finish or undo what killed runs left, before looking at path
            if secret is not None and secret.parent != path.parent:
                sweep(secret.parent)
            start = _identity(path)
            mode = (path.stat().st_mode & 0o7777) if start is not None else 0o777 & ~_umask()
            tag = _tag()
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{tag}.", suffix=".tmp"))
            _LIVE.add(os.path.realpath(tmp))
            rand = tmp.name.split(".")[-2]
            old = tmp.with_name(tmp.name[:-4] + ".old.tmp")
            journal = path.parent / f".{path.name}.{tag}.{rand}.journal"
            _LIVE.add(os.path.realpath(journal))
            if secret is not None:
                secret_tmp = secret.parent / f".{secret.name}.{tag}.{rand}.pending"
            plan = {"out": str(path), "tmp": str(tmp), "old": str(old),
                    "secret": None if secret is None else [str(secret), str(secret_tmp)]}
            _write_journal(journal, {**plan, "phase": "prepare"})  # a kill from here on: undone
            yield tmp, secret_tmp
            os.chmod(tmp, mode)
            _fsync(tmp)
            if secret_tmp is not None and not secret_tmp.is_file():
                raise FileNotFoundError(f"nothing was written for {secret}")
            term["defer"] = True  # a SIGTERM now waits until the commit is complete
            with _locked(path.parent):  # the check and the commit: one step for instahide processes
                if _identity(path) != start:
                    raise FileExistsError(f"{path} was written by another run while this one ran; nothing "
                                          "was replaced (run again with --force to replace it)")
                if secret is not None and not force and os.path.lexists(secret):
                    raise FileExistsError(f"{secret} was written by another run while this one ran; nothing "
                                          "was replaced (run again with --force to replace it)")
                _write_journal(journal, {**plan, "phase": "commit", "new": _identity(tmp)})
                how = _swap_in(tmp, path, old, replace=bool(present))
                try:
                    if secret is not None:
                        _place(secret_tmp, secret, replace=force)
                except BaseException:
                    try:
                        _swap_out(how, tmp, path, old, None if start is None else mode)
                    except BaseException:
                        keep = True  # the journal tells a later sweep to finish the commit
                        raise
                    raise
                done = True
                _fsync(path.parent)
                if secret is not None:
                    _fsync(secret.parent)
                os.unlink(journal)
                _fsync(path.parent)
        finally:
            term["defer"] = True
            if not keep:
                if not done and journal is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(journal)
                for p in (tmp, old):  # the new folder on failure, the old one after the swap
                    if p is not None:
                        shutil.rmtree(p, ignore_errors=True)
                if secret_tmp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(secret_tmp)
            for p in (tmp, journal):
                if p is not None:
                    _LIVE.discard(os.path.realpath(p))
            for parent in reversed(created if not done else []):
                with contextlib.suppress(OSError):
                    parent.rmdir()


def check_file_destination(path: str | os.PathLike) -> None:
    """Raise an OSError naming the problem unless a file can be written at ``path`` (absent or a
    regular file, not a folder, a device or a FIFO, under a folder this process can create files in);
    nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file name")
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # absent (_check_parent tells why)
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(errno.EINVAL, f"{path} exists and is not a regular file (a device, FIFO or socket); "
                                        "refusing to replace it")
    _check_parent(path)


def require_free_space(sizes: dict) -> None:
    """Raise an OSError (ENOSPC) naming the folder unless the file systems of the paths in ``sizes``
    (path -> bytes to be written there) have that much free space (paths on one file system add up)."""
    need: dict = {}
    for path, nbytes in sizes.items():
        folder = Path(path).resolve()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        dev = folder.stat().st_dev
        need[dev] = (folder, need.get(dev, (folder, 0))[1] + int(nbytes))
    for folder, nbytes in need.values():
        free = shutil.disk_usage(folder).free
        if nbytes > free:
            raise OSError(errno.ENOSPC, f"this run writes {_size(nbytes)} but the file system of {folder} has "
                                        f"{_size(free)} free; nothing was written")


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


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


def _make_parents(path: Path, mode: int) -> list[Path]:
    """Create the missing folders above ``path`` (``mode`` less the umask); return them, outermost first."""
    created = []
    for parent in reversed([path.parent, *path.parent.parents]):
        if not parent.exists():
            try:
                parent.mkdir(mode)  # NotADirectoryError/PermissionError name the culprit
            except FileExistsError:  # another process (e.g. another torchrun rank) made it meanwhile
                if not parent.is_dir():
                    raise
                continue  # not ours: never removed by our clean-up
            created.append(parent)
    return created


# -- commits, journals and what killed runs leave behind ---------------------------------------------
# Temporaries are named ".<name>.<pid>-<host>.<random>.<kind>": the process id tells whether their
# writer still runs, the host (a hash of its name, nothing readable) keeps a shared file system's
# other machines out of it.
_HOST = hashlib.sha256(platform.node().encode()).hexdigest()[:6]
_TAGGED = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{6})\.(?P<rest>.+)")
_LIVE: set[str] = set()  # temporaries of this process still in use (a dead run may have had its pid)
_HELD: dict[str, list] = {}  # folders this process holds the lock of: path -> [fd, depth]


def _tag() -> str:
    return f"{os.getpid()}-{_HOST}"


def _dead(entry: Path, match) -> bool:
    """Whether the process that named ``entry`` has ended (on this host)."""
    if match["host"] != _HOST:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return os.path.realpath(entry) not in _LIVE
    try:
        os.kill(pid, 0)  # still running (or someone else's: PermissionError): leave it
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    return False


def _ours(entry: Path) -> bool:
    """Whether this user owns ``entry`` (a sweep never acts on another user's files)."""
    try:
        return not hasattr(os, "getuid") or entry.lstat().st_uid == os.getuid()
    except OSError:
        return False


def sweep(folder: str | os.PathLike) -> None:
    """Finish or undo the commits that killed runs left half-done in ``folder`` (their journals),
    then remove the temporary files and folders they left there. Entries of running processes stay."""
    folder = Path(folder)
    try:
        entries = [(e, _TAGGED.fullmatch(e.name)) for e in folder.iterdir() if e.name.startswith(".")]
    except OSError:
        return
    stale = [(e, m) for e, m in entries if m is not None and _ours(e) and _dead(e, m)]
    blocked = set()
    journals = [(e, m) for e, m in stale if m["rest"].endswith(".journal")]
    if journals:
        with _locked(folder):
            for e, m in journals:
                try:
                    _recover(e)
                except (OSError, ValueError):  # leave its files for a later sweep
                    blocked.add((m["pid"], m["host"]))
    for e, m in stale:
        if (m["pid"], m["host"]) in blocked or not m["rest"].endswith(".tmp"):
            continue  # ".pending" secrets belong to a journal, which removes them
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                e.unlink()


def finish_commits(path: str | os.PathLike) -> None:
    """Before ``path`` (an output folder) is read: finish or undo the commits of ``path`` that killed
    runs left half-done (their journals next to it), so that a reader never sees a new folder beside
    its old key. A failure leaves the journal for a later sweep; nothing else is touched."""
    path = Path(path)
    try:
        entries = [e for e in path.parent.iterdir() if e.name.startswith(f".{path.name}.") and e.name.endswith(".journal")]
    except OSError:
        return
    for e in entries:
        m = _TAGGED.fullmatch(e.name)
        if m is None or m["name"] != path.name or not _ours(e) or not _dead(e, m):
            continue
        with contextlib.suppress(OSError, ValueError), _locked(path.parent):
            _recover(e)


def _recover(journal: Path) -> None:
    """Complete (phase "commit") or undo (phase "prepare") the commit ``journal`` describes."""
    try:
        plan = json.loads(journal.read_text())
        out, tmp, old = Path(plan["out"]), Path(plan["tmp"]), Path(plan["old"])
        secret, secret_tmp = (Path(p) for p in plan["secret"]) if plan.get("secret") else (None, None)
        phase = plan["phase"]
    except FileNotFoundError:
        return  # another sweep finished it
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable commit journal {journal}: {exc}") from exc
    # act only on the paths a journal of this name may name (a planted one cannot point elsewhere)
    m = _TAGGED.fullmatch(journal.name)
    tag, rand = f"{m['pid']}-{m['host']}", m["rest"][:-len(".journal")]
    here = journal.parent.resolve()
    expected = (here / m["name"], here / f".{m['name']}.{tag}.{rand}.tmp", here / f".{m['name']}.{tag}.{rand}.old.tmp")
    if (out, tmp, old) != expected or (secret is not None and (
            secret_tmp.parent != secret.parent or secret_tmp.name != f".{secret.name}.{tag}.{rand}.pending")):
        raise ValueError(f"commit journal {journal} names paths it cannot have written; left as it is")
    new = list(plan.get("new") or [])
    if phase == "commit" and _identity(out) != new and _identity(tmp) != new:
        phase = "obsolete"  # the folder it committed is gone (replaced or deleted since): nothing to pair
    if phase == "commit":
        if _identity(out) != new:
            _swap_in(tmp, out, old, replace=out.exists())
        if secret is not None and os.path.lexists(secret_tmp):
            if os.path.lexists(secret) and os.path.samefile(secret, secret_tmp):
                os.unlink(secret_tmp)
            else:
                os.replace(secret_tmp, secret)
            _fsync(secret.parent)
        _fsync(out.parent)
    elif secret_tmp is not None:  # "prepare": nothing was committed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(secret_tmp)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)


def _write_journal(path: Path, plan: dict) -> None:
    atomic_write_text(path, json.dumps(plan) + "\n", secret=True)
    _fsync(path.parent)


def _identity(path: Path):
    """``(device, inode)`` of an existing folder, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino]


def _swap_in(tmp: Path, path: Path, old: Path, *, replace: bool) -> str:
    """Put the folder ``tmp`` at ``path``; return how (for :func:`_swap_out`)."""
    if not replace:  # absent or empty: one rename, which fails if another run filled it meanwhile
        try:
            os.rename(tmp, path)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(f"{path} was written by another run while this one ran; nothing was "
                                      "replaced (run again with --force to replace it)") from exc
            raise
        return "rename"
    if _exchange(tmp, path):
        return "exchange"
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    return "renames"


def _swap_out(how: str, tmp: Path, path: Path, old: Path, mode: int | None) -> None:
    """Undo :func:`_swap_in`: the new folder back to ``tmp``, the old one to ``path`` (an empty
    folder of ``mode`` where it was an empty folder, nothing where ``mode`` is None)."""
    if how == "exchange":
        if not _exchange(tmp, path):
            raise OSError(f"cannot swap {tmp} and {path} back")
    elif how == "renames":
        os.rename(path, tmp)
        os.rename(old, path)
    else:
        os.rename(path, tmp)
        if mode is not None:
            os.mkdir(path)
            os.chmod(path, mode)


def _place(src: Path, dst: Path, *, replace: bool) -> None:
    """Rename the file ``src`` to ``dst``; without ``replace`` only if ``dst`` does not exist (a hard
    link, then the unlink, so that the check and the rename are one step)."""
    if replace:
        os.replace(src, dst)
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise FileExistsError(f"{dst} was written by another run while this one ran; nothing was replaced "
                              "(run again with --force to replace it)") from None
    except OSError:  # no hard links on this file system
        if os.path.lexists(dst):
            raise FileExistsError(f"{dst} exists; nothing was replaced") from None
        os.replace(src, dst)
        return
    os.unlink(src)


@contextlib.contextmanager
def _locked(folder: Path, timeout: float = 120.0):
    """Hold an exclusive advisory lock (``flock``) on ``folder`` (re-entrant in this process); commits
    into one folder by instahide processes take turns. Where locks are unsupported, no lock."""
    key = str(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process has held the commit lock of {folder} for over "
                                       f"{timeout:.0f} s") from None
                time.sleep(0.02)
            except OSError:  # e.g. a file system without locks
                break
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock


class Terminated(SystemExit):
    """Raised by SIGTERM inside :func:`output_set` (exit status 143), so that its temporaries go."""


@contextlib.contextmanager
def _terminate_cleanly():
    """Turn SIGTERM into :class:`Terminated` while the block runs (main thread, default handler only);
    with ``state["defer"]`` set, the signal waits until the block ends."""
    state = {"defer": False, "pending": False}
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield state
        return

    def handler(signum, frame):
        if state["defer"]:
            state["pending"] = True
        else:
            raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if state["pending"]:
        raise Terminated(128 + signal.SIGTERM)


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
