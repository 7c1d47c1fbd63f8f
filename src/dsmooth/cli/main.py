"""The `dsmooth` command: one subcommand per module in `dsmooth.cli.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func`. A `UserError` anywhere becomes one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dsmooth.errors import UserError

#: Subcommand modules under dsmooth.cli.commands, in --help order.
COMMANDS = [
    "certify",
    "predict",
    "demo",
    "train-classifier",
    "train-denoiser",
    "test-denoiser",
    "evaluate",
    "import-weights",
    "analyze",
    "visualize",
    "report",
    "serve",
    "export",
    "bench",
]


#: Commands whose module is not named after them (a module named test_* looks like a test).
MODULES = {"test-denoiser": "check_denoiser"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 too; keep it to one line
        self.exit(2, f"dsmooth: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from dsmooth._version import __version__

    parser = _Parser(
        prog="dsmooth",
        description="Denoised smoothing: certify any image classifier against l2 attacks.",
    )
    parser.add_argument("--version", action="version", version=f"dsmooth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = MODULES.get(name, name.replace("-", "_"))
        importlib.import_module(f"dsmooth.cli.commands.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as e:
        message = " ".join(str(e).split())  # always one line
        print(f"dsmooth: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsmooth: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
