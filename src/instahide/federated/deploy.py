"""A real Flower deployment on this machine: one SuperLink and N SuperNodes on loopback, and ``flwr run``.

What the deployed test and ``benchmarks/federated_deployed.py`` start, and a way to try the deployed
path without editing any Flower configuration: every process is a child of the caller, in its own
process group, on free loopback ports chosen at start, with ``FLWR_HOME`` a folder of the caller's
choosing (the SuperLink connection ``local`` is written there); :meth:`LocalFederation.stop` (also on
leaving the ``with`` block, whatever happened) terminates every group and every descendant (Flower's
``flower-superexec`` starts a session of its own), then kills what is left. On Linux the processes
also get SIGKILL when the thread that started them dies, so a killed caller leaves nothing behind.

Two kinds of node (``warm``):

- ``warm=False``: the stock ``flower-supernode`` (``--isolation subprocess``): its ``flower-superexec``
  starts one ``flwr-clientapp`` process per message, which imports torch and loads the data every time.
- ``warm=True``: ``python -m instahide.federated.node`` (:mod:`instahide.federated.node`): the same
  SuperNode with ``--isolation process`` and one long-running ClientApp process that serves every
  message of the node (torch imported once, data cached), polling every ``poll_interval`` seconds.

Only the standard library is imported here (Flower runs in the child processes). Example::

    from instahide.federated.deploy import LocalFederation
    with LocalFederation(2, home="/tmp/flwr-home", warm=True) as fed:
        fed.run("examples/flower_app", {"rounds": 2, "out": "/tmp/run"}, timeout=120)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .node import POLL_ENV

__all__ = ["LocalFederation", "descendants", "free_port", "toml_value", "EXAMPLE_APP", "FLOWER_COMMANDS"]

EXAMPLE_APP = Path(__file__).resolve().parents[3] / "examples" / "flower_app"
FLOWER_COMMANDS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr", "flwr-clientapp",
                   "flwr-serverapp")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def toml_value(value) -> str:
    """``value`` (bool, int, float or str) as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"run-config values must be bool, int, float or str, got {type(value).__name__}: {value!r}")


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on port {port}; "
                               f"its log ({log}):\n{_tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout:.0f} s; its log ({log}):\n{_tail(log)}")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes as child processes on loopback.

    Args:
        num_nodes: SuperNodes to start; node ``i`` gets node config ``partition-id=i
            num-partitions=num_nodes`` (plus ``node_config``).
        home: ``FLWR_HOME`` of every process (created; the connection ``local`` is written to its
            ``config.toml``); the processes' logs go to ``home/logs``.
        warm: long-running ClientApp processes (:mod:`instahide.federated.node`) instead of one
            ``flwr-clientapp`` process per message.
        poll_interval: warm nodes only: seconds between a node's polls of the SuperLink and of its
            own Runtime API (Flower's SuperNode waits 3 s between polls when idle).
        node_config: extra ``key=value`` node config for every node (e.g. ``{"data-root": "/data"}``).
        env: extra environment variables for every process.
        start_timeout: seconds to wait for each listening port.

    The SuperLink is started with ``--disable-runtime-dependency-installation`` (Flower would otherwise
    build a fresh environment per run) and every process gets ``FLWR_TELEMETRY_ENABLED=0`` and this
    interpreter's ``bin`` folder first on ``PATH`` (the SuperLink starts ``flower-superexec`` by name).
    """

    def __init__(self, num_nodes: int, home, *, warm: bool = False, poll_interval: float = 0.1,
                 node_config: dict | None = None, env: dict | None = None, start_timeout: float = 60.0):
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        self.num_nodes, self.warm, self.poll_interval = num_nodes, warm, poll_interval
        self.home = Path(home).resolve()
        self.logs = self.home / "logs"
        self.node_config = dict(node_config or {})
        self.start_timeout = start_timeout
        self.bin = Path(sys.executable).parent
        missing = [c for c in FLOWER_COMMANDS if not (self.bin / c).exists() and shutil.which(c) is None]
        if missing:
            raise FileNotFoundError(f"Flower's commands {missing} are not installed next to {sys.executable} "
                                    "nor on PATH: pip install 'instahide[federated]'")
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0",
                    "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
        if warm:  # the ServerApp (started by the SuperLink) polls as quickly as the nodes
            self.env.setdefault(POLL_ENV, str(poll_interval))
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.port = None

    # -- processes ---------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, cwd=self.home, start_new_session=True,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.procs.append((name, proc, log))
        return proc

    def start(self) -> "LocalFederation":
        """Start the SuperLink, wait until it listens, then start the nodes (and wait for theirs)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.port = free_port()
            (self.home / "config.toml").write_text(
                f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\n'
                "insecure = true\n")
            link = self._spawn("superlink", [str(self.bin / "flower-superlink"), "--insecure", "--host",
                                             "127.0.0.1", "--port", str(self.port),
                                             "--disable-runtime-dependency-installation"])
            _wait_for_port(self.port, link, self.start_timeout, "flower-superlink", self.logs / "superlink.log")
            ports = []
            for i in range(self.num_nodes):
                port = free_port()
                conf = {"partition-id": i, "num-partitions": self.num_nodes, **self.node_config}
                args = ["--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(port),
                        "--node-config", " ".join(f"{k}={toml_value(v)}" for k, v in conf.items())]
                if self.warm:
                    cmd = [sys.executable, "-m", "instahide.federated.node", "--poll-interval",
                           str(self.poll_interval), *args]
                else:
                    cmd = [str(self.bin / "flower-supernode"), *args]
                ports.append((port, self._spawn(f"node{i}", cmd), f"node {i}"))
            for port, proc, what in ports:
                _wait_for_port(port, proc, self.start_timeout, what, self.logs / f"node{what[-1]}.log")
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, app_dir, run_config: dict | None = None, *, timeout: float = 600.0) -> str:
        """``flwr run app_dir local --stream`` with ``run_config`` overrides; waits until the run ends.

        Returns ``flwr run``'s output. Raises ``TimeoutError`` after ``timeout`` seconds (the run is
        left to :meth:`stop`) and ``RuntimeError`` when ``flwr run`` fails.
        """
        if self.port is None:
            raise RuntimeError("start() the federation before run()")
        cmd = [str(self.bin / "flwr"), "run", str(Path(app_dir).resolve()), "local", "--stream"]
        if run_config:
            overrides = self.home / f"run-config-{time.monotonic_ns()}.toml"
            overrides.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()))
            cmd += ["--run-config", str(overrides)]
        log = self.logs / "flwr-run.log"
        proc = self._spawn("flwr-run", cmd)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"flwr run did not finish within {timeout:.0f} s; its log ({log}):\n"
                               f"{_tail(log)}\nSuperLink log:\n{_tail(self.logs / 'superlink.log')}") from None
        out = _tail(log, 100_000)
        if proc.returncode != 0:
            raise RuntimeError(f"flwr run exited with code {proc.returncode}:\n{out[-4000:]}")
        return out

    def descendants(self) -> list[tuple[int, int]]:
        """``(pid, start time)`` of every live process below the ones started here (Flower's
        ``flower-superexec`` starts a session of its own, so a process group does not hold them all)."""
        return descendants([proc.pid for _, proc, _ in self.procs])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every process group started here and every descendant, then SIGKILL whatever is left
        after ``grace`` seconds."""
        below = self.descendants()
        for _, proc, _ in self.procs:
            _signal_group(proc, signal.SIGTERM)
        _signal_each(below, signal.SIGTERM)
        end = time.monotonic() + grace
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        while any(_alive(pid, start) for pid, start in below) and time.monotonic() < end:
            time.sleep(0.1)
        for _, proc, _ in self.procs:
            _signal_group(proc, signal.SIGKILL)
        _signal_each(below, signal.SIGKILL)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        self.procs.clear()

    def __enter__(self) -> "LocalFederation":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _proc_stat(pid) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pids) -> list[tuple[int, int]]:
    """``(pid, start time)`` of every process below ``pids`` (from /proc; empty where there is none)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(entry.name)
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append((int(entry.name), int(fields[19])))
    out, todo = [], list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def _alive(pid: int, start: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == start  # same process, not a reuse


def _signal_each(procs, sig) -> None:
    for pid, start in procs:
        if _alive(pid, start):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGKILL this process when the process that started it dies (a killed test or benchmark
    leaves no deployment behind)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_group(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this module created for the process (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass
