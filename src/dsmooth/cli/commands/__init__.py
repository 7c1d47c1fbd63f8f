"""Subcommands of the `dsmooth` CLI, one module each (see dsmooth.cli.main.COMMANDS)."""
