"""The input contract's conversions, the entry point parser, the options, and users'
mistakes."""

from __future__ import annotations

import argparse
from dataclasses import fields

import numpy as np
import pytest
import torch
from byoc_models import build

import dsmooth
from dsmooth.cli import build_parser, main
from dsmooth.cli.commands import source_options
from dsmooth.errors import UserError
from dsmooth.runs import job
from dsmooth.sources import load_model
from dsmooth.sources.contract import (
    InputContract,
    apply_contract,
    contract_from_options,
    detect_layout,
    parse_size,
)
from dsmooth.sources.entrypoint import parse
from dsmooth.sources.options import WEIGHTS_OPTIONS, SourceOptions
from dsmooth.sources.remote import client_options
from dsmooth.sources.remote_client import ClientOptions, QueryBudget, credential_headers


def test_identity_contract_is_dsmooths_convention():
    x = torch.rand(2, 3, 5, 7)
    assert InputContract().is_identity
    assert torch.equal(InputContract().with_layout("NCHW").convert(x), x)
    model = torch.nn.Identity()
    assert apply_contract(model, SourceOptions()) is model


def test_each_conversion_step():
    x = torch.rand(2, 3, 4, 6)
    c = InputContract(range=255.0, layout="NHWC", channel_order="BGR", mean=(1, 2, 3), std=(2,))
    y = c.convert(x)
    assert y.shape == (2, 4, 6, 3)
    expected = (x.flip(1) * 255 - torch.tensor([1.0, 2, 3]).view(1, 3, 1, 1)) / 2
    torch.testing.assert_close(y, expected.permute(0, 2, 3, 1))
    resized = InputContract(size=(8, 12), layout="NCHW").convert(x)
    assert resized.shape == (2, 3, 8, 12)
    noisy = torch.tensor([-0.2, 0.5, 1.3]).view(1, 3, 1, 1)
    as_bytes = InputContract(range=255.0, dtype="uint8", layout="NCHW").convert(noisy)
    assert as_bytes.dtype == torch.uint8
    assert as_bytes.flatten().tolist() == [0, 128, 255]


def test_contract_keeps_gradients():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    c = InputContract(range=255.0, layout="NHWC", channel_order="BGR", size=(6, 6))
    c.convert(x).sum().backward()
    assert x.grad is not None
    assert float(x.grad.abs().sum()) > 0


def test_layout_detection_and_parsing():
    assert detect_layout([None, 224, 224, 3]) == "NHWC"
    assert detect_layout([-1, 3, 32, 32]) == "NCHW"
    assert detect_layout(["batch", 3, "h", "w"]) == "NCHW"
    assert detect_layout([None, None, None, None]) is None
    assert parse_size("224") == (224, 224)
    assert parse_size("32x48") == (32, 48)
    with pytest.raises(UserError, match="224x224"):
        parse_size("big")
    c = contract_from_options(SourceOptions(input_mean="0.5, 0.4,0.3", input_range=255))
    assert c.mean == (0.5, 0.4, 0.3)
    assert c.range == 255.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"input_range": 2}, "range must be 1 or 255"),
        ({"input_layout": "CHW"}, "layout must be one of"),
        ({"channel_order": "GRB"}, "RGB or BGR"),
        ({"input_std": "0.5,0"}, "zeros"),
        ({"input_mean": "a,b"}, "comma-separated numbers"),
    ],
)
def test_bad_contracts_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        contract_from_options(SourceOptions(**options))


def test_mean_with_the_wrong_channel_count_is_a_user_error():
    with pytest.raises(UserError, match="2 values but the images have 3 channels"):
        InputContract(mean=(0.1, 0.2), layout="NCHW").convert(torch.rand(1, 3, 2, 2))


def test_entry_point_specs():
    assert parse("pkg.mod:build") == ("pkg.mod", "build")
    assert parse("dir/file.py:make.model") == ("dir/file.py", "make.model")
    assert parse("http://host:80/v2/models/x") is None
    assert parse("model.pt") is None


