"""Denoisers receive sigma: a sigma-aware denoiser defined only here (any module with
`at_sigma(sigma)`) gets the sigma each command runs at, through `compose(..., sigma=)`;
a checkpoint trained for another sigma is said once, as one warning line, and not at all
when the sigmas match (docs/design.md, "Denoisers receive sigma")."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import LinearClassifier
from helpers import warnings_in
from torch import nn

from dsmooth.certify.smooth import Smooth
from dsmooth.cli import main
from dsmooth.errors import UserError
from dsmooth.models.pretrained import pretrained
from dsmooth.pipeline.compose import (
    SigmaMismatchWarning,
    compose,
    denoiser_at_sigma,
    trained_sigma,
)

#: `--denoiser` spec of the toy below: tests/ is on sys.path (pytest's rootdir-relative
#: import), so the CLI imports this very module and the toy's records are the test's.
TOY = f"{Path(__file__).stem}:make_toy"


class ToySigmaDenoiser(nn.Module):
    """D(x) = x, usable only once told its sigma: `at_sigma` returns a configured copy
    and records the sigma it was given; `forward` records the sigma it runs at."""

    received: ClassVar[list[float]] = []  # every sigma at_sigma was called with, in this process
    ran_at: ClassVar[set[float]] = set()  # the sigmas forward ran at

    def __init__(self, sigma: float | None = None):
        super().__init__()
        self.sigma = sigma
        self.scale = nn.Parameter(torch.ones(()))  # a weight, so exporters have a module

    def at_sigma(self, sigma: float) -> ToySigmaDenoiser:
        ToySigmaDenoiser.received.append(sigma)
        return ToySigmaDenoiser(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma is None:
            raise UserError("the toy denoiser was run without a sigma.")
        ToySigmaDenoiser.ran_at.add(self.sigma)
        return x * self.scale


def make_toy() -> nn.Module:
    """The entry point `TOY` names."""
    return ToySigmaDenoiser()


@pytest.fixture(autouse=True)
def _fresh_records():
    ToySigmaDenoiser.received.clear()
    ToySigmaDenoiser.ran_at.clear()


# --- the hook -----------------------------------------------------------------------------


def test_compose_hands_sigma_to_a_sigma_aware_denoiser_and_smooth_runs_it():
    toy = make_toy()
    base = compose(LinearClassifier(3 * 4 * 4, 3), toy, sigma=0.5)
    assert ToySigmaDenoiser.received == [0.5]
    assert base.denoiser is not toy
    assert base.denoiser.sigma == 0.5
    assert base.sigma == 0.5
    assert toy.sigma is None  # the original is left as it was
    smooth = Smooth(base, 3, 0.5, seed=0)
    smooth.predict(torch.rand(3, 4, 4), 8, 0.001, batch_size=8, index=0)
    assert ToySigmaDenoiser.ran_at == {0.5}


def test_compose_without_sigma_uses_the_denoiser_as_given():
    """The public two-argument form: no hook is called, ordinary denoisers are unchanged,
    and a sigma-aware one not yet set up refuses to run."""
    classifier, plain = LinearClassifier(3 * 4 * 4, 3), nn.Identity()
    assert compose(classifier, plain).denoiser is plain
    assert compose(classifier, plain, sigma=0.25).denoiser is plain
    base = compose(classifier, make_toy())
    assert ToySigmaDenoiser.received == []
    assert base.sigma is None
    with pytest.raises(UserError, match="without a sigma"):
        base(torch.rand(1, 3, 4, 4))


def test_a_hook_that_returns_nothing_is_a_user_error():
    class Forgetful(nn.Identity):
        def at_sigma(self, sigma):
            self.sigma = sigma  # and forgets to return itself

    with pytest.raises(UserError, match="returned None"):
        compose(nn.Flatten(), Forgetful(), sigma=0.25)
    with pytest.raises(UserError, match="sigma"):
        denoiser_at_sigma(make_toy(), -1.0)


# --- the product path: every command that runs f(D(.)) passes its sigma ---------------------


def test_certify_gives_the_toy_the_certified_sigma(tiny_data_file, tiny_classifier_file, tmp_path):
    out = tmp_path / "c.tsv"
    argv = ["certify", "--data", str(tiny_data_file), "--classifier", str(tiny_classifier_file)]
    argv += ["--denoiser", TOY, "--sigma", "0.5", "--n0", "10", "--n", "20", "--batch", "20"]
    argv += ["--max", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert ToySigmaDenoiser.received == [0.5]
    assert ToySigmaDenoiser.ran_at == {0.5}
    assert len(out.read_text().splitlines()) == 3
    assert json.loads((tmp_path / "c.tsv.json").read_text())["sigma"] == 0.5


@pytest.mark.parametrize("command", ["predict", "evaluate", "test-denoiser", "export"])
def test_other_commands_give_the_toy_their_sigma(
    command, tiny_data_file, tiny_classifier_file, tmp_path
):
    data, classifier = ["--data", str(tiny_data_file)], ["--classifier", str(tiny_classifier_file)]
    samples = ["--n", "20", "--batch", "20", "--max", "2", "--out", str(tmp_path / "p.tsv")]
    exported = str(tmp_path / "d.pt")
    argv = {
        "predict": [*data, *classifier, *samples, "--no-progress"],
        "evaluate": [*data, *classifier, "--no-progress"],
        "test-denoiser": [*data, *classifier, "--no-progress"],
        "export": ["--format", "torchscript", "--input-shape", "3,8,8", "--out", exported],
    }[command]
    assert main([command, *argv, "--denoiser", TOY, "--sigma", "0.12"]) == 0
    assert ToySigmaDenoiser.received == [0.12]
    assert ToySigmaDenoiser.ran_at == {0.12}


def test_visualize_sets_up_the_denoiser_per_sigma(tiny_data_file, tiny_classifier_file, tmp_path):
    argv = ["visualize", "--classifier", str(tiny_classifier_file), "--data", str(tiny_data_file)]
    argv += ["--denoiser", TOY, "--indices", "0", "--sigmas", "0.12", "0.5"]
    assert main([*argv, "--out", str(tmp_path / "grid.png")]) == 0
    assert ToySigmaDenoiser.received == [0.12, 0.5]
    assert ToySigmaDenoiser.ran_at == {0.12, 0.5}


# --- a checkpoint trained for another sigma: one warning line, none when they match ---------


def test_a_shipped_denoiser_at_another_sigma_warns_in_the_library():
    denoiser = pretrained("cifar10-dncnn-mse-0.25")
    assert trained_sigma(denoiser) == 0.25
    classifier = nn.Flatten()
    mismatch = "trained for sigma 0.25 but is used at sigma 0.5"
    with pytest.warns(SigmaMismatchWarning, match=mismatch):
        compose(classifier, denoiser, sigma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compose(classifier, denoiser, sigma=0.25)
        compose(classifier, denoiser)  # no sigma: nothing to compare
    with pytest.raises(UserError, match=r"trained for sigma 0\.25"):
        compose(classifier, denoiser, sigma=0.5, strict=True)


@pytest.mark.parametrize("command", ["export", "visualize"])
def test_commands_outside_certification_warn_once(
    command, denoiser_025, tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    if command == "export":
        argv = ["export", "--denoiser", str(denoiser_025), "--format", "torchscript"]
        argv += ["--out", str(tmp_path / "d.pt"), "--input-shape", "3,8,8", "--sigma"]
    else:
        argv = ["visualize", "--classifier", str(tiny_classifier_file)]
        argv += ["--data", str(tiny_data_file), "--denoiser", str(denoiser_025)]
        argv += ["--indices", "0", "--out", str(tmp_path / "g.png"), "--sigmas"]
    assert main([*argv, "0.5"]) == 0
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert "trained for sigma 0.25 but is used at sigma 0.5" in lines[0]
    assert main([*argv, "0.25"]) == 0
    assert warnings_in(capsys.readouterr().err) == []
    if command == "export":
        assert main([*argv, "0.5", "--strict"]) == 2
        assert "trained for sigma 0.25 but is used at sigma 0.5" in capsys.readouterr().err
