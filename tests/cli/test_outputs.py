"""What `instahide encrypt` leaves on disk: complete sets only (even when killed), private keys,
unlabelled data, and one-line errors for destinations it cannot write."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
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

import torch  # compile the kernel here once, not in every child
from instahide.scheme import encrypt
encrypt(torch.rand(16, 1, 8, 8) - 0.5, torch.arange(16) % 10, num_classes=10, k=4)

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


def _kill_server(argv):
    """A child process that runs ``encrypt argv`` on request, killed at the call named by the caller:
    ``(server, child)``; ``child(kill_at, trace)`` returns the run's exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-c", SERVER, *argv], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def child(kill_at, trace=""):
        server.stdin.write(f"{kill_at} {trace}\n")
        server.stdin.flush()
        return int(server.stdout.readline())
    return server, child


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
    server, child = _kill_server([*args, "--out", str(out), "--force", "--research-seed", "2"])

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


# -- second round (issue 22): nothing secret handed out, key and folder move together ----------------
def _arrays_and_key(out, key):
    """The arrays of a folder and the key file's arrays (the key file's bytes differ run to run: key_id)."""
    k = Key.load(key)
    return ({a: (out / a).read_bytes() for a in ("encryption.npy", "label.npy")},
            (k.coefficients.numpy().tobytes(), k.indices.numpy().tobytes(), k.mask_bits.numpy().tobytes()))


def _paired(out, key) -> bool:
    return json.loads((out / "meta.json").read_text())["keys"]["key_id"] == Key.load(key).meta["key_id"]


