"""The CIFAR-10 campaign's driver (results/campaign.py) against its committed state: every
unfinished training run it holds must resume with the command the driver would run, and
the status report must be computable on a fresh clone."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import TEST, TRAIN, needs_cifar

from dsmooth.cli import build_parser, main
from dsmooth.cli.commands.train_classifier import recipe_from_args
from dsmooth.models.checkpoint import load_checkpoint
from dsmooth.training import classifier, denoiser
from dsmooth.training.loop import check_same_recipe
from dsmooth.training.recipe import recipe_json
from dsmooth.training.state import has_state, read_info

REPO = Path(__file__).resolve().parents[1]
TRAINERS = {  # command -> (its recipe, the check its trainer runs first)
    "train-classifier": (classifier.ClassifierRecipe, classifier.check),
    "train-denoiser": (denoiser.DenoiserRecipe, denoiser.check),
}


@pytest.fixture(scope="module")
def campaign():
    spec = importlib.util.spec_from_file_location("campaign", REPO / "results" / "campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["campaign"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_status_reports_every_step(campaign, tmp_path, monkeypatch):
    monkeypatch.setattr(campaign, "STATE", tmp_path)  # write STATUS.md elsewhere
    text = campaign.write_status({"train_classifier": 300.0})
    names = [s.describe().split(":")[0] for s in campaign.steps()]
    assert all(name in text for name in names)
    assert "remaining on this host" in text
    assert (tmp_path / "STATUS.md").is_file()


def test_committed_runs_resume_with_the_drivers_command(campaign):
    """A recipe change in campaign.py would make `make reproduce` refuse to resume."""
    runs = []  # (run folder, the driver's command for it)
    for step in campaign.steps():
        if isinstance(step, campaign.Train):
            runs.append((step.out, step.command()[1:]))
        elif isinstance(step, campaign.Probes):
            runs += [(campaign.RUNS / f"probe-{n}", a) for n, a in step.candidates.items()]
    checked = 0
    for out, argv in runs:
        if not has_state(out):
            continue
        args = build_parser().parse_args([*argv, "--out", str(out)])
        cls, check = TRAINERS[args.command]
        recipe = recipe_from_args(cls, args)
        check(recipe)  # as the trainer does before it resumes: it fills in e.g. arch from --init
        current = recipe_json(recipe)
        check_same_recipe(read_info(out)["recipe"], current)
        checked += 1
    if not checked:
        pytest.skip("no unfinished training run is committed")


def test_a_host_runs_first_what_it_is_comparatively_fast_at(campaign, monkeypatch):
    """AVX2 hosts certify while bf16 hosts train; ties and small margins keep plan order."""
    rates = {
        "avx2": {"train_stab": 14.0, "certify_denoised": 62.0},
        "bf16": {"train_stab": 131.0, "certify_denoised": 423.0},
    }
    monkeypatch.setattr(campaign, "load_rates", lambda: rates)
    monkeypatch.setattr(campaign, "_missing", lambda _step: [])
    train = campaign.Train("t", "t-shipped", "train_stab", 1)
    certify = campaign.Certify("c", "certify_denoised", 1, [], 1.0)
    assert campaign.choose([train, certify], rates["avx2"]) is certify
    assert campaign.choose([train, certify], rates["bf16"]) is train
    close = {"train_stab": 14.0, "certify_denoised": 14.0 / 131 * 423 * 1.1}
    assert campaign.choose([train, certify], close) is train  # under PREFER: plan order
    monkeypatch.setattr(campaign, "_missing", lambda step: ["t"] if step is certify else [])
    assert campaign.choose([train, certify], rates["avx2"]) is train  # only ready steps
    assert campaign.choose([certify], rates["avx2"]) is None

    check = campaign.Certify("c_cp100", "certify_denoised", 1, [], 1.0, check=True)
    monkeypatch.setattr(campaign, "_missing", lambda _step: [])
    assert campaign.choose([train, check], rates["avx2"]) is train  # checks wait
    assert campaign.choose([check], rates["avx2"]) is check  # until nothing else is ready
    assert [s.name for s in campaign.steps() if getattr(s, "check", False)] == [
        "no_denoiser_cp100",
        "dncnn_mse_cp100",
        "dncnn_stab_cp100",
    ]


def test_every_command_parses(campaign):
    parser = build_parser()
    for step in campaign.steps():
        argv = step.command()[1:]
        if isinstance(step, campaign.Probes):
            for candidate in step.candidates.values():
                parser.parse_args([*candidate, "--out", "x"])
            continue
        assert parser.parse_args(argv), shlex.join(argv)


@needs_cifar
def test_a_finished_run_ships_as_float16_and_its_state_goes(campaign, tmp_path, monkeypatch):
    """The ship step on a tiny finished run kept as a clone keeps it: only the state."""
    monkeypatch.setattr(campaign, "PRETRAINED", tmp_path / "pretrained")
    monkeypatch.setattr(campaign, "RUNS", tmp_path / "runs")
    (tmp_path / "pretrained").mkdir()
    argv = ["train-classifier", "--arch", "test_tiny_cnn", "--data", TRAIN, "--val-data", TEST]
    argv += ["--max-train-images", "64", "--epochs", "1", "--batch", "32", "--precision", "fp32"]
    run = campaign.Train("tiny", "tiny-shipped", "train_classifier", 1, argv)
    monkeypatch.setattr(campaign, "DS", "dsmooth")
    assert main([*run.command()[1:], "--no-progress"]) == 0
    assert run.done()
    (run.out / "model.safetensors").unlink()  # as committed: the state alone
    clf_eval = ["evaluate", "--classifier", "SPEC", "--data", TEST, "--no-progress", "--json"]

    def fake_run(cmd, **_options):  # Ship calls subprocess.run(cmd, check=..., ...)
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main([*cmd[1:], "--no-progress"] if cmd[1] != "evaluate" else cmd[1:])
        assert rc == 0, cmd
        return type("Done", (), {"stdout": out.getvalue(), "returncode": rc})()

    monkeypatch.setattr(campaign.subprocess, "run", fake_run)
    monkeypatch.setattr(campaign, "call", lambda cmd, *_, **__: fake_run(cmd).returncode)
    campaign.Ship(run, clf_eval).ship(commit=False)
    dest = tmp_path / "pretrained" / "tiny-shipped"
    _model, config = load_checkpoint(dest)
    assert config["kind"] == "classifier"
    assert not run.out.exists()
    weights = load_file(str(dest / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    assert json.loads((dest / "evaluation.json").read_text())["clean_accuracy"] >= 0
    assert "train-classifier --arch test_tiny_cnn" in (dest / "MODEL_CARD.md").read_text()
    assert (dest / "metrics.csv").is_file()
    assert run.done()
