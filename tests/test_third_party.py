"""The third-party pretrained CIFAR ResNets (akamaster) import and keep their accuracy.

Their README: ResNet-20 81.0% and ResNet-56 83.2% on the JPEG test set (0.80-0.82 on
every 1,000-image block for ResNet-20), 94% for ResNet-20 on the 100 lossless images.
We check the first 1,000 JPEG images with margins, through the CLI and the Python API.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import dsmooth
from dsmooth.data.datasets import load_dataset
from dsmooth.pipeline.evaluation import evaluate_accuracy

SHARED = Path(__file__).resolve().parents[2] / "shared"
AKAMASTER = SHARED / "models" / "third-party" / "cifar-resnet-akamaster"
CIFAR = SHARED / "data" / "cifar10"
R20 = AKAMASTER / "resnet20-12fca82f.th"
R56 = AKAMASTER / "resnet56-4bfd9763.th"

pytestmark = pytest.mark.skipif(
    not (R20.is_file() and R56.is_file() and (CIFAR / "cifar10_test.npz").is_file()),
    reason="../shared third-party models or CIFAR-10 not available",
)


def run_evaluate(argv: list[str]) -> int:
    from dsmooth.cli.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def resnet20():
    return dsmooth.load(f"cifar_resnet20:{R20}", mean="imagenet", std="imagenet")


@pytest.fixture(scope="module")
def test_set():
    return load_dataset(CIFAR / "cifar10_test.npz")


def test_resnet20_accuracy_with_its_imagenet_normalisation(resnet20, test_set):
    model, data = resnet20, test_set
    result = evaluate_accuracy(model, data, indices=range(1000), progress=False)
    assert 0.78 <= result["clean_accuracy"] <= 0.85, result  # README: 0.80-0.82 per block
    lossless = load_dataset(f"{CIFAR / 'cifar10_lossless_subsets.npz'}:test_first100")
    assert evaluate_accuracy(model, lossless, progress=False)["clean_accuracy"] >= 0.90


@pytest.mark.slow
def test_resnet56_through_import_weights_and_evaluate(tmp_path, capsys):
    from dsmooth.cli.commands import import_weights

    parser = argparse.ArgumentParser()
    import_weights.register(parser.add_subparsers())
    out = tmp_path / "resnet56"
    argv = ["import-weights", str(R56), "--arch", "cifar_resnet56"]
    args = parser.parse_args([*argv, "--mean", "imagenet", "--std", "imagenet", "--out", str(out)])
    assert args.func(args) == 0
    capsys.readouterr()
    data = ["--data", str(CIFAR / "cifar10_test.npz"), "--max", "1000", "--no-progress"]
    assert run_evaluate(["--classifier", str(out), *data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 1000
    assert 0.80 <= result["clean_accuracy"] <= 0.87, result  # README: 83.2% on all 10k
    assert dsmooth.load(out).dsmooth_config["source"]["best_prec1"] == pytest.approx(93.62)


def test_evaluate_cli_with_arch_options_noise_and_denoiser(tmp_path, capsys):
    data = ["--data", str(CIFAR / "cifar10_test.npz"), "--max", "100", "--no-progress"]
    model = ["--classifier", str(R20), "--arch", "cifar_resnet20"]
    model += ["--mean", "imagenet", "--std", "imagenet"]
    assert run_evaluate([*model, *data, "--sigma", "0.5", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    # an undefended classifier collapses under sigma = 0.5 noise (near chance)
    assert plain["n"] == 100
    assert plain["clean_accuracy"] > 0.7
    assert plain["noisy_accuracy"] < 0.35
    # a fresh DnCNN is the identity map: the same numbers through --denoiser
    from dsmooth.models import create
    from dsmooth.models.checkpoint import save_checkpoint

    save_checkpoint(create("dncnn"), tmp_path / "identity", {"architecture": "dncnn"})
    few = [*data[:2], "--max", "16", "--no-progress", "--sigma", "0.5", "--json"]
    assert run_evaluate([*model, *few]) == 0
    without = json.loads(capsys.readouterr().out)
    assert run_evaluate([*model, "--denoiser", str(tmp_path / "identity"), *few]) == 0
    assert json.loads(capsys.readouterr().out) == without
    assert run_evaluate([*model, *data]) == 0
    text = capsys.readouterr().out
    assert f"clean accuracy: {100 * plain['clean_accuracy']:.2f}%" in text
    assert "noisy" not in text


def test_noise_draws_do_not_depend_on_batch_size(resnet20, test_set):
    model, data = resnet20, test_set
    a = evaluate_accuracy(
        model, data, sigma=0.25, indices=range(40), batch=40, seed=3, progress=False
    )
    b = evaluate_accuracy(
        model, data, sigma=0.25, indices=range(40), batch=7, seed=3, progress=False
    )
    assert a == b
