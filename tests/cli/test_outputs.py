"""What `instahide encrypt` leaves on disk: complete sets only (even when killed), private keys,
unlabelled data, and one-line errors for destinations it cannot write."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
import instahide  # noqa: E402
from instahide import _io  # noqa: E402
from instahide.cli import encrypt_cmd  # noqa: E402
from instahide.cli.main import main  # noqa: E402
from instahide.distributed import load_encrypted  # noqa: E402
from instahide.scheme import Key, apply_key  # noqa: E402

OUTPUTS = ["encryption.npy", "label.npy", "meta.json"]
SRC = str(Path(instahide.__file__).resolve().parents[1])


def _mode(path) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def _one_line_error(capsys, cmd: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"instahide {cmd}: error: ") and "Traceback" not in err, err
    return lines[0]


# -- secrets ----------------------------------------------------------------------------------------
def test_secret_files_are_owner_only_others_follow_the_umask(tmp_path):
    mask = os.umask(0o022)
    try:
        _io.atomic_write_text(tmp_path / "plain.txt", "x")
        _io.atomic_write_text(tmp_path / "truth.txt", "x", secret=True)
        _io.atomic_save_npy(tmp_path / "truth.npy", np.zeros(3), secret=True)
        _io.atomic_savez(tmp_path / "truth.npz", {"a": np.zeros(3)}, secret=True)
        (tmp_path / "old.txt").write_text("readable")           # replacing a 0644 file narrows it
        _io.atomic_write_text(tmp_path / "old.txt", "secret", secret=True)
    finally:
        os.umask(mask)
    assert _mode(tmp_path / "plain.txt") == 0o644
    for name in ("truth.txt", "truth.npy", "truth.npz", "old.txt"):
        assert _mode(tmp_path / name) == 0o600, name


def test_key_file_is_written_owner_only_and_help_says_so(tmp_path, capsys):
    mask = os.umask(0o022)
    try:
        key = tmp_path / "secret" / "keys.npz"
        assert main(["encrypt", "--out", str(tmp_path / "enc"), "--subset", "30", "--key-out", str(key)]) == 0
    finally:
        os.umask(mask)
    assert _mode(key) == 0o600 and _mode(key.parent) == 0o700
    assert _mode(tmp_path / "enc" / "encryption.npy") == 0o644 and _mode(tmp_path / "enc") == 0o755
    meta = json.loads((tmp_path / "enc" / "meta.json").read_text())
    assert meta["keys"]["key_id"] == Key.load(key).meta["key_id"] and "sha256" not in meta["keys"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["encrypt", "--help"])
    assert "0600" in capsys.readouterr().out


@pytest.mark.parametrize("exchange", [True, False])  # renameat2 RENAME_EXCHANGE, or two renames
def test_output_folder_replaces_the_whole_set_or_nothing(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    out = tmp_path / "set"
    with _io.output_folder(out) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with pytest.raises(RuntimeError), _io.output_folder(out, force=True, owned=("a", "b")) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("crash half-way")
    assert _files(out) == {"a": b"1", "b": b"1"}
    with _io.output_folder(out, force=True, owned=("a", "b")) as tmp:
        (tmp / "a").write_text("3")
    assert _files(out) == {"a": b"3"} and sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    with pytest.raises(FileExistsError, match="pass --force"), _io.output_folder(out, owned=("a",)):
        pass


# -- every destination is checked before anything is written ---------------------------------------
def _old_set(tmp_path):
    out, key = tmp_path / "enc", tmp_path / "keys" / "k.npz"
    assert main(["encrypt", "--out", str(out), "--subset", "40", "--key-out", str(key)]) == 0
    return out, key, {p.name: p.read_bytes() for p in out.iterdir()}, key.read_bytes()


@pytest.mark.parametrize("bad_key", ["under-a-file", "a-folder", "beside-meta", "inside-a-subfolder"])
def test_a_key_path_that_cannot_be_written_keeps_the_old_outputs(tmp_path, capsys, bad_key):
    out, key, before, key_before = _old_set(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder").mkdir()
    target = {"under-a-file": tmp_path / "afile" / "k.npz", "a-folder": tmp_path / "afolder",
              "beside-meta": out / "meta.json", "inside-a-subfolder": out / "sub" / "k.npz"}[bad_key]
    capsys.readouterr()
    assert main(["encrypt", "--out", str(out), "--subset", "40", "--force", "--key-out", str(target)]) == 2
    _one_line_error(capsys, "encrypt")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and key.read_bytes() == key_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "afolder", "enc", "keys"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_key_folder_keeps_the_old_outputs(tmp_path, capsys):
    out, key, before, _ = _old_set(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["encrypt", "--out", str(out), "--subset", "40", "--force", "--key-out", str(ro / "k.npz")]) == 2
    finally:
        ro.chmod(0o755)
    assert "cannot create files in" in _one_line_error(capsys, "encrypt")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("case", ["out-is-a-file", "out-under-a-file", "out-in-proc", "out-with-other-files"])
def test_bad_out_folders_are_one_line_errors_and_leave_nothing(tmp_path, capsys, case):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    out = {"out-is-a-file": tmp_path / "afile", "out-under-a-file": tmp_path / "afile" / "x" / "enc",
           "out-in-proc": Path("/proc/instahide-test/enc"), "out-with-other-files": tmp_path / "mine"}[case]
    assert main(["encrypt", "--out", str(out), "--subset", "20", "--force"]) == 2
    line = _one_line_error(capsys, "encrypt")
    assert {"out-is-a-file": "is not a folder", "out-under-a-file": "afile is not a folder",
            "out-in-proc": "cannot create files in /proc",
            "out-with-other-files": "holds files this command did not write (notes.txt)"}[case] in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]
    assert (tmp_path / "afile").read_text() == "x" and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("argv,message", [(["--dataset", "cifar10"], "needs a root"),            # loading
                                          (["--k", "5", "--subset", "3"], "too few images")])  # encrypting
def test_failures_leave_no_folders(tmp_path, capsys, argv, message):
    out = tmp_path / "new" / "deeper" / "enc"
    assert main(["encrypt", "--out", str(out), *argv]) == 2
    assert message in _one_line_error(capsys, "encrypt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd", ["encrypt", "show"])
def test_images_without_pixels_are_refused_at_the_door(tmp_path, capsys, monkeypatch, cmd):
    fake = SimpleNamespace(name="fake", num_classes=3, classes=None, mean=(0.0,), std=(1.0,))
    monkeypatch.setattr(encrypt_cmd, "load_private",
                        lambda args: (fake, torch.zeros(6, 1, 0, 8), torch.zeros(6, dtype=torch.long)))
    out = tmp_path / ("x.png" if cmd == "show" else "x")
    assert main([cmd, "--out", str(out)]) == 2
    assert "(C, H, W) = (1, 0, 8)" in _one_line_error(capsys, cmd)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["a-folder", "under-a-file", "in-proc"])
def test_show_bad_destinations(tmp_path, capsys, case):
    (tmp_path / "afile").write_text("x")
    out = {"a-folder": tmp_path, "under-a-file": tmp_path / "afile" / "g.png", "in-proc": Path("/proc/g.png")}[case]
    assert main(["show", "--out", str(out), "--n", "2", "--subset", "20", "--force"]) == 2
    _one_line_error(capsys, "show")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# -- unlabelled private data ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["png-folder", "npz-without-labels"])
def test_unlabelled_data_is_encrypted_without_label_file(tmp_path, capsys, kind):
    PIL = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    if kind == "png-folder":
        root = tmp_path / "flat"
        root.mkdir()
        for i, im in enumerate(images):
            PIL.fromarray(im).save(root / f"{i:02d}.png")
        argv = ["--dataset", "folder", "--root", str(root)]
    else:
        root = tmp_path / "x.npz"
        np.savez(root, images=images)
        argv = ["--dataset", "arrays", "--root", str(root)]
    out, key = tmp_path / "enc", tmp_path / "k" / "key.npz"
    assert main(["encrypt", "--out", str(out), "--epochs", "2", "--key-out", str(key), *argv]) == 0
    assert "no label.npy" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["encryption.npy", "meta.json"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["labelled"] is False and meta["num_classes"] is None and meta["rows"] == 24
    enc = np.load(out / "encryption.npy")
    assert enc.shape == (24, 8, 8, 3)
    assert meta["files"]["encryption.npy"]["sha256"] == _io.sha256_file(out / "encryption.npy")
    # independent reference: the images as PIL/numpy read them, normalised with the recorded mean/std
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    k = Key.load(key)
    again = torch.cat([apply_key(x, k[e * 12:(e + 1) * 12]) for e in range(2)])
    assert np.allclose(again.permute(0, 2, 3, 1).numpy(), enc, atol=1e-5)
    with pytest.raises(ValueError, match="unlabelled"):
        load_encrypted(out)


# -- exact options, and the subcommand's usage on an unknown one -----------------------------------
@pytest.mark.parametrize("argv,usage", [
    (["encrypt", "--out", "{out}", "--subset", "20", "--fo"], "usage: instahide encrypt "),
    (["encrypt", "--out", "{out}", "--subset", "20", "--bogus"], "usage: instahide encrypt "),
    (["encrypt", "--out", "{out}", "--sub", "20", "--force"], "usage: instahide encrypt "),
    (["show", "--out", "{out}/g.png", "--fo"], "usage: instahide show "),
    (["train", "--out", "{out}", "--res"], "usage: instahide train "),          # not --resume
    (["challenge", "make", "--out", "{out}", "--fo"], "usage: instahide challenge make "),
    (["challenge", "make", "--out", "{out}", "--bogus"], "usage: instahide challenge make "),
    (["datasets", "extra"], "usage: instahide datasets"),
])
def test_options_must_be_exact_and_errors_show_the_commands_usage(tmp_path, capsys, argv, usage):
    out = tmp_path / "enc"
    assert main(["encrypt", "--out", str(out), "--subset", "20"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([a.replace("{out}", str(out)) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and "usage: instahide [-h]" not in err, err
    assert "error: unrecognized arguments: " in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_top_level_options_are_exact_too(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--vers"])
    assert e.value.code == 2 and "usage: instahide [-h]" in capsys.readouterr().err


# -- a kill at any moment leaves the old complete set or the new one -------------------------------
# A server process imports instahide once and, per request "N", forks a child that runs `instahide
# encrypt` and SIGKILLs itself at the N-th call made by the code that writes the folder (0: no kill,
# and the calls are listed in TRACE). It answers with the child's wait status.
SERVER = r"""
import json, os, signal, sys
from instahide.cli import encrypt_cmd
from instahide.cli.main import main
OURS = ("_io.py", "encrypt_cmd.py", "encrypted.py")

