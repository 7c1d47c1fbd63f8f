"""`dsmooth visualize`: the image grid shows what the base classifier sees, with its labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dsmooth.analysis.denoising_grid import class_names, denoising_grid
from dsmooth.certify.smooth import Smooth
from dsmooth.cli import main
from dsmooth.data.load import load_images
from dsmooth.errors import UserError
from dsmooth.sources import load_model


class Blur(nn.Module):
    """A stand-in denoiser: 3x3 mean filter, clamped to [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 3, stride=1, padding=1).clamp(0.0, 1.0)


class Crop(nn.Module):
    """A broken denoiser that changes the image shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 1:, 1:]


@pytest.fixture
def denoiser_file(tmp_path):
    path = tmp_path / "denoiser.pt"
    torch.jit.save(torch.jit.script(Blur()), str(path))
    return path


class Recorder(nn.Module):
    """Wraps a classifier and keeps the first batch it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.first = None

    def forward(self, x):
        if self.first is None:
            self.first = x.clone()
        return self.inner(x)


def panel(fig, row: int, col: int, cols: int) -> np.ndarray:
    return np.asarray(fig.axes[row * cols + col].get_images()[0].get_array())


def test_grid_shows_clean_noisy_denoised_with_the_classifier_labels(
    tiny_classifier_file, tiny_data_file, denoiser_file
):
    classifier = load_model(str(tiny_classifier_file), role="classifier")
    denoiser = load_model(str(denoiser_file), role="denoiser")
    data = load_images(tiny_data_file)
    indices, sigmas = [0, 5, 7], [0.25, 0.5]
    fig = denoising_grid(
        classifier, data, indices=indices, sigmas=sigmas, denoiser=denoiser, seed=3
    )
    cols = 1 + 2 * len(sigmas)
    assert len(fig.axes) == len(indices) * cols
    titles = [fig.axes[c].get_title() for c in range(cols)]
    sigma = "\N{GREEK SMALL LETTER SIGMA}"  # the titles' own letter (ruff RUF001 reads it as o)
    assert titles == [
        "clean",
        f"x + d, {sigma}=0.25",
        f"D(x + d), {sigma}=0.25",
        f"x + d, {sigma}=0.5",
        f"D(x + d), {sigma}=0.5",
    ]

    for r, i in enumerate(indices):
        x = data.image(i)[None]
        assert fig.axes[r * cols].get_ylabel() == f"#{i}: {data.labels[i]}"
        # the noisy image is the first selection sample certify(seed=3) feeds the model
        recorder = Recorder(classifier)
        Smooth(recorder, 3, 0.5, seed=3).certify(x[0], 1, 1, 0.1, batch_size=1, index=i)
        noisy = recorder.first
        np.testing.assert_allclose(
            panel(fig, r, 3, cols), noisy[0].permute(1, 2, 0).clamp(0, 1).numpy(), atol=1e-6
        )
        with torch.no_grad():
            denoised = denoiser(noisy)
            expected = [classifier(x), classifier(noisy), classifier(denoised)]
        np.testing.assert_allclose(panel(fig, r, 0, cols), x[0].permute(1, 2, 0).numpy())
        np.testing.assert_allclose(
            panel(fig, r, 4, cols), denoised[0].permute(1, 2, 0).numpy(), atol=1e-6
        )
        for col, logits in zip((0, 3, 4), expected, strict=True):
            pred = int(logits.argmax(1))
            label = fig.axes[r * cols + col].xaxis.label
            assert label.get_text() == f"pred: {pred}"
            assert label.get_color() == ("tab:green" if pred == data.labels[i] else "tab:red")


def test_grid_without_denoiser_and_class_names(tiny_classifier_file, tiny_data_file):
    classifier = load_model(str(tiny_classifier_file), role="classifier")
    data = load_images(tiny_data_file)
    names = ["ant", "bee", "cow"]
    fig = denoising_grid(classifier, data, indices=[2], sigmas=[0.12, 0.25, 1.0], names=names)
    assert len(fig.axes) == 4
    assert fig.axes[0].get_ylabel() == f"#2: {names[data.labels[2]]}"
    assert all(ax.xaxis.label.get_text().split(": ")[1] in names for ax in fig.axes)


def test_class_name_option():
    assert class_names("cifar10", [])[3] == "cat"
    assert class_names("a, b", []) == ["a", "b"]
    assert class_names(None, ["x", "y"]) == ["x", "y"]
    assert class_names(None, []) is None
    with pytest.raises(UserError):
        class_names("a,,b", [])


def test_bad_requests_are_user_errors(tiny_classifier_file, tiny_data_file):
    classifier = load_model(str(tiny_classifier_file), role="classifier")
    data = load_images(tiny_data_file)
    with pytest.raises(UserError, match=r"outside 0\.\.11"):
        denoising_grid(classifier, data, indices=[12], sigmas=[0.25])
    with pytest.raises(UserError, match="positive"):
        denoising_grid(classifier, data, indices=[0], sigmas=[0.0])
    with pytest.raises(UserError, match="keep the image shape"):
        denoising_grid(classifier, data, indices=[0], sigmas=[0.25], denoiser=Crop())
    with pytest.raises(UserError, match="at least one"):
        denoising_grid(classifier, data, indices=[], sigmas=[0.25])


def test_cli_writes_the_png(tmp_path, tiny_classifier_file, tiny_data_file, denoiser_file, capsys):
    out = tmp_path / "grid.png"
    base = ["visualize", "--classifier", str(tiny_classifier_file), "--data", str(tiny_data_file)]
    argv = [*base, "--denoiser", str(denoiser_file), "--indices", "0", "1", "--sigmas", "0.25"]
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "grid.bmp")]) == 2
    assert "extension" in capsys.readouterr().err
    assert main([*base, "--indices", "99", "--out", str(out)]) == 2
    assert "outside" in capsys.readouterr().err
