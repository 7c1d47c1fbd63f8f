"""Classifier training and the shared loop: augmentation, schedules, real short runs on
CIFAR-10, exact resume, recipe checks, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import TEST, TRAIN, classifier_recipe, needs_cifar

from dsmooth.cli import main
from dsmooth.data.transforms import random_crop_flip, to_float_nchw
from dsmooth.errors import UserError
from dsmooth.models.checkpoint import load_checkpoint
from dsmooth.training.classifier import train_classifier
from dsmooth.training.data import load_training_set
from dsmooth.training.loop import check_same_recipe
from dsmooth.training.schedule import lr_at
from dsmooth.training.state import read_info


def test_crop_flip_are_windows_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 6, 5, 3), dtype=torch.uint8)
    out = random_crop_flip(images, g, pad=2)
    padded = torch.nn.functional.pad(images, (0, 0, 2, 2, 2, 2))
    flips = shifts = 0
    for i in range(len(images)):
        found = [
            (oy, ox, f)
            for oy in range(5)
            for ox in range(5)
            for f in (False, True)
            if torch.equal(out[i], _window(padded[i], oy, ox, f))
        ]
        assert found, f"image {i} is not a (flipped) window of its padded copy"
        flips += any(f for *_, f in found)
        shifts += any((oy, ox) != (2, 2) for oy, ox, _ in found)
    assert 15 < flips < 49
    assert shifts > 40  # both kinds of randomness happen
    x = to_float_nchw(out)
    assert x.shape == (64, 3, 6, 5)
    assert x.dtype == torch.float32
    assert 0 <= x.min() <= x.max() <= 1


def _window(image, oy, ox, flip):
    w = image[oy : oy + 6, ox : ox + 5]
    return w.flip(1) if flip else w


def test_schedules():
    assert lr_at(0, 100, base_lr=0.1, schedule="cosine") == pytest.approx(0.1)
    assert lr_at(50, 100, base_lr=0.1, schedule="cosine") == pytest.approx(0.05)
    assert lr_at(100, 100, base_lr=0.1, schedule="cosine") == pytest.approx(0.0, abs=1e-12)
    steps = [
        lr_at(s, 90, base_lr=0.1, schedule="step", milestones=(1 / 3, 2 / 3))
        for s in (0, 29, 30, 59, 60)
    ]
    assert steps == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    one = [lr_at(s, 100, base_lr=0.1, schedule="onecycle") for s in range(100)]
    assert one[0] == pytest.approx(0.004)
    assert max(one) == pytest.approx(0.1, rel=0.01)
    assert int(np.argmax(one)) == 30
    assert one[-1] < 0.001
    assert lr_at(0, 100, base_lr=0.1, schedule="constant", warmup_steps=10) == pytest.approx(0.01)
    assert lr_at(9, 100, base_lr=0.1, schedule="constant", warmup_steps=10) == pytest.approx(0.1)
    with pytest.raises(UserError):
        lr_at(0, 10, base_lr=0.1, schedule="linear")


@needs_cifar
def test_classifier_training_reduces_the_loss(tmp_path):
    images, labels = load_training_set([TRAIN], 512)
    r = classifier_recipe(
        tmp_path,
        epochs=12,
        max_train_images=512,
        lr=0.1,
        noise_sigma=0.0,
        label_smoothing=0.0,
        schedule="onecycle",
    )

    def loss_of(model):
        model.eval()
        with torch.no_grad():
            logits = model(to_float_nchw(images))
        return float(torch.nn.functional.cross_entropy(logits, labels))

    from dsmooth.models import create

    torch.manual_seed(r.seed)
    before = loss_of(create("test_tiny_cnn"))  # the same initialisation as the run
    assert train_classifier(r) == "done"
    model, config = load_checkpoint(r.out)
    after = loss_of(model)
    assert after < before - 0.25, (before, after)  # 192 steps: ~2.3 -> below ~1.9
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert len(rows) == 12
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2
    assert config["kind"] == "classifier"
    assert config["epochs"] == 12
    assert config["metrics"]["epoch"] == 12
    assert config["normalization"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "lr", "train_loss", "train_acc", "val_acc", "val_loss"} <= set(header)


@needs_cifar
@pytest.mark.parametrize("channels_last", [False, True])
def test_resume_is_exact(tmp_path, channels_last):
    """Stops mid-epoch (step 3 of 4), again across an epoch end, then finishes: the
    weights, optimizer momentum and metrics equal an uninterrupted run bit for bit."""
    full = classifier_recipe(tmp_path, "full", channels_last=channels_last)
    assert train_classifier(full) == "done"
    part = classifier_recipe(tmp_path, "part", channels_last=channels_last, max_steps=3)
    assert train_classifier(part) == "stopped"
    assert read_info(part.out)["progress"]["step"] == 3
    assert train_classifier(part, resume=True) == "stopped"
    assert read_info(part.out)["progress"]["step"] == 6
    part.max_steps = None
    assert train_classifier(part, resume=True) == "done"
    a = load_file(str(tmp_path / "full" / "train_state.safetensors"))
    b = load_file(str(tmp_path / "part" / "train_state.safetensors"))
    assert a.keys() == b.keys()
    assert any(k.startswith("optim/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    timing = {"train_images_per_s", "epoch_minutes"}
    rows_a = read_info(full.out)["progress"]["history"]
    rows_b = read_info(part.out)["progress"]["history"]
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows_b
    ]
    # a clone that keeps only the state (the campaign commits no checkpoint copy) gets
    # the finished model back by resuming, and nothing is trained again
    (tmp_path / "part" / "model.safetensors").unlink()
    (tmp_path / "part" / "config.json").unlink()
    assert train_classifier(part, resume=True) == "done"
    assert read_info(part.out)["progress"]["step"] == rows_a[-1]["step"]
    again, config = load_checkpoint(part.out)
    finished, _ = load_checkpoint(full.out)
    assert config["epochs"] == 2
    for (k, v), w in zip(again.state_dict().items(), finished.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


@needs_cifar
def test_existing_run_needs_resume_and_same_recipe(tmp_path):
    r = classifier_recipe(tmp_path, epochs=1, max_train_images=32)
    train_classifier(r)
    with pytest.raises(UserError, match="--resume"):
        train_classifier(r)
    r2 = classifier_recipe(tmp_path, epochs=1, max_train_images=32, lr=0.2)
    with pytest.raises(UserError, match="lr"):
        train_classifier(r2, resume=True)
    check_same_recipe({"lr": 0.1, "threads": 1}, {"lr": 0.1, "threads": 2})  # threads may change
    # a clone elsewhere resumes a committed run: data paths compare by file name
    moved = {"data": ["/elsewhere/a.npz", "/elsewhere/b.npz"], "val_data": "/x/t.npz"}
    check_same_recipe({"data": ["/here/a.npz", "/here/b.npz"], "val_data": "/y/t.npz"}, moved)
    with pytest.raises(UserError, match="data"):
        check_same_recipe({"data": ["/here/a.npz"], "val_data": "/y/t.npz"}, moved)


@needs_cifar
def test_init_continues_the_given_classifier(tmp_path):
    """--init starts from the checkpoint's weights, not a fresh initialisation: with a
    zero learning rate (constant schedule), the result is the checkpoint itself."""
    first = classifier_recipe(tmp_path, "first", epochs=1, max_train_images=64, noise_sigma=0.0)
    assert train_classifier(first) == "done"
    warm = classifier_recipe(
        tmp_path,
        "warm",
        epochs=1,
        max_train_images=64,
        init=first.out,
        lr=1e-12,
        schedule="constant",
        noise_sigma=0.0,
        label_smoothing=0.0,
        seed=5,
    )
    assert train_classifier(warm) == "done"
    a, _ = load_checkpoint(first.out)
    b, config = load_checkpoint(warm.out)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if v.is_floating_point() and "running" not in k:
            assert torch.allclose(v, w, atol=1e-6), k
    assert config["recipe"]["init"] == first.out
    bad = classifier_recipe(tmp_path, "bad", epochs=1, init=first.out, arch="cifar_resnet20")
    with pytest.raises(UserError, match=r"architecture|--arch"):
        train_classifier(bad)
    with pytest.raises(UserError, match="classes"):
        train_classifier(
            classifier_recipe(tmp_path, "bad2", epochs=1, init=first.out, num_classes=12)
        )


@needs_cifar
def test_divergence_is_a_user_error_and_keeps_nothing_half_written(tmp_path):
    r = classifier_recipe(tmp_path, epochs=1, max_train_images=64, lr=1e30, noise_sigma=0.0)
    with pytest.raises(UserError, match="diverged"):
        train_classifier(r)
    assert not (tmp_path / "run" / "train_state.safetensors").exists()


@needs_cifar
def test_cli_train_classifier_resnet20(tmp_path, capsys):
    out = tmp_path / "r20"
    args = [
        "train-classifier",
        "--arch",
        "cifar_resnet20",
        "--data",
        TRAIN,
        "--val-data",
        TEST,
        "--max-train-images",
        "32",
        "--max-val-images",
        "16",
        "--batch",
        "16",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--precision",
        "fp32",
        "--weight-decay",
        "1e-4",
        "--schedule",
        "step",
        "--milestones",
        "0.5",
    ]
    assert main(args) == 0
    model, config = load_checkpoint(out)
    assert config["architecture"] == "cifar_resnet20"
    assert config["recipe"]["weight_decay"] == 1e-4
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert len((out / "metrics.csv").read_text().splitlines()) == 2
    printed = capsys.readouterr().out  # the epoch's line, although the bar is hidden
    assert "epoch 1 | step 2 |" in printed
    assert "train_acc" in printed
    assert main(args) == 2  # exists: one-line error, no traceback
    err = capsys.readouterr().err
    assert "--resume" in err
    assert len(err.strip().splitlines()) == 1
    assert main([*args, "--resume"]) == 0  # already finished: nothing to do
    assert (
        main(["train-classifier", "--arch", "nope", "--data", TRAIN, "--out", str(tmp_path / "x")])
        == 2
    )
    assert (
        main(
            [
                "train-classifier",
                "--arch",
                "cifar_resnet20",
                "--data",
                TRAIN,
                "--out",
                str(tmp_path / "y"),
                "--arch-kwargs",
                '{"wings": 2}',
            ]
        )
        == 2
    )
    assert not math.isnan(config["metrics"]["val_acc"])


@needs_cifar
def test_sigterm_saves_a_resumable_state(tmp_path):
    """What a killed background run relies on: SIGTERM -> state saved between steps,
    exit 130, and --resume continues from that step. The run is a child process, as a
    background job is (signals sent to the test process itself can reach the native
    threads that other tests' libraries leave behind)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "bg"
    args = [
        "train-classifier",
        "--arch",
        "cifar_resnet20",
        "--data",
        TRAIN,
        "--max-train-images",
        "400",
        "--batch",
        "8",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--threads",
        "1",
        "--precision",
        "fp32",
        "--no-progress",
        "--save-every-minutes",
        "0",
    ]  # 0: a state after every step, to see it started

    command = "import sys; from dsmooth.cli import main; sys.exit(main(sys.argv[1:]))"
    child = subprocess.Popen(
        [sys.executable, "-c", command, *args], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (out / "train_state.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "--resume" in err
    step = read_info(out)["progress"]["step"]
    assert 1 <= step < 50
    assert main([*args, "--resume", "--max-steps", "1"]) == 0
    assert read_info(out)["progress"]["step"] == step + 1
