"""Two ``nbcnn train`` runs at once on one machine: each one's throughput against a solo run.

Users run sweeps and MPI puts several ranks on one machine; on a machine with
few cores each process's worker threads then share cores with the others'.
This script runs, in alternating rounds (so a change in the machine's load
hits both alike), one ``nbcnn train`` alone and then two at once, and reports
each run's images/s of its last epoch. Configurations compared:

* ``nbcnn``: nbcnn's thread policy (passive waits, thread count from the CPUs
  this process may use, shared between the nbcnn processes that train at the
  same time; see ``nbcnn/_threads.py``);
* ``off``: the same with ``NBCNN_THREADS=off`` (Numba's, libgomp's and
  OpenBLAS's own defaults).

Example (about 2 minutes on 2 cores)::

    python benchmarks/concurrent_runs.py --rounds 2 --md benchmarks/results/concurrency.md

The machine load (``uptime``) is recorded before and after each round.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"nbcnn": {}, "off": {"NBCNN_THREADS": "off"}}


def _train_cmd(out: Path, args) -> list[str]:
    return [sys.executable, "-c", "import sys; from nbcnn.cli.main import main; sys.exit(main())", "train",
            "--model", args.model, "--epochs", str(args.epochs), "--train-size", str(args.train_size),
            "--val-split", "0", "--test-size", "1", "--no-plot", "-q", "--seed", "1", "--out", str(out)]


def _launch(k: int, env_extra: dict, tmp: Path, args) -> tuple[subprocess.Popen, Path]:
    out = tmp / f"run{k}-{time.monotonic_ns()}.nbcnn"
    env = dict(os.environ, **env_extra)
    env.setdefault("PYTHONPATH", str(ROOT))
    env["NBCNN_SHARE_DIR"] = str(tmp / "share")  # only this benchmark's runs share the CPUs
    proc = subprocess.Popen(_train_cmd(out, args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=str(tmp))
    return proc, out


def _throughput(proc: subprocess.Popen, out: Path, timeout: float) -> float:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return float("nan")
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
        return float("nan")
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    return float(metrics["history"]["images_per_s"][-1])


def _run(n: int, env_extra: dict, tmp: Path, args) -> list[float]:
    procs = [_launch(k, env_extra, tmp, args) for k in range(n)]
    return [_throughput(p, out, args.timeout) for p, out in procs]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="the last epoch is measured (the first warms up)")
    ap.add_argument("--train-size", type=int, default=6000)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--configs", default="nbcnn,off", help=f"comma-separated, from {sorted(CONFIGS)}")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("NBCNN_DATA", "/work/shared/data")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    rows = {c: {"solo": [], "pair": []} for c in configs}
    loads = []
    with tempfile.TemporaryDirectory(prefix="nbcnn-concurrency-") as tmpdir:
        tmp = Path(tmpdir)
        _run(1, {}, tmp, args)  # fill the kernel cache so no round pays compile time
        for r in range(args.rounds):
            before = _load()
            for c in configs:
                solo = _run(1, CONFIGS[c], tmp, args)
                pair = _run(2, CONFIGS[c], tmp, args)
                rows[c]["solo"] += solo
                rows[c]["pair"] += pair
                print(f"round {r + 1} {c:6s} solo {solo[0]:8.0f} img/s   pair "
                      + " / ".join(f"{v:.0f}" for v in pair) + " img/s", flush=True)
            loads.append((before, _load()))
    lines = _report(rows, loads, args)
    print("\n".join(lines))
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "loads": loads, "args": vars(args)}, default=str, indent=1))
    return 0


def _median(v):
    v = sorted(x for x in v if x == x)
    if not v:
        return float("nan")
    m = len(v) // 2
    return v[m] if len(v) % 2 else 0.5 * (v[m - 1] + v[m])


def _report(rows, loads, args) -> list[str]:
    import numba
    import numpy

    from nbcnn import _threads

    out = ["# Two training runs at once", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
           f"Python {platform.python_version()}, numpy {numpy.__version__}, numba {numba.__version__}; "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
           f"Workload: `nbcnn train --model {args.model} --epochs {args.epochs} --train-size {args.train_size} "
           "--val-split 0`, images/s of the last epoch; each round runs one alone, then two at once, per "
           f"configuration ({args.rounds} rounds, alternating). nbcnn's policy here: "
           f"{_threads.describe()}.", "",
           "| configuration | solo img/s (median) | pair img/s, each (median) | pair / solo | all pair runs |",
           "|---|---|---|---|---|"]
    for c, r in rows.items():
        solo, pair = _median(r["solo"]), _median(r["pair"])
        label = {"nbcnn": "nbcnn thread policy", "off": "`NBCNN_THREADS=off` (library defaults)"}[c]
        out.append(f"| {label} | {solo:,.0f} | {pair:,.0f} | {pair / solo:.2f} | "
                   + ", ".join(f"{v:,.0f}" for v in r["pair"]) + " |")
    out += ["", "Load average (1/5/15 min) before / after each round: "
            + "; ".join(f"{a} / {b}" for a, b in loads) + "."]
    return out


if __name__ == "__main__":
    sys.exit(main())
