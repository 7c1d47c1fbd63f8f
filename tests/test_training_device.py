"""Training's device (TrainingRun.device): checked up front like certify's --device, the
CPU path unchanged bit for bit, and resumable state that moves between devices and reads
states written before the field existed.

CI has no GPU, so nothing here runs CUDA: "another device" is simulated with PyTorch's
`meta` device (optimizer state mapped onto it) and with a state file that carries the
CUDA RNG state a CUDA run writes. The CUDA path itself is untested until a GPU runs it.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file
from training_helpers import TEST, classifier_recipe, denoiser_recipe, needs_cifar

from dsmooth.errors import UserError
from dsmooth.models import create
from dsmooth.models.checkpoint import load_checkpoint
from dsmooth.pipeline.engine import resolve_device
from dsmooth.training import loop
from dsmooth.training import state as st
from dsmooth.training.classifier import ClassifierRecipe, train_classifier
from dsmooth.training.denoiser import DenoiserRecipe, train_denoiser
from dsmooth.training.loop import check_same_recipe
from dsmooth.training.recipe import TrainingRun, recipe_json
from dsmooth.training.state import read_info

#: The recipes' defaults before the TrainingRun base (commit 15eb0d1^), which that
#: refactor kept; `device` is the one field added since, defaulting to the CPU that
#: training was hard-wired to.
COMMON_BEFORE = {
    "val_data": None,
    "epochs": 90,
    "batch": 128,
    "schedule": "cosine",
    "warmup_epochs": 0.0,
    "milestones": [0.5, 0.75],
    "gamma": 0.1,
    "momentum": 0.9,
    "crop_pad": 4,
    "flip": True,
    "precision": "auto",
    "channels_last": True,
    "seed": 0,
    "max_train_images": None,
    "max_val_images": None,
    "threads": None,
    "save_every_minutes": 10.0,
    "max_steps": None,
    "max_minutes": None,
    "progress": True,
    "init": None,
    "arch_kwargs": {},
}
CLASSIFIER_BEFORE = {
    **COMMON_BEFORE,
    "lr": 0.1,
    "weight_decay": 5e-4,
    "val_batch": 500,
    "nesterov": False,
    "label_smoothing": 0.0,
    "noise_sigma": 0.0,
    "num_classes": None,
}
DENOISER_BEFORE = {
    **COMMON_BEFORE,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "val_batch": 250,
    "objective": "mse",
    "arch": None,
    "classifier": None,
    "classifier_options": None,
    "surrogates": [],
    "surrogate_mode": "round-robin",
    "val_target": False,
    "soft_targets": False,
    "mse_weight": 0.0,
    "optimizer": "adam",
}
ADDED = {"device": "cpu"}


def test_defaults_are_those_before_the_base_plus_device():
    assert TrainingRun().device == "cpu"
    c = ClassifierRecipe(arch="test_tiny_cnn", data=["d.npz"], out="o")
    d = DenoiserRecipe(data=["d.npz"], out="o", sigma=0.25)
    c_given, d_given = {"arch", "data", "out"}, {"data", "out", "sigma"}
    assert {k: v for k, v in vars(c).items() if k not in c_given} == {
        **CLASSIFIER_BEFORE,
        **ADDED,
    }
    assert {k: v for k, v in vars(d).items() if k not in d_given} == {**DENOISER_BEFORE, **ADDED}
    # a saved recipe holds exactly these keys: those it held before, and device
    assert set(recipe_json(c)) == set(CLASSIFIER_BEFORE) | c_given | set(ADDED)
    assert set(recipe_json(d)) == set(DENOISER_BEFORE) | d_given | set(ADDED)
    assert recipe_json(c)["device"] == recipe_json(d)["device"] == "cpu"


@pytest.mark.parametrize(
    "device",
    [
        "gpu",
        "cuda:x",
        "mps",  # a torch device type, but not one dsmooth runs on
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA"),
        ),
    ],
)
def test_a_device_that_is_not_here_is_one_sentence_before_anything_runs(tmp_path, device):
    missing = str(tmp_path / "missing.npz")  # the device is checked before data is read
    recipes = [
        (train_classifier, ClassifierRecipe(arch="test_tiny_cnn", data=[missing], out="x")),
        (train_denoiser, DenoiserRecipe(data=[missing], out="y", sigma=0.25)),
    ]
    for train, r in recipes:
        r.out = str(tmp_path / r.out)
        r.device = device
        with pytest.raises(UserError, match=r"device|cuda") as e:
            train(r)
        message = str(e.value)
        assert message.endswith(".")
        assert ". " not in message  # one sentence
        assert repr(device) in message or device in message
    assert not list(tmp_path.iterdir())


def test_a_cuda_ordinal_beyond_the_machine_is_refused(monkeypatch):
    """Mocked, unavoidably: CI has no GPU, so a one-GPU machine is pretended."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UserError, match="1 CUDA GPU"):
        resolve_device("cuda:1")