def test_entry_point_mistakes(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nope.py") + ":build")
    bad = tmp_path / "bad.py"
    bad.write_text("def build():\n    return 3\n")
    with pytest.raises(UserError, match=r"must return a torch\.nn\.Module"):
        load_model(f"{bad}:build")
    with pytest.raises(UserError, match="has no attribute 'missing'"):
        load_model(f"{bad}:missing")
    weights = tmp_path / "w.pt"
    torch.save({"other.weight": torch.zeros(2)}, weights)
    good = tmp_path / "good.py"
    good.write_text("from byoc_models import build\n")
    with pytest.raises(UserError, match="do not fit the model"):
        load_model(f"{good}:build", weights=str(weights))
    with pytest.raises(UserError, match="no such file, name or supported format"):
        load_model("no_such_module_anywhere:build")


def test_missing_files_of_each_format_are_user_errors(tmp_path):
    for name in ("m.onnx", "m.keras"):
        with pytest.raises(UserError, match="does not exist"):
            load_model(str(tmp_path / name))
    (tmp_path / "m.weights.h5").write_bytes(b"")
    with pytest.raises(UserError, match="weights only"):
        load_model(str(tmp_path / "m.weights.h5"))


def test_client_settings_and_budget(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="request size must be at least 1"):
        ClientOptions(request_size=0)
    for name, message in (("request_size", "request size must be at least 1"),
                          ("concurrency", "concurrency must be at least 1"),
                          ("timeout", "timeout must be positive")):  # fmt: skip
        with pytest.raises(UserError, match=message):  # 0 is refused, not the default
            client_options({name: 0})
    assert client_options({}) == ClientOptions()
    budget = QueryBudget(10)
    budget.spend(6)
    with pytest.raises(UserError, match="budget of 10 images is spent"):
        budget.spend(5)
    assert budget.spent == 6
    token = tmp_path / "token"
    token.write_text("abc\n")
    assert credential_headers(token_file=str(token)) == {"Authorization": "Bearer abc"}
    assert credential_headers(token_file=str(token), header="x-api-key") == {"x-api-key": "abc"}
    monkeypatch.setenv("T", "Basic xyz")
    assert credential_headers(token_env="T") == {"Authorization": "Basic xyz"}
    with pytest.raises(UserError, match="not both"):
        credential_headers(token_env="T", token_file=str(token))


def test_cli_contract_flags_reach_the_model(tmp_path):
    """--input-range 255 through the CLI changes what a TorchScript model sees."""

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build()

        def forward(self, x):
            return self.net(x / 255)

    path = tmp_path / "scaled.pt"
    torch.jit.save(torch.jit.trace(Scaled().eval(), torch.rand(2, 3, 32, 32)), str(path))
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    np.savez(npz, images=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), labels=[0, 1])
    base = ["predict", "--data", str(npz), "--sigma", "0.25", "--n", "32", "--no-progress"]
    assert (
        main(
            [
                *base,
                "--classifier",
                str(path),
                "--input-range",
                "255",
                "--out",
                str(tmp_path / "a.tsv"),
            ]
        )
        == 0
    )
    ref = tmp_path / "ref.pt"
    torch.jit.save(torch.jit.trace(build(), torch.rand(2, 3, 32, 32)), str(ref))
    assert main([*base, "--classifier", str(ref), "--out", str(tmp_path / "b.tsv")]) == 0
    strip = [line.split("\t")[:4] for line in (tmp_path / "a.tsv").read_text().splitlines()]
    assert strip == [line.split("\t")[:4] for line in (tmp_path / "b.tsv").read_text().splitlines()]


@pytest.fixture
def torchscript_file(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.trace(build(), torch.rand(2, 3, 32, 32)), str(path))
    return path


def test_unknown_options_are_refused_with_the_likely_name():
    with pytest.raises(UserError) as e:
        SourceOptions.from_mapping({"input_rnage": 255})
    assert str(e.value) == "unknown model option 'input_rnage' (did you mean 'input_range'?)."
    with pytest.raises(UserError) as e:  # several, a flag's spelling, and one unlike any
        SourceOptions.from_mapping({"retry_backoff": 1.0, "input-size": "32", "colour": 1})
    assert str(e.value) == (
        "unknown model options 'retry_backoff' (did you mean 'backoff'?), 'input-size' "
        "(did you mean 'input_size'?), 'colour'."
    )
    with pytest.raises(UserError, match=r"^unknown model option 'zzz'; .*docs/sources\.md\.$"):
        SourceOptions.from_mapping({"zzz": 1})
    with pytest.raises(UserError, match="role must be classifier or denoiser"):
        SourceOptions.from_mapping({"role": "classifer"})
    given = SourceOptions.from_mapping({"input_range": 255, "request_size": 8})
    assert (given.input_range, given.request_size, given.device) == (255, 8, "cpu")


