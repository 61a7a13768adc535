"""A warm Flower SuperNode: one long-running ClientApp process per node instead of one per message.

Flower 1.42's ``flower-supernode`` (default ``--isolation subprocess``) starts ``flower-superexec``,
which starts a fresh ``flwr-clientapp`` process for EVERY message; that process handles the one
message and exits (``flwr.supernode.runtime.run_clientapp``), so every round re-imports Flower, torch
and instahide, reloads the party's data and recompiles the encryption kernel (a round cost 31 times one
in process here; docs/federated.md, "Deployed"). With
``--isolation process`` the SuperNode leaves launching to a separate process that polls its Runtime
API for tasks; this module is that process, and it does not exit between tasks:

``python -m instahide.federated.node [flower-supernode options]`` runs, in one command,

1. the worker (:func:`serve`, a child process): imports the ClientApp once, then in a loop acquires
   the node's next task from the SuperNode's Runtime API, pulls the message and the node's
   ``Context``, calls the ClientApp IN THIS PROCESS, pushes the reply and the context back. The
   party's data stay in :mod:`instahide.federated.local`'s module-level cache (keyed by the run's
   data configuration), so a round neither imports torch nor loads data; an exception in a handler
   becomes an error reply, as with ``flwr-clientapp``, and the worker goes on;
2. Flower's own SuperNode (``flower-supernode --isolation process`` with the given options), with its
   waits between polls of the SuperLink and of its reply store capped at ``--poll-interval`` seconds
   (Flower waits 3 s between polls of the SuperLink when idle, which alone would cost up to 3 s per
   round); the cap replaces the module attribute ``time`` of ``flwr.supernode.start_client_internal``
   and is skipped, with a warning, where that module has no such attribute;
3. in both, a retry of an array that has not arrived yet after ``--poll-interval`` seconds instead of
   Flower's 1 s, then 2 s (:func:`shorten_object_pull_backoff`).

The worker uses Flower's own message, context and heartbeat functions (``pull_task_input``, ``push_message``,
``push_task_output`` of ``flwr.supernode.runtime.run_clientapp``), so what travels, and what the
SuperNode checks, is what ``flwr-clientapp`` sends. Pinned to flwr 1.42 (the ``federated`` extra).

Example (one party's machine; docs/federated.md, "Deployed")::

    python -m instahide.federated.node --insecure --superlink SERVER:9810 --port 9820 \\
        --node-config "partition-id=0 num-partitions=2" --poll-interval 0.1
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import subprocess
import sys
import threading
import time

__all__ = ["serve", "run_task", "cap_supernode_polling", "shorten_object_pull_backoff", "poll_from_env",
           "POLL_ENV", "main"]

log = logging.getLogger("instahide.federated.node")


class _CappedTime:
    """The ``time`` module with ``sleep`` capped at ``cap`` seconds."""

    def __init__(self, cap: float):
        self._cap = float(cap)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(float(seconds), self._cap))

    def __getattr__(self, name):
        return getattr(time, name)


def cap_supernode_polling(cap: float) -> bool:
    """Cap every wait in Flower's SuperNode loop (``flwr.supernode.start_client_internal``) at ``cap``
    seconds; returns whether it could (``False``, with a warning, on a Flower without that module
    attribute)."""
    import flwr.supernode.start_client_internal as sci

    if not hasattr(sci, "time") or getattr(sci.time, "sleep", None) is None:
        log.warning("flwr.supernode.start_client_internal has no 'time' attribute (flwr %s?): the SuperNode "
                    "keeps its own poll intervals", _flwr_version())
        return False
    sci.time = _CappedTime(cap)
    return True


def shorten_object_pull_backoff(initial: float, cap: float = 1.0) -> bool:
    """Start the retry of an object that is not there yet after ``initial`` seconds (doubling up to
    ``cap``) instead of Flower's 1 s (doubling up to 10 s), in this process.

    Flower makes a message visible before its objects (the arrays) have arrived: a SuperNode stores a
    message, which makes its task available, and only then pulls the message's arrays from the
    SuperLink; a ServerApp sees a reply while the node is still pushing its arrays. Whoever polls
    quickly therefore often asks for an array that is a few milliseconds away and, with Flower's
    backoff, waits 1 s, then 2 s. Returns whether the defaults could be changed (flwr 1.42's
    ``pull_objects`` / ``pull_and_inflate_object_from_tree`` keyword defaults)."""
    from flwr.supercore.inflatable import inflatable_utils as iu

    changed = False
    for fn in (getattr(iu, "pull_objects", None), getattr(iu, "pull_and_inflate_object_from_tree", None)):
        kw = getattr(fn, "__kwdefaults__", None)
        if kw and "initial_backoff" in kw and "backoff_cap" in kw:
            kw["initial_backoff"], kw["backoff_cap"] = float(initial), float(max(cap, initial))
            changed = True
    if not changed:
        log.warning("flwr %s has no pull_objects(initial_backoff=...): object pulls keep Flower's backoff",
                    _flwr_version())
    return changed


POLL_ENV = "INSTAHIDE_FLOWER_POLL"
"""Environment variable: seconds between polls in a ServerApp started by Flower (see :func:`poll_from_env`)."""


def poll_from_env() -> float | None:
    """``INSTAHIDE_FLOWER_POLL`` as seconds (None when unset); a bad value is an error naming it."""
    raw = os.environ.get(POLL_ENV)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{POLL_ENV} must be a number of seconds, got {raw!r}") from None
    if not 0 < value <= 60:
        raise ValueError(f"{POLL_ENV} must be in (0, 60] seconds, got {raw!r}")
    return value


def _flwr_version() -> str:
    try:
        import flwr
        return flwr.__version__
    except ImportError:  # pragma: no cover
        return "?"


# -- the worker --------------------------------------------------------------------------------------
def _client(address: str, insecure: bool, certificates, *interceptors):
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(server_address=address, insecure=insecure,
                                                 root_certificates=certificates,
                                                 interceptors=list(interceptors),
                                                 retry_invoker=make_simple_http_retry_invoker())


def run_task(address: str, token: str, *, insecure: bool = True, certificates: bytes | None = None,
             apps: dict | None = None) -> bool:
    """Run ONE ClientApp task (``token``) in this process: what ``flwr-clientapp --token`` does, without
    exiting. ``apps`` caches the loaded ClientApp by FAB hash across tasks. Returns whether the app
    produced a reply without raising."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    apps = {} if apps is None else apps
    client = _client(address, insecure, certificates, RuntimeTracingInterceptor(),
                     RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                     RuntimeTokenHttpInterceptor(token))
    heartbeat, message, context, reply = None, None, None, None
    status, details, ok = SubStatus.FAILED, "ClientApp task failed due to unknown reason", False
    try:
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        app = apps.get(fab.hash_str)
        if app is None:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            app = apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        reply = app(message=message, context=context)
        status, details, ok = SubStatus.COMPLETED, "", True
    except Exception as exc:  # noqa: BLE001 - as flwr-clientapp: an error reply, then carry on
        log.exception("ClientApp raised an exception")
        details = f"{type(exc)}:<'{exc}'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception:  # noqa: BLE001
            log.exception("failed to push the reply message")
            ok = False
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat is not None and heartbeat.is_running:
            heartbeat.stop()
        client.close()
    return ok


