from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from instahide.data import UntrustedPickleError, safe_load_pickle


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Calls:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def test_reads_py2_cifar_style_pickle_with_bytes_keys(py2_pickle):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    blob = py2_pickle({b"data": data, b"labels": [3, 7], b"batch_label": b"x", b"filenames": [b"a", b"b"]})
    out = safe_load_pickle(io.BytesIO(blob))
    assert set(out) == {"data", "labels", "batch_label", "filenames"}
    np.testing.assert_array_equal(out["data"], data)
    assert out["labels"] == [3, 7] and out["filenames"] == [b"a", b"b"]


@pytest.mark.parametrize("protocol", [3, 4])
def test_reads_python3_numpy_pickles(tmp_path, protocol):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"data": arr}, protocol=protocol))
    np.testing.assert_array_equal(safe_load_pickle(path)["data"], arr)


def test_python3_protocol2_bytes_need_codecs_and_are_refused():
    # Python 3 writes bytes under protocol 2 as _codecs.encode(...): never in a real CIFAR file.
    blob = pickle.dumps({"data": b"abc"}, protocol=2)
    with pytest.raises(UntrustedPickleError, match="global '_codecs.encode'"):
        safe_load_pickle(io.BytesIO(blob))


def test_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"data": _RunsCommand(f"touch {marker}")}, protocol=2)
    with pytest.raises(UntrustedPickleError, match=r"refusing to load untrusted pickle: global '(os|posix)\.system' is not allowed in a CIFAR batch file"):
        safe_load_pickle(io.BytesIO(blob))
    assert not marker.exists()


@pytest.mark.parametrize("fn", [print, os.getcwd, eval, np.load, np.frombuffer])
def test_refuses_other_callables(fn, capsys):
    args = ("side effect",) if fn in (print, eval) else ()
    blob = pickle.dumps(_Calls(fn, *args), protocol=4)
    with pytest.raises(UntrustedPickleError, match="is not allowed in a CIFAR batch file"):
        safe_load_pickle(io.BytesIO(blob), name="evil_batch")
    assert capsys.readouterr().out == ""


def test_untrusted_error_is_value_and_unpickling_error():
    assert issubclass(UntrustedPickleError, ValueError)
    assert issubclass(UntrustedPickleError, pickle.UnpicklingError)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "data_batch_9"
    path.write_bytes(pickle.dumps(_Calls(print, "x"), protocol=2))
    with pytest.raises(UntrustedPickleError, match=r"(__builtin__|builtins)\.print.*data_batch_9"):
        safe_load_pickle(path)


def test_truncated_pickle_names_the_file(tmp_path, py2_pickle):
    blob = py2_pickle({b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))})
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"data_batch_1: truncated or corrupt pickle"):
        safe_load_pickle(path)


def test_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / "not_a_pickle"
    path.write_bytes(b"hello world, definitely not a pickle")
    with pytest.raises(ValueError, match="not_a_pickle: truncated or corrupt pickle"):
        safe_load_pickle(path)