def test_a_misspelt_keyword_to_load_model_is_refused(torchscript_file):
    """Before SourceOptions the misspelt option was dropped and the model loaded."""
    assert isinstance(dsmooth.load_model(str(torchscript_file), input_range=255), torch.nn.Module)
    with pytest.raises(UserError, match=r"'input_rnage' \(did you mean 'input_range'\?\)"):
        dsmooth.load_model(str(torchscript_file), input_rnage=255)
    with pytest.raises(UserError, match=r"'devise' \(did you mean 'device'\?\)"):
        dsmooth.load_model(str(torchscript_file), role="classifier", devise="cpu")


def test_a_job_with_a_misspelt_model_option_is_refused_by_its_check(tmp_path):
    bad = job.CertifyJob(
        str(tmp_path / "c.pt"), str(tmp_path / "d.npz"), sigma=0.25, n=10, alpha=0.01,
        out=str(tmp_path / "x.tsv"), model_options={"input_rnage": 255},
    )  # fmt: skip
    with pytest.raises(UserError, match="did you mean 'input_range'"):
        bad.check()


@pytest.mark.parametrize("key", ["device", "role"])
def test_a_job_refuses_model_options_that_are_its_own_to_set(tmp_path, key):
    """The job passes the device and the role to load_model itself; given again as model
    options they would collide there (a TypeError), so its check refuses them."""
    value = "cpu" if key == "device" else "classifier"
    bad = job.CertifyJob(
        str(tmp_path / "c.pt"), str(tmp_path / "d.npz"), sigma=0.25, n=10, alpha=0.01,
        out=str(tmp_path / "x.tsv"), model_options={key: value},
    )  # fmt: skip
    with pytest.raises(UserError, match=f"model options \\['{key}'\\] are the job's own"):
        bad.check()


def test_the_contract_helpers_still_take_a_plain_dict():
    assert contract_from_options({"input_range": 255}).range == 255.0
    assert contract_from_options(SourceOptions(input_range=255)).range == 255.0
    with pytest.raises(UserError, match="did you mean 'input_range'"):
        contract_from_options({"input_rnage": 255})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--input-mean", "a,b"], "input mean must be comma-separated numbers"),
        (["--input-std", "0"], "input std must not contain zeros"),
        (["--mean", "0.5"], "--mean describes a PyTorch state dict"),
    ],
)
def test_bad_options_from_the_cli_exit_2_with_one_sentence(
    torchscript_file, tmp_path, capsys, flags, message
):
    npz = tmp_path / "d.npz"
    np.savez(npz, images=np.zeros((1, 32, 32, 3), np.uint8), labels=[0])
    out = tmp_path / "o.tsv"
    argv = ["predict", "--classifier", str(torchscript_file), "--data", str(npz)]
    argv += ["--sigma", "0.25", "--n", "8", "--no-progress", "--out", str(out), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_cli_and_certify_jobs_take_the_option_names_of_source_options():
    """One list: the fields, less what a caller sets (role, device, contract), are
    CertifyJob's model options and exactly the flags the CLI collects for load_model."""
    names = [f.name for f in fields(SourceOptions) if f.name not in ("role", "device", "contract")]
    assert list(job.MODEL_OPTIONS) == names
    assert [*WEIGHTS_OPTIONS, *source_options._OPTIONS] == names
    parser = argparse.ArgumentParser()
    source_options.add(parser)
    dests = {a.dest for a in parser._actions} - {"help"}
    assert dests == set(source_options._OPTIONS)  # no flag without a field, nor the reverse
    certify = build_parser().parse_args(["certify", "--classifier", "c", "--data", "d",
                                         "--sigma", "1", "--out", "o"])  # fmt: skip
    assert set(names) <= set(vars(certify))  # --arch/--mean/--std and the source flags