def serve(address: str, *, insecure: bool = True, certificates: bytes | None = None,
          poll_interval: float = 0.1, parent_pid: int | None = None, max_tasks: int | None = None,
          preload=("instahide.federated.client", "instahide.federated.local:warm_up")) -> int:
    """Serve the ClientApp tasks of the SuperNode whose Runtime API is at ``address``, one at a time,
    in this process, until ``max_tasks`` tasks have run (None: forever) or ``parent_pid`` exits.

    ``preload``: modules to import, and ``module:function`` to call, before the first task, so that it
    pays neither for importing torch nor for compiling the encryption kernel. Returns the number of
    tasks run."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    shorten_object_pull_backoff(poll_interval)
    for ref in preload or ():
        module, _, function = ref.partition(":")
        loaded = importlib.import_module(module)
        if function:
            getattr(loaded, function)()
    acquire = _client(address, insecure, certificates, RuntimeVersionHttpInterceptor(component_name="SuperExec"))
    apps: dict = {}
    done = 0
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[])
    while max_tasks is None or done < max_tasks:
        try:
            res = acquire.AcquireTask(request)
        except Exception as exc:  # noqa: BLE001 - the SuperNode's API may not be up yet
            log.debug("AcquireTask failed (%s); retrying", exc)
            time.sleep(max(poll_interval, 0.5))
            continue
        if res.HasField("task") and res.token:
            t0 = time.perf_counter()
            ok = run_task(address, res.token, insecure=insecure, certificates=certificates, apps=apps)
            done += 1
            log.info("task %d of worker pid %d: %s in %.2f s", done, os.getpid(), "replied" if ok else "failed",
                     time.perf_counter() - t0)
            continue
        time.sleep(poll_interval)
    acquire.close()
    return done


def _exit_with_parent(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(0.2)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # pragma: no cover - alive, someone else's
                pass

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


# -- the command -------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m instahide.federated.node",
        description="A Flower SuperNode with one long-running ClientApp process (instead of one process per "
                    "message). Every option not listed here goes to flower-supernode, which runs with "
                    "--isolation process.")
    p.add_argument("--poll-interval", type=float, default=0.1,
                   help="seconds between the node's polls of the SuperLink and of its Runtime API (default 0.1; "
                        "Flower's SuperNode waits 3 s when idle)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--runtime-api-address", help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    return p


def _runtime_address(rest: list[str]) -> tuple[str, bool]:
    """The Runtime API address the SuperNode will listen on (its --host/--port, Flower's defaults)."""
    from flwr.supercore.constant import SUPERNODE_UVICORN_DEFAULT_PORT, UVICORN_DEFAULT_HOST

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--host", default=UVICORN_DEFAULT_HOST)
    p.add_argument("--port", type=int, default=SUPERNODE_UVICORN_DEFAULT_PORT)
    p.add_argument("--ssl-certfile")
    args, _ = p.parse_known_args(rest)
    if args.ssl_certfile:
        raise SystemExit("instahide.federated.node: a Runtime API with TLS (--ssl-certfile) is not supported; "
                         "the Runtime API stays on the node's loopback")
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    return f"{host}:{args.port}", True


def main(argv: list[str] | None = None) -> None:
    args, rest = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
        serve(args.runtime_api_address, insecure=True, poll_interval=args.poll_interval,
              parent_pid=args.parent_pid)
        return
    if "--isolation" in rest:
        raise SystemExit("instahide.federated.node runs the SuperNode with --isolation process; leave --isolation out")
    address, _ = _runtime_address(rest)
    worker = subprocess.Popen([sys.executable, "-m", "instahide.federated.node", "--worker",
                               "--runtime-api-address", address, "--poll-interval", str(args.poll_interval),
                               "--parent-pid", str(os.getpid())])
    try:
        cap_supernode_polling(args.poll_interval)
        shorten_object_pull_backoff(args.poll_interval)
        from flwr.supernode.cli.flower_supernode import flower_supernode

        sys.argv = ["flower-supernode", *rest, "--isolation", "process"]
        flower_supernode()
    finally:
        worker.terminate()


if __name__ == "__main__":
    main()
