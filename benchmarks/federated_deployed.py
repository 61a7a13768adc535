"""Federated rounds in process vs deployed (a SuperLink, N SuperNodes and `flwr run` on loopback), side by side.

Runs the example Flower app's configuration (examples/flower_app/pyproject.toml: digits, 2 parties,
InstaHide k=4, 1 local epoch, the model packed into one array) for --rounds rounds

- in process: ``run_federated(cfg, backend="inprocess")`` (the parties one after another in this process),
- deployed, warm nodes: ``LocalFederation(warm=True)`` (``python -m instahide.federated.node``: one
  long-running ClientApp process per node, polls every --poll-interval s),
- deployed, warm nodes, one array per tensor on the wire (only with --also-unpacked: ``pack-weights=false``),
- deployed, stock nodes (only with --stock-rounds N > 0): ``flower-supernode`` with its default
  ``--isolation subprocess`` (one ``flwr-clientapp`` process per message),

alternating in-process and warm-deployed runs --repeats times, and prints the seconds per round
(``round_seconds`` of the server's rounds.jsonl: from sending the round's messages to the checkpoint
written) for round 1 and for rounds 2.. (steady state: the nodes have imported torch and cached the
data), the ratio deployed / in process, and the machine. Timings on a shared machine are noisy; the
ratio of runs made side by side is what to read.

  .venv/bin/python benchmarks/federated_deployed.py                                  # 6 rounds, 2 repeats
  .venv/bin/python benchmarks/federated_deployed.py --also-unpacked --stock-rounds 3 \
      --out docs/bench_federated_deployed_cpu.json
  .venv/bin/python benchmarks/federated_deployed.py --local-epochs 5                # more compute per round
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # for encrypt.machine
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def machine() -> dict:
    """benchmarks/encrypt.py's machine (CPU model, cores, load) with the Python, torch and flwr versions."""
    import flwr
    import torch
    from encrypt import machine as cpu

    return {**cpu(), "loadavg": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__,
            "flwr": flwr.__version__}


