from __future__ import annotations

import codecs
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


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_repickles_of_a_cifar_batch_load(py2_pickle, repickle, protocol):
    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    batch = {b"data": data, b"labels": [1, 2, 3], b"batch_label": b"b", b"filenames": [b"a.png", b""]}
    for str_keys in (False, True):
        out = safe_load_pickle(io.BytesIO(repickle(py2_pickle(batch), protocol, str_keys)))
        np.testing.assert_array_equal(out["data"], data)
        assert out["labels"] == [1, 2, 3] and out["filenames"] == [b"a.png", b""]


@pytest.mark.parametrize(
    "call",
    [
        (codecs.encode, "abc", "rot13"),       # other codecs
        (codecs.encode, "abc", "utf-16"),
        (codecs.encode, b"x\x9c\x03", "zlib"),
        (codecs.encode, "abc", "latin1", "strict"),  # extra argument
        (codecs.encode, 5, "latin1"),            # not text
        (bytes, 10**12),                         # bytes() only without arguments
    ],
)
def test_codecs_and_bytes_only_as_python3_writes_bytes(call, tmp_path):
    # Python 3 writes b"..." at protocol 2 as _codecs.encode("...", "latin1") and b"" as bytes():
    # exactly those calls are admitted, nothing else reachable through the same globals.
    blob = pickle.dumps({"data": _Calls(*call), "x": _RunsCommand(f"touch {tmp_path / 'pwned'}")}, protocol=2)
    assert b"_codecs" in blob or b"bytes" in blob
    with pytest.raises(UntrustedPickleError, match="refusing to load untrusted pickle"):
        safe_load_pickle(io.BytesIO(blob))
    assert not (tmp_path / "pwned").exists()


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


def _text(key: str) -> bytes:  # BINUNICODE
    return b"X" + len(key.encode()).to_bytes(4, "little") + key.encode()


def _deep_dict(depth: int) -> bytes:
    """{"a": {"a": ... {} ...}} ``depth`` levels deep, written opcode by opcode (pickle.dumps recurses)."""
    return b"\x80\x02" + (b"}" + _text("a")) * depth + b"}" + b"s" * depth + b"."


def _deep_list(depth: int) -> bytes:
    return b"\x80\x02" + b"]" * (depth + 1) + b"a" * depth + b"."


def _self_dict():
    d = {b"data": np.zeros((1, 3072), np.uint8)}
    d[b"self"] = d
    return d


def _self_list():
    labels = [0]
    labels.append(labels)
    return {b"labels": labels}


def _self_array():
    a = np.empty(2, dtype=object)
    a[0], a[1] = 1, [a]
    return {b"data": a}


@pytest.mark.parametrize("blob,message", [
    (lambda: pickle.dumps(_self_dict(), protocol=2), "a dict that contains itself"),
    (lambda: pickle.dumps(_self_list(), protocol=2), "a list that contains itself"),
    (lambda: pickle.dumps(_self_array(), protocol=2), "contains itself"),
    (lambda: _deep_dict(100_000), "more than 32 levels deep"),
    (lambda: _deep_list(100_000), "more than 32 levels deep"),
    (lambda: _deep_dict(33), "more than 32 levels deep"),
])
def test_self_referencing_or_very_deep_pickles_are_value_errors_naming_the_file(tmp_path, blob, message):
    # was a RecursionError (decoding dict keys recursed over the structure)
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob())
    with pytest.raises(ValueError, match=f"data_batch_1: the pickle (holds|nests) .*{message}"):
        safe_load_pickle(path)


def test_shared_containers_are_walked_once_and_nesting_to_the_limit_loads(tmp_path):
    shared: dict = {}
    for _ in range(31):  # 31 levels of {"a": x, "b": x}: 2^31 paths, 31 distinct dicts
        shared = {"a": shared, "b": shared}
    path = tmp_path / "shared"
    path.write_bytes(pickle.dumps(shared, protocol=2))
    obj = safe_load_pickle(path)  # was exponential: each path rebuilt
    assert obj["a"] is obj["b"]
    path.write_bytes(_deep_dict(31))
    assert isinstance(safe_load_pickle(path), dict)
