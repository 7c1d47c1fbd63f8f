"""What the engine decides for the user: the thread count by measurement, no compilation
of what cannot be traced, and compilation before a run's first timed row."""

from __future__ import annotations

import argparse
import time
import warnings

import pytest
import torch
from helpers import recording_compiler, torch_threads
from torch import nn

from dsmooth.cli.commands.common import threads_value
from dsmooth.pipeline import engine
from dsmooth.pipeline.engine import (
    EngineModule,
    EngineOptions,
    accelerate,
    choose_threads,
    for_work,
)

SHAPE = (3, 8, 8)


@pytest.fixture(autouse=True)
def restore_threads():
    with torch_threads():
        yield


class SlowAt(nn.Module):
    """A classifier that sleeps when torch runs with `slow` threads: its measured speed
    depends on the thread count alone, as a loaded machine's can."""

    def __init__(self, slow: int):
        super().__init__()
        self.slow = slow

    def forward(self, x):  # no parallel kernel: only the sleep depends on the threads
        time.sleep(0.03 if torch.get_num_threads() == self.slow else 0.0)
        return x.flatten(1)[:, :4]


@pytest.mark.parametrize(("slow", "expected"), [(2, 1), (1, 2)])
def test_choose_threads_keeps_the_faster_count(slow, expected):
    chosen = choose_threads(SlowAt(slow), SHAPE, candidates=(1, 2), seconds=0.05)
    assert chosen == expected
    assert torch.get_num_threads() == expected


def test_auto_threads_are_measured_once_for_the_run(monkeypatch):
    monkeypatch.setattr(engine, "TORCH_THREADS", 2)
    lines = []
    options = EngineOptions(precision="fp32", compile=False, threads="auto", backend="torch")
    accelerate(SlowAt(2), options, report=lines.append, image_shape=SHAPE)
    assert torch.get_num_threads() == 1
    assert len(lines) == 1
    assert "--threads auto measured 1:" in lines[0]
    assert "using 1" in lines[0]


def test_short_runs_and_missing_shapes_keep_torchs_count(monkeypatch):
    assert for_work(EngineOptions(threads="auto"), engine.THREADS_MIN_SAMPLES - 1).threads is None
    assert for_work(EngineOptions(threads="auto"), engine.THREADS_MIN_SAMPLES).threads == "auto"
    assert for_work(EngineOptions(threads=3), 10).threads == 3
    monkeypatch.setattr(engine, "TORCH_THREADS", 2)
    torch.set_num_threads(2)
    lines = []
    options = EngineOptions(precision="fp32", compile=False, threads="auto")
    accelerate(SlowAt(2), options, report=lines.append)  # no image shape: nothing to measure
    assert torch.get_num_threads() == 2
    assert lines == []


def test_threads_flag_values():
    assert threads_value("auto") == "auto"
    assert threads_value("3") == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            threads_value(bad)


def test_threads_environment_default(monkeypatch):
    monkeypatch.setenv("DSMOOTH_THREADS", "3")
    assert engine.default_threads() == 3
    monkeypatch.setenv("DSMOOTH_THREADS", "auto")
    assert engine.default_threads() == "auto"
    monkeypatch.delenv("DSMOOTH_THREADS")
    assert engine.default_threads() == "auto"


class Untraceable(nn.Module):
    compilable = False
    compile_note = "this part runs eagerly"

    def forward(self, x):
        return x.flatten(1)[:, :4]


def test_a_part_that_cannot_be_traced_is_not_compiled():
    lines = []
    model = nn.Sequential(nn.Identity(), Untraceable())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no compile attempt, so no fallback warning
        fast = EngineModule(model, EngineOptions(precision="fp32", compile=True), lines.append)
        out = fast(torch.rand(2, *SHAPE))
    assert not fast.compile_enabled
    assert out.shape == (2, 4)
    assert lines == ["dsmooth: not compiling the base classifier: this part runs eagerly"]
    assert engine.untraceable_part(nn.Linear(2, 2)) is None


def test_keras_models_say_they_run_eagerly():
    from dsmooth.sources.keras import KerasClassifier

    assert KerasClassifier.compilable is False
    assert "Keras" in KerasClassifier.compile_note


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_warm_up_compiles_each_batch_size_before_the_run(monkeypatch):
    """The shapes a run will use are compiled up front (inductor itself is exercised in
    test_engine.py; here a stand-in compiler records each compilation)."""
    compiled = []
    monkeypatch.setattr(engine.torch, "compile", recording_compiler(compiled))
    fast = EngineModule(Tiny(), EngineOptions(precision="fp32", compile=True))
    seconds = fast.warm_up(SHAPE, (4, 16, 16))
    assert set(fast.compile_seconds) == {(4, *SHAPE), (16, *SHAPE)}
    assert seconds >= sum(fast.compile_seconds.values()) >= 0
    fast(torch.rand(4, *SHAPE))
    fast(torch.rand(9, *SHAPE))  # padded up to 16: no new compilation
    assert len(fast.compile_seconds) == 2
    assert compiled[:2] == [(4, *SHAPE), (16, *SHAPE)]
    eager = EngineModule(Tiny(), EngineOptions(precision="fp32", compile=False))
    eager.warm_up(SHAPE, (4,))
    assert eager.compile_seconds == {}
