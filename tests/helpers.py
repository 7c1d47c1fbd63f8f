"""Oracles shared by the statistics tests: base classifiers whose smoothed behaviour is
known in closed form, so a certificate can be checked against the truth."""

from __future__ import annotations

import torch


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


def recording_compiler(calls: list):
    """A stand-in for torch.compile that records the batch shape of every call (the
    real inductor is exercised in test_engine.py)."""

    def fake_compile(module, **_options):
        def run(x):
            calls.append(tuple(x.shape))
            return module(x)

        return run

    return fake_compile
