"""Downloads against a local HTTP server only (127.0.0.1, port chosen by the OS)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import importlib
import shutil
import tarfile
import threading

import numpy as np
import pytest

from instahide.data import (
    ChecksumError, DownloadError, download, download_cifar10, download_mnist, load_cifar10,
    load_dataset, load_mnist,
)
from instahide.data.downloads import MNIST_MD5


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve():
    """serve(folder) -> base URL of a local HTTP server for that folder."""
    servers = []

    def start(folder):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_download_with_right_checksum(tmp_path, serve):
    (tmp_path / "www").mkdir()
    payload = b"instahide" * 1000
    (tmp_path / "www" / "f.bin").write_bytes(payload)
    url = serve(tmp_path / "www") + "f.bin"
    out = tmp_path / "out"
    out.mkdir()
    path = download(url, out, sha256=hashlib.sha256(payload).hexdigest(), md5=hashlib.md5(payload).hexdigest())
    assert path == out / "f.bin" and path.read_bytes() == payload
    assert _leftovers(out) == ["f.bin"]
    # present and matching: not downloaded again (the server file is gone)
    (tmp_path / "www" / "f.bin").unlink()
    assert download(url, out / "f.bin", md5=hashlib.md5(payload).hexdigest()) == path


def test_wrong_checksum_leaves_no_file(tmp_path, serve):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.bin").write_bytes(b"abc")
    url = serve(tmp_path / "www") + "f.bin"
    out = tmp_path / "out"
    out.mkdir()
    actual = hashlib.md5(b"abc").hexdigest()
    with pytest.raises(ChecksumError, match=rf"checksum mismatch for .*f\.bin: expected md5 0{{32}}, got {actual}"):
        download(url, out / "f.bin", md5="0" * 32)
    assert _leftovers(out) == []


def test_http_404_is_a_clear_error(tmp_path, serve):
    (tmp_path / "www").mkdir()
    url = serve(tmp_path / "www") + "nothing.tar.gz"
    with pytest.raises(DownloadError, match=r"download of .*nothing\.tar\.gz failed: HTTP 404"):
        download(url, tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()
    assert [p for p in tmp_path.iterdir() if p.name != "www"] == []


def test_refuses_non_http_urls(tmp_path):
    with pytest.raises(ValueError, match="only http"):
        download("file:///etc/passwd", tmp_path / "x")


def test_download_cifar10_then_load(tmp_path, serve, cifar10_writer):
    written = cifar10_writer(tmp_path / "src", rows=4)
    (tmp_path / "www").mkdir()
    archive = tmp_path / "www" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    url = serve(tmp_path / "www") + "cifar-10-python.tar.gz"
    path = download_cifar10(tmp_path / "data", url=url, md5=md5)
    assert path.name == "cifar-10-python.tar.gz"
    ds = load_cifar10(tmp_path / "data", "test")
    np.testing.assert_array_equal(ds.images, written["test_batch"][0].reshape(-1, 3, 32, 32))


def test_official_mnist_checksums_via_local_mirror(tmp_path, serve, shared_data):
    """Serves the real (byte-identical) MNIST files locally: proves the md5 constants are right."""
    src = shared_data / "mnist"
    if not all((src / name).is_file() for name in MNIST_MD5):
        pytest.skip("no MNIST .gz files in the shared data")
    www = tmp_path / "www"
    shutil.copytree(src, www)
    folder = download_mnist(tmp_path / "data", base_url=serve(www))
    assert folder == tmp_path / "data" / "mnist"
    assert sorted(_leftovers(folder)) == sorted(MNIST_MD5)
    assert load_mnist(tmp_path / "data", "test").images.shape == (10000, 1, 28, 28)


def test_load_dataset_download_flag(tmp_path, serve, monkeypatch, idx_writer):
    """download=True fetches when files are missing (URL redirected to a local mirror)."""
    # the module (instahide.data.download is the re-exported function)
    dl = importlib.import_module("instahide.data.downloads")

    www = tmp_path / "www"
    www.mkdir()
    rng = np.random.default_rng(0)
    idx_writer(www / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), True)
    idx_writer(www / "t10k-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8), True)
    idx_writer(www / "train-images-idx3-ubyte", rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), True)
    idx_writer(www / "train-labels-idx1-ubyte", np.array([4, 5], np.uint8), True)
    md5s = {name: hashlib.md5((www / name).read_bytes()).hexdigest() for name in dl.MNIST_MD5}
    monkeypatch.setattr(dl, "MNIST_MD5", md5s)
    monkeypatch.setattr(dl, "download_mnist", functools.partial(dl.download_mnist, base_url=serve(www)))
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", root=tmp_path / "data", split="test")
    ds = load_dataset("mnist", root=tmp_path / "data", split="test", download=True)
    assert ds.labels.tolist() == [1, 2, 3]
