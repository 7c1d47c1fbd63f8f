"""`dsmooth demo` with --threads auto (the default) against fixed thread counts, side by side.

    python benchmarks/demo_threads.py --out benchmarks/results/demo_threads_<host>.txt

Each round runs the demo once per setting, in turn, as separate processes (so each pays
its own start-up, as `make demo` does), and reports wall-clock seconds. On a machine that
other work keeps busy, every operator of a multi-threaded run waits for its slowest
thread, so one thread can be several times faster than all: `auto` should never be slower
than the best fixed count by more than its few seconds of measurement. The load average
is printed beside each run, since it is what decides the outcome.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dsmooth.pipeline.host import cpu_model


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=["auto", "1", str(torch.get_num_threads())])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--demo-args", default="", help="extra demo arguments, e.g. '--images 5'")
    p.add_argument("--out", default=None, help="also write the report here")
    return p.parse_args(argv)


def run_demo(threads: str, extra: list[str], folder: Path) -> tuple[float, str]:
    """Wall seconds of one demo run, and the thread line it printed (auto's choice)."""
    command = [sys.executable, "-m", "dsmooth.cli", "demo", "--threads", threads]
    command += ["--out-dir", str(folder / f"demo-{threads}"), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"demo --threads {threads} failed:\n{done.stderr[-2000:]}")
    said = [line for line in done.stderr.splitlines() if "--threads auto" in line]
    return seconds, (said[0].removeprefix("dsmooth: ") if said else "")


def main(argv=None) -> int:
    args = parse(argv)
    extra = args.demo_args.split()
    times: dict[str, list[float]] = {s: [] for s in args.settings}
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"torch's default threads {torch.get_num_threads()}",
        f"demo arguments: {' '.join(extra) or '(defaults)'}; {args.rounds} round(s)",
        "",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for setting in args.settings:
                load = os.getloadavg()[0]
                seconds, said = run_demo(setting, extra, Path(tmp))
                times[setting].append(seconds)
                line = f"round {r + 1}: --threads {setting:>4}: {seconds:6.1f} s (load {load:.1f})"
                line += f"  [{said}]" if said else ""
                print(line, flush=True)
                lines.append(line)
    best_fixed = min(min(v) for k, v in times.items() if k != "auto") if len(times) > 1 else 0
    summary = ["", "| --threads | best of rounds, s | vs best fixed count |", "|---|---|---|"]
    for setting, values in times.items():
        ratio = min(values) / best_fixed if best_fixed else float("nan")
        summary.append(f"| {setting} | {min(values):.1f} | {ratio:.2f} |")
    print("\n".join(summary))
    lines += summary
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
