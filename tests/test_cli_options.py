"""The option tables (dsmooth.cli.options): one definition of a flag for every command
that takes it, with the command's own default or help where it has one."""

from __future__ import annotations

import argparse

import pytest

from dsmooth.cli import build_parser
from dsmooth.cli.commands.common import ENGINE_OPTIONS, SMOOTHING_OPTIONS
from dsmooth.cli.options import Later, add_options, option, table


def command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[name]


def flag(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(a for a in parser._actions if a.dest == dest)


def test_named_options_in_the_order_named_with_a_commands_own_default_and_help():
    options = table(
        option("--n0", type=int, default=100, help="selection (default %(default)s)"),
        option("--n", type=int, default=1000, help="estimation"),
        option("--input", dest="path", help="a file"),
    )
    assert list(options) == ["n0", "n", "path"]
    p = argparse.ArgumentParser()
    add_options(p, options, ("n", "n0"), defaults={"n0": 50}, helps={"n": "samples"})
    assert [a.dest for a in p._actions[1:]] == ["n", "n0"]
    assert p.parse_args([]) == argparse.Namespace(n=1000, n0=50)
    text = " ".join(p.format_help().split())
    assert "selection (default 50)" in text
    assert "samples" in text
    with pytest.raises(ValueError, match="nope"):
        add_options(argparse.ArgumentParser(), options, ("n0",), defaults={"nope": 1})
    with pytest.raises(ValueError, match="two options"):
        table(option("--n"), option("--n", type=int))


def test_later_values_are_computed_each_time_a_parser_is_built(monkeypatch):
    calls = []
    options = table(option("--x", default=Later(lambda: calls.append(1) or len(calls))))
    for expected in (1, 2):
        p = argparse.ArgumentParser()
        add_options(p, options)
        assert p.parse_args([]).x == expected
    monkeypatch.setenv("DSMOOTH_PRECISION", "bf16")
    monkeypatch.setenv("DSMOOTH_THREADS", "3")
    certify = command("certify")
    assert flag(certify, "precision").default == "bf16"
    assert flag(certify, "threads").default == 3


def test_commands_share_one_definition_of_their_common_flags():
    """The same flag, type and help wherever a table's flag is taken as it is."""
    for dest in ("threads", "precision", "compile"):
        spec = ENGINE_OPTIONS[dest].settings
        for name in ("certify", "predict", "evaluate", "serve", "bench"):
            action = flag(command(name), dest)
            assert action.type is spec.get("type")
            assert action.choices == spec.get("choices")
    assert flag(command("demo"), "threads").type is ENGINE_OPTIONS["threads"].settings["type"]
    demo, certify = command("demo"), command("certify")
    assert (flag(demo, "n0").default, flag(certify, "n0").default) == (50, 100)
    assert flag(demo, "n0").help == SMOOTHING_OPTIONS["n0"].settings["help"]
    for name in ("evaluate", "test-denoiser"):
        assert flag(command(name), "no_progress").help == "hide the progress bar"