def unprofiled(f):  # loading and encrypting write nothing: one kill point each, run at full speed
    def call(*args, **kwargs):
        hook = sys.getprofile()
        sys.setprofile(None)
        try:
            return f(*args, **kwargs)
        finally:
            sys.setprofile(hook)
    return call

for name in ("load_private", "load_public", "encrypt", "make_generator", "Progress"):
    setattr(encrypt_cmd, name, unprofiled(getattr(encrypt_cmd, name)))

def run(target, trace):
    names = []

    def profile(frame, event, arg):
        caller = frame if event == "c_call" else frame.f_back
        if event in ("call", "c_call") and caller and caller.f_code.co_filename.endswith(OURS):
            names.append(getattr(arg, "__name__", "?") if event == "c_call" else frame.f_code.co_name)
            if len(names) == target:
                os.kill(os.getpid(), signal.SIGKILL)

    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1), os.dup2(null, 2)
    sys.setprofile(profile)
    rc = main(sys.argv[1:])
    sys.setprofile(None)
    if trace:
        open(trace, "w").write(json.dumps(names))
    os._exit(rc)

for line in sys.stdin:
    target, trace = line.split()[0], (line.split() + [""])[1]
    pid = os.fork()
    if pid == 0:
        run(int(target), trace)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.filterwarnings("ignore:.*derive from a seed")
