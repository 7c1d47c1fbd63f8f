"""Every shipped model loads by name, has a model card, and runs on [0, 1] images."""

import json

import pytest
import torch

import dsmooth
from dsmooth.models.pretrained import model_card

SHIPPED = dsmooth.list_pretrained()


def test_the_demo_models_are_shipped():
    from dsmooth.cli.commands.demo import CLASSIFIER, DENOISERS

    assert {CLASSIFIER, *DENOISERS.values()} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_by_name_with_a_card(name):
    model = dsmooth.pretrained(name)
    config = model.dsmooth_config
    card = model_card(name)
    assert card.startswith(f"# {name}")
    assert "licence" in card.lower()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    if config["kind"] == "classifier":
        assert y.shape == (2, config["num_classes"])
    else:
        assert y.shape == x.shape
    assert dsmooth.load_model(name) is not None  # the CLI spec resolves too


def test_demo_runs_end_to_end_on_the_shipped_models(tmp_path, capsys):
    from dsmooth.cli import main

    out = tmp_path / "demo"
    argv = ["demo", "--images", "2", "--n0", "10", "--n", "30", "--out-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for row in ("no denoiser", "MSE DnCNN", "Stab DnCNN"):
        assert f"| {row} |" in printed
    assert "| smoothed acc. % | cert. % r=0.25 \u2020 |" in printed  # n = 30 caps at 0.205
    assert "\u2020 above 0.205, the largest radius n = 30 can certify" in printed
    assert "clean %" not in printed
    for log in ("certify_no_denoiser.tsv", "certify_mse_dncnn.tsv", "certify_stab_dncnn.tsv"):
        lines = (out / log).read_text().splitlines()
        assert lines[0].startswith("idx\tlabel\tpredict\tradius\tcorrect\ttime")
        assert [line.split("\t")[0] for line in lines[1:]] == ["0", "1"]
        record = json.loads((out / f"{log}.json").read_text())  # so `report` shows them
        settings = {k: record[k] for k in ("sigma", "n0", "n", "alpha")}
        assert settings == {"sigma": 0.25, "n0": 10, "n": 30, "alpha": 0.001}
        assert record["class_names"] == "cifar10"
        assert record["noise"] == "lattice"
    assert (out / "curves.png").stat().st_size > 0
    # a second run starts afresh, with other settings, instead of refusing to resume
    again = ["demo", "--images", "1", "--n0", "10", "--n", "20", "--denoisers", "stab"]
    assert main([*again, "--out-dir", str(out)]) == 0
    assert json.loads((out / "certify_stab_dncnn.tsv.json").read_text())["n"] == 20


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_round_trips_through_the_typed_config(name):
    """Every shipped config reads into a ModelConfig and writes back as the same JSON."""
    from dsmooth.models.checkpoint import read_config
    from dsmooth.models.config import ModelConfig
    from dsmooth.models.pretrained import pretrained_path

    as_written = json.loads((pretrained_path(name) / "config.json").read_text())
    config = read_config(pretrained_path(name))
    assert isinstance(config, ModelConfig)
    assert config.to_dict() == as_written
    assert json.dumps(config.to_dict(), indent=2, sort_keys=True) == json.dumps(
        as_written, indent=2, sort_keys=True
    )
    assert ModelConfig.from_dict(config.to_dict()).to_dict() == as_written
    assert config.kind in ("classifier", "denoiser")
    assert config.architecture == as_written["architecture"]
    if config.kind == "denoiser":
        assert isinstance(config.sigma, float)
    assert dsmooth.pretrained(name).dsmooth_config == as_written
