"""Helpers shared by several test modules: oracles whose smoothed behaviour is known in
closed form, tiny stand-ins, and builders and readers of `dsmooth certify` runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from scipy.stats import norm


class LinearBinary(torch.nn.Module):
    """f(x) = [w.x + b > 0]. Under N(0, sigma^2 I) noise, P[f(x + d) = 1] is
    Phi((w.x + b) / (sigma ||w||)), and g's exact certified radius at x is
    |w.x + b| / ||w||."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.register_buffer("w", w.flatten().double())
        self.b = b

    def forward(self, x):
        return (x.flatten(1).double() @ self.w + self.b > 0).long()


def linear_binary_with_pa(
    w: torch.Tensor, x: torch.Tensor, p_a: float, sigma: float
) -> tuple[LinearBinary, float]:
    """The LinearBinary with weights `w` whose bias puts P[f(x + d) = 1] at `p_a` (up to
    float rounding), and g's exact certified radius at x, |sigma PhiInv(p_a)|."""
    wf = w.flatten().double()
    target = sigma * wf.norm() * norm.ppf(p_a)  # the required w.x + b
    b = float(target - wf @ x.flatten().double())
    return LinearBinary(w, b), abs(float(target / wf.norm()))


def recording_compiler(calls: list):
    """A stand-in for torch.compile that records the batch shape of every call (the
    real inductor is exercised in test_engine.py)."""

    def fake_compile(module, **_options):
        def run(x):
            calls.append(tuple(x.shape))
            return module(x)

        return run

    return fake_compile


@contextlib.contextmanager
def torch_threads(count: int | None = None) -> Iterator[None]:
    """Inside: torch's thread count `count` (None: left as it is). After: the count it
    had before, whatever ran inside (the CLI's --threads sets it for the process)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PickleExploit:
    """An object whose unpickling calls `call(*args)`: what a hostile data or weights
    file holds. Loaders must refuse it before anything runs."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


# --- `dsmooth certify` runs -------------------------------------------------------------


def certify_args(
    data,
    classifier,
    out,
    *extra: str,
    command: str = "certify",
    sigma: str = "0.25",
    n0: str | None = "50",
    n: str | None = "500",
    batch: str | None = "100",
) -> list[str]:
    """The argv of `dsmooth certify` (or `predict`, with n0=None) on `data` with
    `classifier` into the log `out`, without progress bars, then `extra`. A setting given
    as None is left to the command's default."""
    argv = [command, "--data", str(data), "--classifier", str(classifier), "--sigma", sigma]
    for flag, value in (("--n0", n0), ("--n", n), ("--batch", batch)):
        if value is not None:
            argv += [flag, value]
    return [*argv, "--out", str(out), "--no-progress", *extra]


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """A copy of argv with `flag`'s value set to `value` (the flag added if absent)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def read_rows(path) -> tuple[list[str], list[list[str]]]:
    """A result log as (header, rows), every field a string."""
    header, *lines = path.read_text().splitlines()
    return header.split("\t"), [line.split("\t") for line in lines]


def without_time(header: list[str], rows: list[list[str]]) -> list[list[str]]:
    """The rows without the log's time column (what differs between equal runs)."""
    t = header.index("time")
    return [r[:t] + r[t + 1 :] for r in rows]


def warnings_in(err: str) -> list[str]:
    """The CLI's warning lines in a stderr text."""
    return [line for line in err.splitlines() if line.startswith("warning:")]
