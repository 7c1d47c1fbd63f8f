"""The `dsmooth` command line: argparse only.

Each command turns its arguments into a job or recipe and calls the library; nothing
outside this package imports it (docs/design.md). `build_parser` and `main` live in
`dsmooth.cli.main`.
"""

from dsmooth.cli.main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
