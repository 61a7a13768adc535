"""Explicit, checksummed downloads of the official dataset files (standard library ``urllib`` only).

Nothing here runs unless asked: loaders never download. A download streams to a temporary file in
the destination folder, is checked against its checksum, and only then is moved into place with
``os.replace``, so a failed or corrupted download never leaves a file behind.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = [
    "download", "download_cifar10", "download_cifar100", "download_mnist", "download_fashion_mnist",
    "DownloadError", "ChecksumError",
    "CIFAR10_URL", "CIFAR10_MD5", "CIFAR100_URL", "CIFAR100_MD5",
    "MNIST_BASE_URL", "MNIST_MD5", "FASHION_MNIST_BASE_URL", "FASHION_MNIST_MD5",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
MNIST_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


class DownloadError(OSError):
    """A download failed (network or HTTP error); no file was written."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected checksum; no file was written."""


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest`` (a file path, or an existing folder to keep the URL's file name).

    If ``dest`` already exists and matches the checksum (or no checksum is given), nothing is
    downloaded. Returns the file's path.

    Raises:
        DownloadError: HTTP error (e.g. 404), network error or timeout.
        ChecksumError: the bytes' sha256/md5 differs; the message gives expected and actual.

    Example: ``download(CIFAR10_URL, "data/", md5=CIFAR10_MD5)``
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"only http(s) URLs can be downloaded, got {url!r}")
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / Path(urllib.parse.urlparse(url).path).name
    checks = [(a, v.lower()) for a, v in (("sha256", sha256), ("md5", md5)) if v]
    if dest.is_file() and all(_digest(dest, a) == v for a, v in checks):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        hashes = {a: hashlib.new(a) for a, _ in checks}
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        for h in hashes.values():
                            h.update(chunk)
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"download of {url} failed: {reason}") from exc
        for algorithm, expected in checks:
            actual = hashes[algorithm].hexdigest()
            if actual != expected:
                raise ChecksumError(
                    f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; "
                    f"the download was discarded"
                )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def download_cifar10(root: str | os.PathLike, *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Download ``cifar-10-python.tar.gz`` (163 MB) into folder ``root``; :func:`load_cifar10`
    reads it there without extracting. Example: ``load_cifar10(download_cifar10("data"))``"""
    Path(root).expanduser().mkdir(parents=True, exist_ok=True)
    return download(url, Path(root).expanduser() / "cifar-10-python.tar.gz", md5=md5)


def download_cifar100(root: str | os.PathLike, *, url: str = CIFAR100_URL, md5: str = CIFAR100_MD5) -> Path:
    """Download ``cifar-100-python.tar.gz`` (161 MB) into folder ``root``.
    Example: ``load_cifar100(download_cifar100("data"))``"""
    Path(root).expanduser().mkdir(parents=True, exist_ok=True)
    return download(url, Path(root).expanduser() / "cifar-100-python.tar.gz", md5=md5)


def _download_idx(folder: Path, base_url: str, md5s: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    for name, md5 in md5s.items():
        download(base + name, folder / name, md5=md5)
    return folder


def download_mnist(root: str | os.PathLike, *, base_url: str = MNIST_BASE_URL) -> Path:
    """Download the four MNIST ``.gz`` idx files into ``root/mnist/`` and return that folder.
    Example: ``load_mnist(download_mnist("data"))``"""
    return _download_idx(Path(root).expanduser() / "mnist", base_url, MNIST_MD5)


def download_fashion_mnist(root: str | os.PathLike, *, base_url: str = FASHION_MNIST_BASE_URL) -> Path:
    """Download the four Fashion-MNIST ``.gz`` idx files into ``root/fashion-mnist/``.
    Example: ``load_mnist(download_fashion_mnist("data"), name="fashion-mnist")``"""
    return _download_idx(Path(root).expanduser() / "fashion-mnist", base_url, FASHION_MNIST_MD5)