def app_config() -> dict:
    """The example app's run configuration (``[tool.flwr.app.config]``)."""
    from instahide.federated.deploy import EXAMPLE_APP

    return tomllib.loads((EXAMPLE_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def round_seconds(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]
    bad = [r["round"] for r in rows if r["replies"] == 0 or r["failures"]]
    if bad:
        raise RuntimeError(f"{out}: rounds {bad} had failures; see the logs")
    return [r["round_seconds"] for r in rows]


def summarise(seconds: list[float], wall: float) -> dict:
    steady = seconds[1:]
    return {"round_seconds": seconds, "round1_s": seconds[0], "steady_mean_s": statistics.fmean(steady),
            "steady_median_s": statistics.median(steady), "wall_s": wall}


def run_inprocess(overrides: dict, out: Path) -> dict:
    from instahide.federated import FedConfig, run_federated

    cfg = FedConfig.from_run_config({**app_config(), **overrides, "out": str(out)})
    t0 = time.perf_counter()
    run_federated(cfg, backend="inprocess", log=None)
    return summarise(round_seconds(out), time.perf_counter() - t0)


def run_deployed(overrides: dict, out: Path, *, warm: bool, poll: float, parties: int, timeout: float) -> dict:
    from instahide.federated.deploy import EXAMPLE_APP, LocalFederation

    home = Path(tempfile.mkdtemp(prefix="flwr-home-", dir=out.parent))
    t0 = time.perf_counter()
    with LocalFederation(parties, home, warm=warm, poll_interval=poll) as fed:
        started = time.perf_counter() - t0
        fed.run(EXAMPLE_APP, {**overrides, "out": str(out)}, timeout=timeout)
    res = summarise(round_seconds(out), time.perf_counter() - t0)
    res["start_s"] = started
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="rounds per run (round 1 is reported apart; default 6)")
    ap.add_argument("--repeats", type=int, default=2, help="in-process / warm-deployed pairs (default 2)")
    ap.add_argument("--stock-rounds", type=int, default=0,
                    help="also run the stock flower-supernode for this many rounds (default 0: skip)")
    ap.add_argument("--also-unpacked", action="store_true",
                    help="also one warm deployed run with pack-weights=false (one array per tensor on the wire)")
    ap.add_argument("--local-epochs", type=int, default=None, help="override the app's local-epochs")
    ap.add_argument("--poll-interval", type=float, default=0.1, help="warm nodes' poll interval (default 0.1 s)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per deployed run")
    ap.add_argument("--out", default=None,
                    help="write the results as JSON here (e.g. docs/bench_federated_deployed_cpu.json)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark stops its deployment
    if args.rounds < 2:
        ap.error("--rounds must be >= 2 (round 1 is reported apart)")

    conf = app_config()
    parties = int(conf["num-parties"])
    overrides = {"rounds": args.rounds}
    if args.local_epochs is not None:
        overrides["local-epochs"] = args.local_epochs
    mach = machine()
    print(f"machine: {mach['cpu_model']}, {mach['cpu_count']} cores, load {mach['loadavg'][0]:.2f}; "
          f"torch {mach['torch']}, flwr {mach['flwr']}")
    print(f"config: {dict(conf, **overrides)}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as tmp:
        tmp = Path(tmp)
        for rep in range(args.repeats):
            for kind in ("inprocess", "deployed-warm"):
                out = tmp / f"{kind}-{rep}"
                if kind == "inprocess":
                    res = run_inprocess(overrides, out)
                else:
                    res = run_deployed(overrides, out, warm=True, poll=args.poll_interval, parties=parties,
                                       timeout=args.timeout)
                res.update(kind=kind, repeat=rep)
                runs.append(res)
                print(f"  {kind:14s} repeat {rep}: round 1 {res['round1_s']:6.2f} s, rounds 2-{args.rounds} "
                      f"median {res['steady_median_s']:5.2f} s (mean {res['steady_mean_s']:5.2f}), "
                      f"wall {res['wall_s']:6.1f} s", flush=True)
        if args.also_unpacked:
            out = tmp / "deployed-warm-unpacked"
            res = run_deployed({**overrides, "pack-weights": False}, out, warm=True, poll=args.poll_interval,
                               parties=parties, timeout=args.timeout)
            res.update(kind="deployed-warm-unpacked", repeat=0)
            runs.append(res)
            print(f"  {'warm unpacked':14s}         : round 1 {res['round1_s']:6.2f} s, rounds 2-{args.rounds} "
                  f"median {res['steady_median_s']:5.2f} s, wall {res['wall_s']:6.1f} s", flush=True)
        if args.stock_rounds:
            out = tmp / "deployed-stock"
            res = run_deployed({**overrides, "rounds": args.stock_rounds}, out, warm=False,
                               poll=args.poll_interval, parties=parties, timeout=args.timeout)
            res.update(kind="deployed-stock", repeat=0)
            runs.append(res)
            print(f"  {'deployed-stock':14s}         : round 1 {res['round1_s']:6.2f} s, rounds 2-{args.stock_rounds} "
                  f"median {res['steady_median_s']:5.2f} s, wall {res['wall_s']:6.1f} s", flush=True)

    def pooled(kind: str) -> list[float]:
        return [s for r in runs if r["kind"] == kind for s in r["round_seconds"][1:]]

    inproc, warm = pooled("inprocess"), pooled("deployed-warm")
    summary = {"inprocess_median_s": statistics.median(inproc), "deployed_warm_median_s": statistics.median(warm),
               "ratio_warm_over_inprocess": statistics.median(warm) / statistics.median(inproc),
               "ratio_of_means": statistics.fmean(warm) / statistics.fmean(inproc)}
    if args.also_unpacked:
        unpacked = pooled("deployed-warm-unpacked")
        summary["deployed_warm_unpacked_median_s"] = statistics.median(unpacked)
        summary["ratio_warm_unpacked_over_inprocess"] = statistics.median(unpacked) / statistics.median(inproc)
    if args.stock_rounds:
        stock = pooled("deployed-stock")
        summary["deployed_stock_median_s"] = statistics.median(stock)
        summary["ratio_stock_over_inprocess"] = statistics.median(stock) / statistics.median(inproc)
    print(f"steady-state seconds per round (rounds 2-{args.rounds}, pooled over repeats, median): "
          f"in process {summary['inprocess_median_s']:.2f}, deployed warm {summary['deployed_warm_median_s']:.2f} "
          f"-> ratio {summary['ratio_warm_over_inprocess']:.2f}x (ratio of means {summary['ratio_of_means']:.2f}x)")
    if args.also_unpacked:
        print(f"deployed warm, one array per tensor: {summary['deployed_warm_unpacked_median_s']:.2f} s per round "
              f"-> {summary['ratio_warm_unpacked_over_inprocess']:.2f}x in process")
    if args.stock_rounds:
        print(f"deployed stock (one flwr-clientapp per message): {summary['deployed_stock_median_s']:.2f} s per round "
              f"-> {summary['ratio_stock_over_inprocess']:.1f}x in process")
    if args.out:
        from instahide._io import atomic_open

        record = {"command": "benchmarks/federated_deployed.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "machine": mach, "config": dict(conf, **overrides), "poll_interval": args.poll_interval,
                  "runs": runs, "summary": summary, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        with atomic_open(args.out, "w") as fh:
            json.dump(record, fh, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
