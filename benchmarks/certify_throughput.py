"""Noise samples/s of the certify loop: the reference fp32 eager loop vs dsmooth's engine.

    python benchmarks/certify_throughput.py            # the default pipelines, ~10 minutes
    python benchmarks/certify_throughput.py --samples 2000 --rounds 3

Same as `dsmooth bench` (see docs/engine.md); the report also goes to
benchmarks/results/certify_throughput.txt unless `--out` says otherwise. Check `uptime`
first: on a shared machine absolute numbers drop, the side-by-side ratio much less.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dsmooth.cli.commands.bench import main

RESULT = Path(__file__).resolve().parent / "results" / "certify_throughput.txt"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:
        argv += ["--out", str(RESULT)]
    sys.exit(main(argv))
