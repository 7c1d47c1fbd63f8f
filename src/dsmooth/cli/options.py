"""Tables of flags that several commands take, and `add_options`, which adds them.

A table holds the flags of one group (models, data, smoothing, engine, ...) once, keyed
by their argparse dest; a command declares which groups it takes, or which flags of a
group, and may give a flag its own default or help text:

    add_options(g, SMOOTHING_OPTIONS, ("n0", "n"), defaults={"n0": 50, "n": 500})

A help text that names the default says `%(default)s` (argparse fills it in), so that a
changed default stays true in --help. A keyword whose value is `Later(f)` is `f()` when
the parser is built, not when the table is: a default read from the environment, a help
text that names what this host has.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Later:
    """A keyword value of an `Option` computed each time the option is added."""

    compute: Callable[[], Any]


@dataclass(frozen=True)
class Option:
    """One flag (or positional argument): its spellings and `add_argument`'s keywords."""

    flags: tuple[str, ...]
    settings: Mapping[str, Any]

    @property
    def dest(self) -> str:
        """The argparse dest: `dest=` if given, else from the first long spelling."""
        if "dest" in self.settings:
            return self.settings["dest"]
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse._ActionsContainer, **overrides: Any) -> argparse.Action:
        """Add this flag to a parser or argument group, `overrides` replacing keywords."""
        settings = {k: v.compute() if isinstance(v, Later) else v for k, v in self.settings.items()}
        return parser.add_argument(*self.flags, **{**settings, **overrides})


#: Options keyed by dest, in the order `add_options` adds them by default.
Table = Mapping[str, Option]


def option(*flags: str, **settings: Any) -> Option:
    """An `Option`: the arguments `add_argument` would take."""
    return Option(flags, MappingProxyType(dict(settings)))


def table(*options: Option) -> Table:
    """A read-only table of `options`, keyed by dest, in the order given."""
    entries: dict[str, Option] = {}
    for o in options:
        if o.dest in entries:
            raise ValueError(f"two options for {o.dest!r} in one table")
        entries[o.dest] = o
    return MappingProxyType(entries)


def add_options(
    parser: argparse._ActionsContainer,
    options: Table,
    names: Iterable[str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """Add the flags of `options` to `parser` (a parser or an argument group): all of
    them in table order, or those `names` names (dests) in that order. `defaults` and
    `helps`, keyed by dest, give a flag this command's own default or help text."""
    names = tuple(options if names is None else names)
    defaults, helps = dict(defaults or {}), dict(helps or {})
    unknown = sorted((set(names) - set(options)) | ((set(defaults) | set(helps)) - set(names)))
    if unknown:
        raise ValueError(f"not options added from this table: {', '.join(unknown)}")
    for name in names:
        overrides: dict[str, Any] = {}
        if name in defaults:
            overrides["default"] = defaults[name]
        if name in helps:
            overrides["help"] = helps[name]
        options[name].add_to(parser, **overrides)