def test_cpu_noise_is_the_draw_it_always_was():
    """On the CPU the training noise comes from the batch's generator itself, so runs from
    before the device field reproduce; the generator's stream goes on where it did."""
    a, b = loop.generator(3, 1, 2), loop.generator(3, 1, 2)
    got = loop.randn((4, 3, 5, 5), a, torch.device("cpu"))
    assert torch.equal(got, torch.randn((4, 3, 5, 5), generator=b))
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


def _classifier_recipe(tmp_path, name, **kw) -> ClassifierRecipe:
    return classifier_recipe(tmp_path, name, **{"max_val_images": 40, "max_train_images": 64, **kw})


def _denoiser_recipe(tmp_path, name, **kw) -> DenoiserRecipe:
    objective = kw.pop("objective", "mse")
    fields = {"epochs": 1, "max_train_images": 64, **kw}
    return denoiser_recipe(tmp_path, objective, name, **fields)


def _same_files(a, b, name=st.STATE_FILE) -> None:
    x, y = load_file(str(a / name)), load_file(str(b / name))
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k


@needs_cifar
def test_a_cpu_run_is_the_same_with_or_without_the_device_field(tmp_path):
    unset = _classifier_recipe(tmp_path, "unset")
    assert train_classifier(unset) == "done"
    for name, device in (("cpu", "cpu"), ("cpu0", "cpu:0")):
        r = _classifier_recipe(tmp_path, name, device=device)
        assert train_classifier(r) == "done"
        _same_files(tmp_path / "unset", tmp_path / name)
        _same_files(tmp_path / "unset", tmp_path / name, "model.safetensors")
    rows = [read_info(tmp_path / n)["progress"]["history"] for n in ("unset", "cpu")]
    assert [r["val_noisy_acc"] for r in rows[0]] == [r["val_noisy_acc"] for r in rows[1]]
    assert "rng/cuda" not in load_file(str(tmp_path / "cpu" / st.STATE_FILE))


def _drop_device_from_state(out) -> None:
    """Rewrite OUT's state as a dsmooth from before the device field wrote it."""
    path = out / st.STATE_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[st._META])
    del meta["recipe"]["device"]
    save_file(load_file(str(path)), str(path), metadata={st._META: json.dumps(meta)})
    assert "device" not in read_info(out)["recipe"]


@needs_cifar
def test_states_and_checkpoints_from_before_the_field_resume_and_init(tmp_path):
    full = _classifier_recipe(tmp_path, "full")
    assert train_classifier(full) == "done"
    part = _classifier_recipe(tmp_path, "part", max_steps=1)
    assert train_classifier(part) == "stopped"
    _drop_device_from_state(tmp_path / "part")
    part.max_steps = None
    assert train_classifier(part, resume=True) == "done"
    _same_files(tmp_path / "full", tmp_path / "part")
    # --init from a checkpoint whose recipe has no device
    config_path = tmp_path / "full" / "config.json"
    config = json.loads(config_path.read_text())
    del config["recipe"]["device"]
    config_path.write_text(json.dumps(config))
    warm = _classifier_recipe(tmp_path, "warm", epochs=1, init=str(tmp_path / "full"))
    assert train_classifier(warm) == "done"
    assert load_checkpoint(warm.out)[1]["recipe"]["device"] == "cpu"


def test_the_device_may_change_on_resume_but_the_recipe_may_not():
    saved = {"lr": 0.1, "device": "cuda:1"}
    check_same_recipe(saved, {"lr": 0.1, "device": "cpu"})
    check_same_recipe({"lr": 0.1}, {"lr": 0.1, "device": "cpu"})  # saved before the field
    with pytest.raises(UserError, match="lr"):
        check_same_recipe(saved, {"lr": 0.2, "device": "cuda:1"})


