"""Certificates that cannot be wrong by accident (issue 17): the base-classifier output
contract, the statistics' input checks, a required noise index, the denoiser's sigma."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import certify_args, warnings_in
from scipy.stats import norm

from dsmooth import ABSTAIN, Smooth, UserError
from dsmooth.certify import stats
from dsmooth.certify.base_classifier import to_labels
from dsmooth.certify.sequential import SequentialPlan, certify_sequential
from dsmooth.cli import main

SHAPE = (1, 4, 4)
SIGMA = 0.25
REPO = Path(__file__).resolve().parents[1]
#: certify_args(..., *TWO, **SMALL): a quick CLI run on two images
TWO, SMALL = ("--max", "2"), {"n0": "10", "n": "20", "batch": "20"}


def threshold_classifier(p_class0: float):
    """f(x + d) = 0 iff d[0, 0, 0] < sigma * PhiInv(p_class0) at x = 0: P[f = 0] = p_class0."""
    cut = SIGMA * norm.ppf(p_class0)

    def labels(batch: torch.Tensor) -> torch.Tensor:
        return (batch[:, 0, 0, 0] >= cut).long()

    return labels


def doubled(fn):
    """Every label twice: counted as votes, this turns pA = 0.45 into a certificate."""
    return lambda batch: torch.cat([fn(batch), fn(batch)])


# --- 1. base-classifier contract ------------------------------------------------------


@pytest.mark.parametrize("method", ["cp", "sequential"])
def test_duplicated_labels_cannot_certify_a_minority_class(method):
    base = doubled(threshold_classifier(0.45))
    smooth = Smooth(base, 2, SIGMA, seed=0)
    with pytest.raises(UserError, match="returned 128 labels for 64 images"):
        smooth.certify(torch.zeros(SHAPE), 100, 2000, 0.001, 64, index=0, method=method)
    # the same classifier answering once per image is (correctly) not certified for class 0
    honest = Smooth(threshold_classifier(0.45), 2, SIGMA, seed=0)
    label, _ = honest.certify(torch.zeros(SHAPE), 100, 2000, 0.001, 64, index=0)
    assert label in (1, ABSTAIN)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (lambda b: torch.zeros(len(b) - 1, dtype=torch.long), "returned 9 labels for 10 images"),
        (lambda b: torch.zeros(len(b) + 1, 2), "returned 11 rows for 10 images"),
        (lambda b: torch.full((len(b),), 0.7), "1-D float32 array; labels must be integers"),
        (lambda b: np.full(len(b), 0.9), "1-D float64 array"),
        (lambda b: b[:, 0, 0, 0] > 0, "booleans"),
        (lambda b: torch.zeros(len(b), 2, dtype=torch.bool), "booleans"),
    ],
)
def test_malformed_outputs_are_user_errors(output, message):
    smooth = Smooth(output, 2, SIGMA)
    with pytest.raises(UserError, match=message):
        smooth.predict(torch.zeros(SHAPE), 10, 0.01, batch_size=10, index=0)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16, np.int8, np.uint16])
def test_integer_labels_of_any_width_are_labels(dtype):
    def base(b):
        ones = np.ones(len(b))
        return ones.astype(dtype) if isinstance(dtype, type) else torch.ones(len(b), dtype=dtype)

    counts = Smooth(base, 3, SIGMA).sample_counts(torch.zeros(SHAPE), 50, 20, index=0)
    assert counts.tolist() == [0, 50, 0]


def test_to_labels_checks_the_row_count_only_when_told():
    assert to_labels(torch.tensor([1, 0, 1]), 2).tolist() == [1, 0, 1]
    assert to_labels(torch.tensor([[0.1, 0.9]]), 2, 1).tolist() == [1]
    with pytest.raises(UserError, match="one label or score row per image"):
        to_labels(torch.tensor([1, 0, 1]), 2, 2)


def test_counts_must_add_up_to_the_samples_drawn():
    """The last check before a bound: even a label function that skips to_labels cannot
    hand Smooth more (or fewer) votes than samples."""
    smooth = Smooth(threshold_classifier(0.45), 2, SIGMA)
    smooth._labels = doubled(threshold_classifier(0.45))
    with pytest.raises(RuntimeError, match="do not add up to the 100 samples"):
        smooth.sample_counts(torch.zeros(SHAPE), 100, 50, index=0)


# --- 2. statistics --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn", [stats.lower_confidence_bound, stats.upper_confidence_bound, stats.binomial_pvalue]
)
@pytest.mark.parametrize(
    ("k", "n", "words"),
    [
        (11, 10, "k must be in 0..n"),
        (-1, 10, "k must be in 0..n"),
        (0, 0, "n must be at least 1"),
        (1, 0, "n must be at least 1"),
        (2.5, 10, "k and n must be integers"),
    ],
)
def test_bounds_refuse_impossible_counts(fn, k, n, words):
    args = (k, n, 0.01) if fn is not stats.binomial_pvalue else (k, n)
    with pytest.raises(ValueError, match=re.escape(words)):
        fn(*args)


def test_bounds_still_accept_the_edges():
    assert stats.lower_confidence_bound(0, 10, 0.01) == 0.0
    assert stats.upper_confidence_bound(10, 10, 0.01) == 1.0
    assert stats.lower_confidence_bound(np.int64(10), 10, 0.01) == pytest.approx(0.01**0.1)


@pytest.mark.parametrize("alpha", [0.5, 0.7, 1.0, 0.0, float("nan")])
def test_alpha_must_be_below_one_half(alpha):
    with pytest.raises(UserError, match=r"alpha must be in \(0, 0.5\)"):
        stats.check_alpha(alpha)
    with pytest.raises(UserError, match="alpha"):
        SequentialPlan(SIGMA, alpha, n_max=100)
    smooth = Smooth(threshold_classifier(0.9), 2, SIGMA)
    with pytest.raises(UserError, match="alpha"):
        smooth.certify(torch.zeros(SHAPE), 10, 10, alpha, index=0)


def test_cli_refuses_alpha_one_half(tiny_data_file, tiny_classifier_file, tmp_path, capsys):
    argv = certify_args(tiny_data_file, tiny_classifier_file, tmp_path / "a.tsv", *TWO, **SMALL)
    assert main([*argv, "--alpha", "0.5"]) == 2
    assert "alpha must be in (0, 0.5), got 0.5." in capsys.readouterr().err


# --- 3. the noise index is required ---------------------------------------------------


@pytest.mark.parametrize(
    "fn", [Smooth.certify, Smooth.predict, Smooth.sample_counts, certify_sequential]
)
def test_index_is_a_required_keyword(fn):
    p = inspect.signature(fn).parameters["index"]
    assert p.kind is inspect.Parameter.KEYWORD_ONLY
    assert p.default is inspect.Parameter.empty


def test_calls_without_index_fail():
    smooth = Smooth(threshold_classifier(0.9), 2, SIGMA)
    x = torch.zeros(SHAPE)
    with pytest.raises(TypeError, match="index"):
        smooth.certify(x, 10, 10, 0.01)
    with pytest.raises(TypeError, match="index"):
        smooth.predict(x, 10, 0.01)
    with pytest.raises(TypeError):
        smooth.sample_counts(x, 10, 10, 0)  # positional index is refused too


# --- 4. a denoiser used at another sigma than it was trained for ------------------------


@pytest.mark.parametrize("command", ["certify", "predict"])
def test_sigma_mismatch_warns_once_and_strict_refuses(
    command, tiny_data_file, tiny_classifier_file, denoiser_025, tmp_path, capsys
):
    small = SMALL if command == "certify" else {**SMALL, "n0": None}  # predict takes no n0

    def run(out, sigma, *extra):
        argv = certify_args(
            tiny_data_file,
            tiny_classifier_file,
            tmp_path / out,
            *TWO,
            command=command,
            sigma=sigma,
            **small,
        )
        return main([*argv, "--denoiser", str(denoiser_025), *extra])

    assert run("a.tsv", "0.5") == 0
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith(
        "warning: the denoiser was trained for sigma 0.25 but is used at sigma 0.5;"
    )
    assert run("b.tsv", "0.5", "--strict") == 2
    err = capsys.readouterr().err
    assert "trained for sigma 0.25 but is used at sigma 0.5" in err
    assert "error" in err
    assert not (tmp_path / "b.tsv").exists()
    assert run("c.tsv", repr(0.25 * (1 + 1e-7)), "--strict") == 0  # within 1e-6
    assert warnings_in(capsys.readouterr().err) == []


def test_evaluate_and_test_denoiser_check_the_sigma(
    tiny_data_file, tiny_classifier_file, denoiser_025, capsys
):
    base = ["--data", str(tiny_data_file), "--classifier", str(tiny_classifier_file)]
    evaluate = ["evaluate", *base, "--denoiser", str(denoiser_025), "--no-progress"]
    assert main(evaluate) == 0  # clean accuracy only: no sigma to compare
    assert warnings_in(capsys.readouterr().err) == []
    assert main([*evaluate, "--sigma", "0.5"]) == 0
    assert len(warnings_in(capsys.readouterr().err)) == 1
    assert main([*evaluate, "--sigma", "0.5", "--strict"]) == 2
    assert "trained for sigma 0.25 but is used at sigma 0.5" in capsys.readouterr().err

    test = ["test-denoiser", "--denoiser", str(denoiser_025), "--data", str(tiny_data_file)]
    test += ["--no-progress", "--sigma"]
    assert main([*test, "0.12"]) == 0
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1
    assert "sigma 0.25 but is used at sigma 0.12" in lines[0]
    assert main([*test, "0.12", "--strict"]) == 2
    assert main([*test, "0.25", "--strict"]) == 0
    assert warnings_in(capsys.readouterr().err) == []


# --- 5. docs --------------------------------------------------------------------------


def test_sequential_doc_says_p_at_most_one_half():
    text = " ".join((REPO / "docs" / "sequential.md").read_text().split())
    assert "not the top class, then p <= 1/2" in text
    assert "then p < 1/2" not in text


def test_grayscale_images_through_an_rgb_model_are_refused(conv_checkpoint, tmp_path, capsys):
    """A Normalize layer broadcasts 1 -> 3 channels, so grayscale images would run
    through an RGB classifier with one noise draw shared by all three channels; the
    declared input (first convolution, ONNX/Keras input shape) must match the data."""
    import numpy as np
    import torch

    from dsmooth.cli import main
    from dsmooth.sources.contract import declared_channels

    ckpt = conv_checkpoint
    gray = tmp_path / "gray.npz"
    rng = np.random.default_rng(0)
    np.savez(gray, images=rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8), labels=[0, 1, 2, 0])
    out = tmp_path / "log.tsv"
    argv = ["certify", "--data", str(gray), "--classifier", str(ckpt), "--sigma", "0.25"]
    assert main([*argv, "--n0", "5", "--n", "10", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "1 channel but the classifier takes 3" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert main(["evaluate", "--data", str(gray), "--classifier", str(ckpt)]) == 2
    assert "1 channel but the classifier takes 3" in capsys.readouterr().err
    assert declared_channels(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3))) == 1
    assert declared_channels(torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3)))) == 2
    assert declared_channels(torch.nn.Linear(3, 2)) is None