def test_a_kill_at_any_moment_leaves_a_complete_set(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    out = root / "enc"
    args = ["encrypt", "--subset", "50", "--epochs", "3"]
    assert main([*args, "--out", str(out), "--research-seed", "1"]) == 0
    assert main([*args, "--out", str(tmp_path / "new"), "--research-seed", "2"]) == 0
    old, new = _files(out), _files(tmp_path / "new")
    arrays = ("encryption.npy", "label.npy")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-c", SERVER, *args, "--out", str(out), "--force",
                               "--research-seed", "2"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def child(kill_at, trace=""):
        server.stdin.write(f"{kill_at} {trace}\n")
        server.stdin.flush()
        return int(server.stdout.readline())

    try:
        trace = tmp_path / "trace.json"
        assert child(0, trace) == 0                 # a full run, listing the calls it makes
        names = json.loads(trace.read_text())
        assert all(_files(out)[a] == new[a] for a in arrays)
        # kill points: spread over the run, and at each step of writing meta.json and committing
        points = set(np.linspace(1, len(names), 5).astype(int).tolist())
        for step in ("mkdtemp", "write", "replace", "write_meta", "atomic_write_text", "_fsync", "_exchange",
                     "rmtree"):
            points.add(names.index(step) + 1)
        seen = set()
        for kill_at in sorted(points):
            _io.sweep(root)  # what the last kill left (the same calls in every child: the kill points hold)
            shutil.rmtree(out)
            out.mkdir()
            for name, data in old.items():
                (out / name).write_bytes(data)
            status = child(kill_at)
            got = _files(out)
            assert sorted(got) == OUTPUTS, (kill_at, sorted(got))        # no temporary file inside
            which = [s for s, ref in (("old", old), ("new", new)) if all(got[a] == ref[a] for a in arrays)]
            assert which, f"killed at call {kill_at} ({names[kill_at - 1]}): a mixture of two runs"
            load_encrypted(out)                                           # meta.json matches the arrays
            seen.add(which[0])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9 or status == 0
        assert seen == {"old", "new"}               # the kill points spanned the commit
        assert child(0) == 0                        # the next run sweeps what the killed ones left
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    assert sorted(p.name for p in root.iterdir()) == ["enc"]