def _sgd_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.rand(4, 6)).square().sum().backward()
        opt.step()
    st.save_state(tmp_path, model, opt, {"progress": {"step": 2}, "recipe": {}})
    return model, opt


def test_a_state_maps_onto_the_device_of_the_run(tmp_path):
    """Saved on the CPU, loaded for a run on another device (`meta` stands in for a GPU):
    the optimizer moments land on that device, Adam's step count stays on the CPU."""
    _sgd_state(tmp_path)
    with torch.device("meta"):
        model = torch.nn.Linear(6, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # copying into meta is a no-op
        info = st.load_state(tmp_path, model, opt, device=torch.device("meta"))
    assert info["progress"] == {"step": 2}
    moments = [s for p in model.parameters() for s in opt.state[p].items()]
    assert moments
    for name, value in moments:
        assert value.device.type == ("cpu" if name == "step" else "meta"), name


def test_a_state_saved_on_cuda_resumes_on_the_cpu(tmp_path):
    """A CUDA run's state carries that device's RNG state; a CPU run ignores it and loads
    the rest exactly (tensors are stored on the CPU whatever the device)."""
    model, opt = _sgd_state(tmp_path)
    path = tmp_path / st.STATE_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["rng/cuda"] = torch.arange(16, dtype=torch.uint8)  # as torch.cuda.get_rng_state
    save_file(tensors, str(path), metadata=meta)
    again = torch.nn.Linear(6, 3)
    opt2 = torch.optim.Adam(again.parameters(), lr=0.01)
    st.load_state(tmp_path, again, opt2, device=torch.device("cpu"))
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
        for k, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[q][k]), k


class _BlackBox:
    """A query-access classifier: takes CPU tensors, answers numpy scores, has no
    parameters (as an ONNX model or a server)."""

    device = torch.device("cpu")

    def __init__(self, module):
        self.module = module.eval()
        self.calls = 0

    def __call__(self, x):
        assert x.device == self.device
        self.calls += 1
        with torch.no_grad():
            return self.module(x).numpy()


@needs_cifar
def test_a_black_box_classifier_validates_on_its_own_device(tmp_path):
    torch.manual_seed(0)
    f = create("test_tiny_cnn")
    box = _BlackBox(f)
    runs = {"white": f, "black": box}
    acc = {}
    for name, classifier in runs.items():
        # NCHW throughout: both runs hand f the same layout, so the same numbers
        r = _denoiser_recipe(tmp_path, name, val_data=TEST, max_val_images=40, channels_last=False)
        assert train_denoiser(r, classifier=classifier) == "done"
        acc[name] = read_info(r.out)["progress"]["history"][-1]["val_noisy_acc"]
    assert box.calls == 1  # one validation batch; an MSE step never calls f
    assert acc["black"] == acc["white"]
    assert not np.isnan(acc["black"])
    stab = _denoiser_recipe(tmp_path, "stab", objective="stab")
    with pytest.raises(UserError, match="white-box"):
        train_denoiser(stab, classifier=box)


@needs_cifar
def test_a_torch_device_from_python_is_saved_as_its_name(tmp_path):
    """A torch.device in the recipe trains as its name does; before, the first state save
    failed (a device is not JSON) and lost the work."""
    r = _denoiser_recipe(tmp_path, "dev", device=torch.device("cpu"))
    assert train_denoiser(r) == "done"
    assert read_info(r.out)["recipe"]["device"] == "cpu"
    _same_files(tmp_path / "dev", _trained(tmp_path, "str"), "model.safetensors")


def _trained(tmp_path, name):
    assert train_denoiser(_denoiser_recipe(tmp_path, name)) == "done"
    return tmp_path / name


def test_a_black_box_answering_a_list_of_labels_is_read_as_one_answer():
    from dsmooth.training.evaluate import _labels

    assert _labels([3, 0, 1, 2]).tolist() == [3, 0, 1, 2]
    assert _labels((np.array([[0.1, 0.9], [0.8, 0.2]]), "extra")).tolist() == [1, 0]