def _hidden(*folders):
    return sorted(p.name for f in folders for p in Path(f).iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("legacy", [False, True])
def test_the_research_seed_and_key_digests_are_not_handed_out(tmp_path, capsys, legacy):
    seed = "3141592653"
    out, key = tmp_path / "enc", tmp_path / "private" / "k.npz"
    argv = ["encrypt", "--out", str(out), "--subset", "30", "--research-seed", seed, "--key-out", str(key)]
    assert main(argv + (["--legacy"] if legacy else [])) == 0
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS         # every file handed out, audited below
    for name in OUTPUTS:
        assert seed.encode() not in (out / name).read_bytes(), name
    meta = json.loads((out / "meta.json").read_text())
    assert "research_seed" not in json.dumps(meta) and "sha256" not in meta["keys"]    # were there before
    assert _io.sha256_file(key) not in json.dumps(meta)
    assert meta["keys"]["origin"] == ("legacy-seed" if legacy else "research-seed")    # the warning stays
    assert Key.load(key).meta["research_seed"] == int(seed) and _mode(key) == 0o600     # kept for its owner
    assert "anyone who knows it can undo the mask" in capsys.readouterr().err


@pytest.mark.parametrize("exchange", [True, False])
@pytest.mark.parametrize("fault", ["write-meta", "folder-swap", "key-rename"])
def test_an_error_after_the_key_is_written_keeps_the_old_pair(tmp_path, capsys, monkeypatch, fault, exchange):
    out, key = tmp_path / "enc", tmp_path / "keys" / "k.npz"
    assert main(["encrypt", "--out", str(out), "--subset", "40", "--key-out", str(key)]) == 0
    before, key_before = _files(out), key.read_bytes()
    if not exchange:
        monkeypatch.setattr(_io, "_exchange", lambda a, b: False)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device (injected)")

    if fault == "write-meta":                                     # the key file is complete by then
        monkeypatch.setattr(encrypt_cmd, "write_meta", boom)
    elif fault == "folder-swap":
        monkeypatch.setattr(_io, "_exchange", boom) if exchange else monkeypatch.setattr(_io.os, "rename", boom)
    else:
        real = os.replace
        monkeypatch.setattr(_io.os, "replace",
                            lambda a, b, **kw: boom() if Path(b) == key.resolve() else real(a, b, **kw))
    capsys.readouterr()
    assert main(["encrypt", "--out", str(out), "--subset", "40", "--key-out", str(key), "--force",
                 "--progress", "false"]) == 2
    assert "injected" in _one_line_error(capsys, "encrypt")
    assert _files(out) == before and key.read_bytes() == key_before and _paired(out, key)
    assert _hidden(tmp_path, tmp_path / "keys") == []               # no journal, temporary or pending key


@pytest.mark.filterwarnings("ignore:.*derive from a seed")
def test_a_kill_during_a_forced_rewrite_with_a_key_never_separates_them(tmp_path):
    root, keys = tmp_path / "runs", tmp_path / "keys"
    root.mkdir()
    out, key = root / "enc", keys / "k.npz"
    args = ["encrypt", "--subset", "50", "--epochs", "3"]
    assert main([*args, "--out", str(out), "--key-out", str(key), "--research-seed", "1"]) == 0
    assert main([*args, "--out", str(tmp_path / "new"), "--key-out", str(tmp_path / "new.npz"),
                 "--research-seed", "2"]) == 0
    old_dir, old_key = _files(out), key.read_bytes()
    old, new = _arrays_and_key(out, key), _arrays_and_key(tmp_path / "new", tmp_path / "new.npz")
    server, child = _kill_server([*args, "--out", str(out), "--key-out", str(key), "--force", "--research-seed", "2"])

    try:
        trace = tmp_path / "trace.json"
        assert child(0, trace) == 0
        names = json.loads(trace.read_text())
        assert _arrays_and_key(out, key) == new and _paired(out, key)
        # each step from writing the key to the end: the commit journal, the folder swap, the key's rename
        steps = ("save", "replace", "write_meta", "_write_journal", "_fsync", "flock", "_swap_in", "_exchange",
                 "_place", "unlink", "rmtree", "print")
        points = [i + 1 for i, name in enumerate(names) if i >= names.index("save") and name in steps]
        seen, windows = set(), 0
        for kill_at in points:
            _io.sweep(root), _io.sweep(keys)
            shutil.rmtree(out)
            out.mkdir()
            for name, data in old_dir.items():
                (out / name).write_bytes(data)
            key.write_bytes(old_key)
            status = child(kill_at)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9 or status == 0
            now = _arrays_and_key(out, key)
            if now not in (old, new):       # only between the two renames, and then the journal says so
                assert any(n.endswith(".journal") for n in _hidden(root)), (kill_at, names[kill_at - 1])
                windows += 1
                load_encrypted(out)             # opening the folder finishes the commit
                assert _arrays_and_key(out, key) == new and _paired(out, key)
            _io.sweep(root), _io.sweep(keys)  # what the next run with this --out and --key-out does first
            now = _arrays_and_key(out, key)
            assert now in (old, new) and _paired(out, key), f"killed at call {kill_at} ({names[kill_at - 1]})"
            seen.add("old" if now == old else "new")
            assert _hidden(root) == [] and _hidden(keys) == [], (kill_at, _hidden(root), _hidden(keys))
        assert seen == {"old", "new"} and windows >= 1
    finally:
        server.stdin.close()
        server.wait(timeout=60)


def test_two_runs_to_one_new_out_do_not_both_succeed(tmp_path, capsys, monkeypatch):
    """The second run commits while the first is still encrypting: the first must fail, not replace it."""
    out = tmp_path / "enc"
    real, calls = encrypt_cmd.load_images, []

    def load_then_let_another_run_finish(args):
        calls.append(1)
        if len(calls) == 1:      # the other run, start to end, while this one holds its temporary folder
            assert main(["encrypt", "--out", str(out), "--subset", "30", "--progress", "false"]) == 0
        return real(args)

    monkeypatch.setattr(encrypt_cmd, "load_images", load_then_let_another_run_finish)
    capsys.readouterr()
    assert main(["encrypt", "--out", str(out), "--subset", "20", "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "was written by another run while this one ran; nothing was replaced" in err, err
    assert np.load(out / "encryption.npy").shape[0] == 30 and load_encrypted(out)   # the other run's, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_two_processes_racing_to_one_out(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "enc"
    cmd = [sys.executable, "-m", "instahide", "encrypt", "--out", str(out), "--subset", "200", "--epochs", "20",
           "--progress", "false"]
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(r.wait(timeout=300), r.stderr.read()) for r in runs]
    assert sorted(rc for rc, _ in results) == [0, 2], results     # exactly one wins, in every timing
    loser = next(err for rc, err in results if rc == 2)
    assert "another run" in loser or "refusing to overwrite" in loser, loser
    load_encrypted(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


SLOW_ENCRYPT = r"""
import sys, time
from instahide.cli import encrypt_cmd
from instahide.cli.main import main
real = encrypt_cmd.encrypt
def slow(*args, **kwargs):
    time.sleep(0.2)
    return real(*args, **kwargs)
encrypt_cmd.encrypt = slow
sys.exit(main(sys.argv[1:]))
"""


def _start_slow_encrypt(tmp_path, out, key):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_ENCRYPT, "encrypt", "--out", str(out), "--subset", "20",
                             "--epochs", "300", "--key-out", str(key), "--progress", "false"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # until its temporary folder exists
        if any(p.name.endswith(".tmp") for p in out.parent.iterdir()):
            return proc
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run made no temporary folder")


def test_sigterm_removes_the_temporaries(tmp_path):
    runs, keys = tmp_path / "runs", tmp_path / "keys"
    runs.mkdir()
    proc = _start_slow_encrypt(tmp_path, runs / "enc", keys / "k.npz")
    proc.send_signal(15)
    assert proc.wait(timeout=60) == 143, proc.stderr.read()       # was -15, with the folders left behind
    assert list(runs.iterdir()) == [] and not keys.exists()


def test_a_killed_runs_leftovers_go_at_the_next_start_beside_them(tmp_path, capsys):
    runs, keys = tmp_path / "runs", tmp_path / "keys"
    runs.mkdir()
    proc = _start_slow_encrypt(tmp_path, runs / "enc", keys / "k.npz")
    proc.kill()
    proc.wait(timeout=60)
    assert _hidden(runs)                                              # a temporary folder and the journal
    # the next run writes another folder beside it (was: only a run to the same --out swept)
    assert main(["encrypt", "--out", str(runs / "other"), "--subset", "20", "--progress", "false",
                 "--key-out", str(keys / "other.npz")]) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["other"]
    assert sorted(p.name for p in keys.iterdir()) == ["other.npz"]             # and any pending key


def test_free_space_is_checked_before_writing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "enc"
    monkeypatch.setattr(_io.shutil, "disk_usage", lambda p: SimpleNamespace(total=10 ** 6, used=0, free=50_000))
    assert main(["encrypt", "--out", str(out), "--subset", "100", "--epochs", "20"]) == 2   # 100*20*(256+40) bytes
    line = _one_line_error(capsys, "encrypt")
    assert f"this run writes 592.5 KB but the file system of {tmp_path} has 50.0 KB free" in line, line
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert main(["encrypt", "--out", str(out), "--epochs", "100000000"]) == 2
    line = _one_line_error(capsys, "encrypt")
    assert re.search(r"this run writes [\d.]+ TB but the file system of \S+ has [\d.]+ [KMGT]B free; nothing was "
                     r"written \(--epochs 100000000 x 1438 images\)$", line), line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_key_path_that_is_not_a_regular_file_is_refused(tmp_path, capsys, kind):
    node = tmp_path / "k.npz"
    if kind == "fifo":
        os.mkfifo(node)
    else:
        import socket
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(node))
    assert main(["encrypt", "--out", str(tmp_path / "enc"), "--subset", "20", "--key-out", str(node), "--force"]) == 2
    assert "is not a regular file" in _one_line_error(capsys, "encrypt")
    assert (stat.S_ISFIFO if kind == "fifo" else stat.S_ISSOCK)(os.lstat(node).st_mode)   # was replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npz"]


@pytest.mark.parametrize("argv,message", [
    (["--legacy", "--research-seed", "4294967296"], "--research-seed 4294967296 is out of range for --legacy"),
    (["--research-seed", "-1"], "--research-seed must be >= 0, got -1"),
    (["--k", "1"], "--k 1 mixes each image with nothing"),
    (["--mode", "instahyde"], "unknown mode 'instahyde'"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--progress", "maybe"], "argument --progress"),
    (["--key-out", "{out}/k.npz"], "lies inside --out"),
    (["--key-out", "{out}"], "lies inside --out"),
])
def test_arguments_are_checked_before_the_output_folder(tmp_path, capsys, argv, message):
    out = tmp_path / "enc"
    assert main(["encrypt", "--out", str(out), "--subset", "20", "--progress", "false"]) == 0
    before = _files(out)
    capsys.readouterr()
    try:
        rc = main(["encrypt", "--out", str(out), *[a.replace("{out}", str(out)) for a in argv]])  # no --force
    except SystemExit as e:   # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "refusing to overwrite" not in err and "Traceback" not in err, err
    assert _files(out) == before


def test_progress_option_reads_like_trains(tmp_path, capsys):
    for value in ("false", "no", "0", "off"):
        assert main(["encrypt", "--out", str(tmp_path / value), "--subset", "20", "--progress", value]) == 0
        assert "encrypting" not in capsys.readouterr().err
    assert main(["encrypt", "--out", str(tmp_path / "on"), "--subset", "20", "--progress"]) == 0
    assert "encrypting 20 digits images" in capsys.readouterr().err


def test_messages_name_options_on_the_command_line(tmp_path, capsys):
    assert main(["encrypt", "--out", str(tmp_path / "enc"), "--dataset", "cifar10", "--root", str(tmp_path)]) == 2
    line = _one_line_error(capsys, "encrypt")
    assert "pass --download" in line and "download=True" not in line, line
    assert main(["encrypt", "--out", str(tmp_path / "enc"), "--dataset", "cifar10"]) == 2
    line = _one_line_error(capsys, "encrypt")
    assert "pass --root or --download" in line and "root=" not in line, line


def _private_folder(tmp_path, kind):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    if kind == "folder":
        PIL = pytest.importorskip("PIL.Image")
        root = tmp_path / "Jane Doe 1970-01-01"
        for i, im in enumerate(images):
            folder = root / ("tumour" if i % 2 else "healthy")
            folder.mkdir(parents=True, exist_ok=True)
            PIL.fromarray(im).save(folder / f"{i:02d}.png")
        return root, ("Jane", "tumour", "healthy")
    root = tmp_path / "Jane Doe 1970-01-01.npz"
    np.savez(root, images=images, labels=np.arange(12) % 2)
    return root, ("Jane",)


@pytest.mark.parametrize("kind", ["folder", "arrays"])
def test_local_folder_and_class_names_are_not_handed_out(tmp_path, kind):
    root, private = _private_folder(tmp_path, kind)
    argv = ["encrypt", "--dataset", kind, "--root", str(root), "--progress", "false"]
    assert main([*argv, "--out", str(tmp_path / "enc")]) == 0
    text = (tmp_path / "enc" / "meta.json").read_text()
    for word in private:
        assert word not in text, word                              # was "folder-Jane Doe...", ["healthy", ...]
    meta = json.loads(text)
    assert meta["dataset"] == kind and meta["classes"] == ["class-0", "class-1"]
    assert main([*argv, "--out", str(tmp_path / "pub"), "--publish-class-names"]) == 0
    meta = json.loads((tmp_path / "pub" / "meta.json").read_text())
    assert meta["classes"] == (["healthy", "tumour"] if kind == "folder" else ["0", "1"])
    assert "Jane" not in json.dumps(meta)
    load_encrypted(tmp_path / "enc")


def _dead_pid(pid: int = 4_000_000) -> int:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_a_sweep_acts_only_on_what_a_dead_run_of_this_user_can_have_written(tmp_path):
    victim = tmp_path / "important"
    victim.mkdir()
    (victim / "data").write_text("keep")
    tag = f"{_dead_pid()}-{_io._HOST}"
    planted = tmp_path / f".enc.{tag}.abcdefgh.journal"      # names paths no run of ours would write
    planted.write_text(json.dumps({"out": str(tmp_path / "enc"), "tmp": str(victim), "old": str(victim),
                                   "secret": None, "phase": "prepare"}))
    stale = tmp_path / f".enc.{_dead_pid(3_000_000)}-{_io._HOST}.zzzzzzzz.tmp"   # a killed run's
    stale.mkdir()
    alive = tmp_path / f".enc.{os.getppid()}-{_io._HOST}.yyyyyyyy.tmp"   # a running process's
    alive.mkdir()
    other_host = tmp_path / f".enc.{_dead_pid()}-000000.xxxxxxxx.tmp"
    other_host.mkdir()
    _io.sweep(tmp_path)
    assert (victim / "data").read_text() == "keep" and planted.exists()
    assert not stale.exists() and alive.exists() and other_host.exists()


def test_a_parent_folder_made_by_another_process_meanwhile_is_not_an_error(tmp_path, monkeypatch):
    """Two torchrun ranks writing their key files into one new folder race to create it: the one that
    loses sees FileExistsError from mkdir. That folder is used, and not counted as its own (a failed
    run must not remove a folder another process made)."""
    from pathlib import Path

    from instahide import _io

    target = tmp_path / "secret" / "inner" / "k.npz"
    real_mkdir = Path.mkdir

    def racing_mkdir(self, *args, **kwargs):
        if self == tmp_path / "secret":
            real_mkdir(self, *args, **kwargs)  # the other rank was faster
            raise FileExistsError(17, "File exists", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    created = _io._make_parents(target, 0o700)
    assert created == [tmp_path / "secret" / "inner"]
    assert (tmp_path / "secret" / "inner").is_dir()

    def racing_file(self, *args, **kwargs):  # the other process made a FILE of that name
        self.write_text("x")
        raise FileExistsError(17, "File exists", str(self))

    monkeypatch.setattr(Path, "mkdir", racing_file)
    with pytest.raises(FileExistsError):  # a file in the way is still an error
        _io._make_parents(tmp_path / "other" / "k.npz", 0o700)
