"""Denoiser training on real CIFAR-10 images: every objective lowers its loss, Stab's
gradients reach only the denoiser, surrogates never call the target, --init fine-tunes,
resume is exact, and test-denoiser reports what it measures."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import (
    SMALL_DNCNN,
    TEST,
    TRAIN,
    Counting,
    Raising,
    denoiser_recipe,
    needs_cifar,
)

from dsmooth.cli import main
from dsmooth.data.transforms import to_float_nchw
from dsmooth.errors import UserError
from dsmooth.models import create
from dsmooth.models.checkpoint import load_checkpoint, save_checkpoint
from dsmooth.training.classifier import ClassifierRecipe, train_classifier
from dsmooth.training.data import load_training_set
from dsmooth.training.denoiser import train_denoiser
from dsmooth.training.objectives import DenoiserObjective

pytestmark = needs_cifar


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A small CNN trained on 512 CIFAR-10 images (well above chance): the frozen f."""
    out = tmp_path_factory.mktemp("clf") / "tiny"
    r = ClassifierRecipe(
        arch="test_tiny_cnn",
        data=[TRAIN],
        out=str(out),
        epochs=8,
        batch=32,
        lr=0.1,
        schedule="onecycle",
        max_train_images=512,
        precision="fp32",
        progress=False,
        threads=1,
    )
    assert train_classifier(r) == "done"
    return out


def _classifier(path):
    return load_checkpoint(path)[0]


def train_denoiser_argv(objective: str, sigma: str, *model: str) -> list[str]:
    """`dsmooth train-denoiser` on 64 images for one quick epoch of a small DnCNN."""
    return [
        "train-denoiser",
        "--objective",
        objective,
        "--sigma",
        sigma,
        *model,
        "--data",
        TRAIN,
        "--max-train-images",
        "64",
        "--batch",
        "32",
        "--epochs",
        "1",
        "--arch-kwargs",
        json.dumps(SMALL_DNCNN),
        "--no-progress",
        "--threads",
        "1",
        "--precision",
        "fp32",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("objective", "extra", "drop"),
    [
        ("mse", {}, 0.01),  # sigma^2 = 0.0625 for the identity at start
        ("stab", {}, 0.1),
        ("clf", {}, 0.1),
        ("stab", {"soft_targets": True, "mse_weight": 1.0}, 0.1),
    ],
)
def test_each_objective_lowers_its_loss(tmp_path, classifier_dir, objective, extra, drop):
    """A fixed noisy batch is scored by the objective before and after 160 steps."""
    images, labels = load_training_set([TRAIN], 128)
    x = to_float_nchw(images)
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 0.25
    f = _classifier(classifier_dir)
    objective_fn = DenoiserObjective(
        objective,
        [f],
        soft_targets=extra.get("soft_targets", False),
        mse_weight=extra.get("mse_weight", 0.0),
    )

    def score(denoiser):
        denoiser.eval()
        with torch.no_grad():
            return float(objective_fn(denoiser(noisy), x, labels, 0)[0])

    torch.manual_seed(0)
    before = score(create("dncnn", **SMALL_DNCNN))  # the run's own initialisation
    r = denoiser_recipe(tmp_path, objective, epochs=10, batch=8, max_train_images=128, **extra)
    assert train_denoiser(r, classifier=f) == "done"
    after = score(load_checkpoint(r.out)[0])
    assert after < before - drop, (before, after)


def test_targets_hard_and_soft():
    f = torch.nn.Linear(12, 4)
    x = torch.rand(5, 3, 2, 2)
    denoised = x + 0.1
    y = torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        p = f(x.flatten(1)).softmax(1)
        logits = f(denoised.flatten(1))
    hard, _ = DenoiserObjective("stab", [_Wrap(f)])(denoised, x, y, 0)
    soft, _ = DenoiserObjective("stab", [_Wrap(f)], soft_targets=True)(denoised, x, y, 0)
    clf, _ = DenoiserObjective("clf", [_Wrap(f)], mse_weight=2.0)(denoised, x, y, 0)
    logp = logits.log_softmax(1)
    assert float(hard) == pytest.approx(float(-logp[range(5), p.argmax(1)].mean()), rel=1e-6)
    assert float(soft) == pytest.approx(float(-(p * logp).sum(1).mean()), rel=1e-6)
    assert float(clf) == pytest.approx(float(-logp[:, 0].mean()) + 2.0 * 0.01, rel=1e-6)
    mse, stats = DenoiserObjective("mse")(denoised, x, y, 0)
    assert float(mse) == pytest.approx(0.01)
    assert stats["n"] == 5
    with pytest.raises(UserError, match="classifier"):
        DenoiserObjective("stab")
    with pytest.raises(UserError, match="white-box"):
        DenoiserObjective("clf", [lambda t: t])


class _Wrap(torch.nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_stab_gradients_reach_only_the_denoiser(tmp_path, classifier_dir):
    f = _classifier(classifier_dir)
    f.train()  # the objective must put it in eval mode itself
    frozen = {k: v.clone() for k, v in f.state_dict().items()}
    objective = DenoiserObjective("stab", [f])
    assert not f.training
    assert not any(p.requires_grad for p in f.parameters())
    torch.manual_seed(0)
    denoiser = create("dncnn", **SMALL_DNCNN)
    with torch.no_grad():  # make the last layer non-zero so every layer gets a gradient
        denoiser.dncnn[-1].weight.normal_(0, 0.01)
    images, labels = load_training_set([TRAIN], 16)
    x = to_float_nchw(images)
    loss, _ = objective(denoiser(x + 0.25 * torch.randn_like(x)), x, labels, 0)
    loss.backward()
    assert all(p.grad is None for p in f.parameters())
    grads = [p.grad for p in denoiser.parameters()]
    assert all(g is not None for g in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    # whole training runs: f's weights and BatchNorm statistics never change
    r = denoiser_recipe(tmp_path, "stab", epochs=1, val_data=TEST, max_val_images=40)
    assert train_denoiser(r, classifier=f) == "done"
    for k, v in f.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert not f.training


@pytest.mark.parametrize("mode", ["round-robin", "average"])
def test_surrogates_never_call_the_target(tmp_path, classifier_dir, mode):
    s0, s1 = Counting(_classifier(classifier_dir)), Counting(_classifier(classifier_dir))
    r = denoiser_recipe(
        tmp_path,
        "stab",
        epochs=1,
        max_train_images=192,  # 6 steps
        surrogates=["s0", "s1"],
        surrogate_mode=mode,
        val_data=TEST,
        max_val_images=40,  # one validation batch per surrogate
    )
    assert train_denoiser(r, classifier=Raising(), surrogates=[s0, s1]) == "done"
    # stab calls a classifier twice per step it is used (targets f(x), logits f(D(x+d)))
    steps_each = 6 if mode == "average" else 3
    assert s0.calls == s1.calls == 2 * steps_each + 1
    rows = json.loads((tmp_path / "d" / "metrics.json").read_text())["epochs"]
    assert {"val_surrogate0_noisy_acc", "val_surrogate1_noisy_acc"} <= set(rows[0])
    assert "val_noisy_acc" not in rows[0]


def test_cli_surrogates_do_not_even_load_the_target(tmp_path, classifier_dir):
    out = tmp_path / "q"
    args = train_denoiser_argv(
        "clf",
        "0.5",
        "--classifier",
        str(tmp_path / "no-such-target"),
        "--surrogates",
        f"{classifier_dir},{classifier_dir}",
        "--out",
        str(out),
    )
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["classifier"] is None
    assert len(config["surrogates"]) == 2
    assert config["kind"] == "denoiser"
    assert config["sigma"] == 0.5
    args[args.index("--out") + 1] = str(tmp_path / "q2")
    assert main([*args, "--val-target"]) == 2  # only now is the (missing) target loaded
    assert not (tmp_path / "q2" / "train_state.safetensors").exists()


def test_init_fine_tunes_an_existing_denoiser(tmp_path, classifier_dir):
    f = _classifier(classifier_dir)
    mse = denoiser_recipe(tmp_path, "mse", name="mse", epochs=1)
    train_denoiser(mse)
    start = load_file(str(tmp_path / "mse" / "model.safetensors"))
    tuned = denoiser_recipe(
        tmp_path,
        "stab",
        name="stab",
        epochs=1,
        lr=1e-12,
        init=mse.out,
        arch_kwargs={},
        weight_decay=0.0,
    )
    assert train_denoiser(tuned, classifier=f) == "done"
    end = load_file(str(tmp_path / "stab" / "model.safetensors"))
    convs = [k for k in start if k.endswith("weight") and start[k].ndim == 4]
    assert convs
    assert all(torch.allclose(start[k], end[k], atol=1e-9) for k in convs)
    assert json.loads((tmp_path / "stab" / "config.json").read_text())["init"] == mse.out
    wrong = denoiser_recipe(
        tmp_path, "stab", name="w", arch="dncnn_wide", init=mse.out, arch_kwargs={}
    )
    with pytest.raises(UserError, match="dncnn"):
        train_denoiser(wrong, classifier=f)


def test_denoiser_resume_is_exact(tmp_path, classifier_dir):
    f = _classifier(classifier_dir)
    full = denoiser_recipe(
        tmp_path, "stab", name="full", epochs=2, max_train_images=96, mse_weight=0.5
    )
    train_denoiser(full, classifier=f)
    part = denoiser_recipe(
        tmp_path, "stab", name="part", epochs=2, max_train_images=96, mse_weight=0.5, max_steps=2
    )
    assert train_denoiser(part, classifier=f) == "stopped"
    part.max_steps = None
    assert train_denoiser(part, resume=True, classifier=f) == "done"
    a = load_file(str(tmp_path / "full" / "train_state.safetensors"))
    b = load_file(str(tmp_path / "part" / "train_state.safetensors"))
    assert any("exp_avg" in k for k in a)  # Adam moments are part of the state
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_test_denoiser_identity_equals_no_denoiser(tmp_path, classifier_dir, capsys):
    """A fresh DnCNN is exactly the identity, so it must score like no denoiser."""
    save_checkpoint(
        create("dncnn", **SMALL_DNCNN),
        tmp_path / "id",
        {"architecture": "dncnn", "kwargs": SMALL_DNCNN},
    )
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "test-denoiser",
                "--denoiser",
                str(tmp_path / "id"),
                "--classifier",
                str(classifier_dir),
                "--sigma",
                "0.25",
                "--data",
                TEST,
                "--json",
                str(out),
                "--no-progress",
                "--batch",
                "30",
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["n"] == 100
    assert r["psnr"] == pytest.approx(r["psnr_noisy_input"], abs=1e-9)
    assert r["noisy_acc"] == r["no_denoiser_noisy_acc"]
    assert r["clean_acc"] > 0.2
    assert 11 < r["psnr"] < 14  # sigma 0.25 noise clipped to [0, 1]: ~12-13 dB
    assert "psnr" in capsys.readouterr().out


class _Expects255(torch.nn.Module):
    """A foreign classifier that takes [0, 255] pixels and refuses [0, 1] ones."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.amax() < 5.0):  # [0, 1] images plus noise never reach 5
            raise ValueError("this classifier takes pixels in [0, 255]")
        return self.inner(x / 255.0)


@pytest.fixture
def f255(tmp_path, classifier_dir):
    """The small classifier behind a [0, 255] input contract, saved as TorchScript."""
    path = tmp_path / "f255.pt"
    torch.jit.save(torch.jit.script(_Expects255(_classifier(classifier_dir)).eval()), str(path))
    return path


def test_cli_states_the_classifier_input_contract(tmp_path, f255):
    """--input-range 255 reaches the classifier that Stab trains through, and is recorded."""
    args = train_denoiser_argv("stab", "0.25", "--classifier", str(f255))
    out = tmp_path / "d255"
    assert main([*args, "--out", str(out), "--input-range", "255"]) == 0
    recipe = json.loads((out / "config.json").read_text())["recipe"]
    assert recipe["classifier_options"] == {"input_range": 255.0}
    with pytest.raises(Exception, match=r"\[0, 255\]"):  # without it: [0, 1] pixels
        main([*args, "--out", str(tmp_path / "d1")])


def test_evaluate_and_test_denoiser_honour_the_input_contract(tmp_path, f255, capsys):
    identity = tmp_path / "identity"
    config = {"architecture": "dncnn", "kwargs": SMALL_DNCNN}
    save_checkpoint(create("dncnn", **SMALL_DNCNN), identity, config)
    data = ["--data", TEST, "--no-progress"]
    model = ["--classifier", str(f255), "--input-range", "255"]
    assert main(["evaluate", *model, *data, "--max", "20", "--sigma", "0.25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20
    argv = ["test-denoiser", "--denoiser", str(identity), *model, *data, "--sigma", "0.25"]
    assert main([*argv, "--max-images", "20"]) == 0
    assert "noisy_acc" in capsys.readouterr().out
