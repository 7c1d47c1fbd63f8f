"""Every subcommand, a table of mistakes: exit code 2, one sentence, no traceback, and no
output file left behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LinearClassifier
from helpers import with_flag
from safetensors.torch import save_file

from dsmooth.cli import build_parser, main
from dsmooth.models import list_models

CKPT = "pretrained:cifar10-resnet20-akamaster"  # a shipped dsmooth checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    np.savez(
        root / "d.npz",
        images=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
        labels=rng.integers(0, 3, 4),
    )
    np.savez(root / "gray.npz", images=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8),
             labels=np.zeros(4, int))  # fmt: skip
    torch.jit.save(torch.jit.script(LinearClassifier(3 * 8 * 8, 3).eval()), str(root / "c.pt"))
    (root / "pickle.pt").write_bytes(b"\x80\x04K\x01.")  # a pickle, not a model
    torch.save(LinearClassifier(3 * 8 * 8, 3), root / "whole.pt")  # needs weights_only=False
    save_file({"w": torch.zeros(1)}, str(root / "w.safetensors"))
    (root / "log.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n1\t8\t6\n")
    return root


def certify(*extra):
    base = ["certify", "--data", "{d}/d.npz", "--classifier", "{d}/c.pt", "--sigma", "0.25"]
    return [*base, "--n0", "10", "--n", "20", "--out", "{out}", *extra]


def predict(*extra):
    base = ["predict", "--data", "{d}/d.npz", "--classifier", "{d}/c.pt", "--sigma", "0.25"]
    return [*base, "--n", "20", "--out", "{out}", *extra]


def evaluate(*extra):
    return ["evaluate", "--data", "{d}/d.npz", "--classifier", "{d}/c.pt", *extra]


def denoiser_test(*extra):
    return ["test-denoiser", "--denoiser", "{d}/c.pt", "--data", "{d}/d.npz", "--sigma", "0.25",
            *extra]  # fmt: skip


def _swap(argv, old, new):
    """argv with the argument `old` replaced by `new`."""
    return [new if a == old else a for a in argv]


CASES = {
    "certify": [
        with_flag(certify(), "--sigma", "64"),  # 0-255 units
        with_flag(certify(), "--sigma", "-1"),
        with_flag(certify(), "--sigma", "nan"),
        certify("--alpha", "0.5"),
        certify("--n", "0"),
        certify("--batch", "0"),
        certify("--skip", "0"),
        certify("--device", "cuda"),
        certify("--mean", "0.5,0.5"),  # foreign-weights flag on a TorchScript model
        _swap(certify("--input-range", "255"), "{d}/c.pt", CKPT),
        _swap(certify(), "{d}/d.npz", "{d}/gray.npz"),  # 1 channel into a 3-channel model
        _swap(certify(), "{d}/d.npz", "{d}/missing.npz"),
        _swap(certify(), "{d}/c.pt", "{d}/pickle.pt"),
        _swap(certify(), "{out}", "/proc/nonexistent/log.tsv"),
        certify("--noise", "lattice", "--method", "sequential", "--radius", "-1"),
        certify("--workers", "2"),  # without --ray
        certify("--class-names", "a,b"),
    ],
    "predict": [
        with_flag(predict(), "--sigma", "300"),
        predict("--alpha", "1.5"),
        predict("--device", "nosuchdevice"),
        _swap(predict(), "{d}/c.pt", "nosucharch:{d}/c.pt"),
        _swap(predict(), "{d}/c.pt", "cifar_resnet20:{d}/whole.pt"),
    ],
    "demo": [["demo", "--threads", "0"], ["demo", "--images", "0"]],
    "train-classifier": [
        ["train-classifier", "--arch", "nosuch", "--data", "{d}/d.npz", "--out", "{out}"],
        [
            "train-classifier",
            "--arch",
            "cifar_resnet20",
            "--data",
            "{d}/d.npz",
            "--out",
            "{out}",
            "--epochs",
            "0",
        ],
        [
            "train-classifier",
            "--arch",
            "cifar_resnet20",
            "--data",
            "{d}/d.npz",
            "--out",
            "{out}",
            "--noise-sigma",
            "64",
        ],
        [
            "train-classifier",
            "--arch",
            "cifar_resnet20",
            "--data",
            "{d}/d.npz",
            "--out",
            "{out}",
            "--device",
            "nosuchdevice",
        ],
    ],
    "train-denoiser": [
        [
            "train-denoiser",
            "--arch",
            "dncnn",
            "--data",
            "{d}/d.npz",
            "--sigma",
            "64",
            "--out",
            "{out}",
        ],
        [
            "train-denoiser",
            "--arch",
            "dncnn",
            "--data",
            "{d}/d.npz",
            "--sigma",
            "0.25",
            "--objective",
            "stab",
            "--out",
            "{out}",
        ],  # stab needs a classifier
        [
            "train-denoiser",
            "--arch",
            "dncnn",
            "--data",
            "{d}/d.npz",
            "--sigma",
            "0.25",
            "--out",
            "/proc/nonexistent/run",
        ],
        # CI has no GPU (as certify --device cuda above)
        [
            "train-denoiser",
            "--objective",
            "mse",
            "--data",
            "{d}/d.npz",
            "--sigma",
            "0.25",
            "--out",
            "{out}",
            "--device",
            "cuda:99",
        ],
    ],
    "test-denoiser": [
        ["test-denoiser", "--denoiser", "{d}/missing", "--data", "{d}/d.npz", "--sigma", "0.25"],
        ["test-denoiser", "--denoiser", "{d}/c.pt", "--data", "{d}/d.npz", "--sigma", "99"],
        denoiser_test("--denoiser", "nosucharch:{d}/w.safetensors"),
        denoiser_test("--denoiser", "dncnn:{d}/whole.pt"),
        denoiser_test("--threads", "0"),
    ],
    "evaluate": [
        ["evaluate", "--classifier", "{d}/c.pt", "--data", "{d}/d.npz", "--sigma", "64"],
        ["evaluate", "--classifier", "{d}/c.pt", "--data", "{d}/gray.npz"],
        ["evaluate", "--classifier", "{d}/c.pt", "--data", "{d}/d.npz", "--device", "cuda"],
        _swap(evaluate(), "{d}/c.pt", "nosucharch:{d}/w.safetensors"),
        _swap(evaluate("--arch", "cifar_resnet20"), "{d}/c.pt", "{d}/whole.pt"),
        evaluate("--threads", "0"),
        evaluate("--precision", "int8", "--backend", "torch"),
        evaluate("--batch", "0"),
    ],
    "import-weights": [
        ["import-weights", "{d}/pickle.pt", "--arch", "cifar_resnet20", "--out", "{out}"],
        ["import-weights", "{d}/missing.pt", "--arch", "cifar_resnet20", "--out", "{out}"],
    ],
    "analyze": [["analyze", "{d}/log.tsv"], ["analyze", "{d}/missing.tsv"]],
    "visualize": [
        [
            "visualize",
            "--classifier",
            "{d}/c.pt",
            "--data",
            "{d}/d.npz",
            "--sigmas",
            "64",
            "--out",
            "{out}.png",
        ],
        [
            "visualize",
            "--classifier",
            "{d}/c.pt",
            "--data",
            "{d}/d.npz",
            "--indices",
            "99",
            "--out",
            "{out}.png",
        ],
    ],
    "report": [["report", "{d}/missing.tsv", "--out", "{out}.html"]],
    "serve": [
        ["serve", "--classifier", "{d}/missing.pt"],
        ["serve", "--classifier", "{d}/c.pt", "--max-batch", "0"],
        ["serve", "--classifier", "{d}/c.pt", "--input-shape", "3x32"],
    ],
    "export": [
        ["export", "--format", "onnx", "--out", "{out}.onnx"],  # nothing to export
        ["export", "--classifier", "{d}/c.pt", "--format", "onnx", "--out", "{out}.onnx"],  # 32x32
        [
            "export",
            "--classifier",
            "{d}/c.pt",
            "--format",
            "onnx",
            "--out",
            "{out}.onnx",
            "--sigma",
            "-2",
        ],
    ],
    "bench": [
        ["bench", "--samples", "0"],
        ["bench", "--sigma", "64"],
        ["bench", "--pipelines", "a+b+c"],
    ],
}


def test_the_table_covers_every_subcommand():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command" or a.choices)
    assert set(sub.choices) == set(CASES)


@pytest.mark.parametrize(
    "argv", [pytest.param(a, id=f"{a[0]}-{i}") for c in CASES.values() for i, a in enumerate(c)]
)
def test_a_mistake_gets_one_sentence_and_exit_code_2(argv, files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(d=files, out=out) for a in argv]
    try:
        rc = main(argv)  # an unexpected exception fails the test with its traceback
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("dsmooth: warning")]
    assert rc == 2, (argv, err[-2000:])
    assert len(lines) == 1, err
    assert lines[0].startswith("dsmooth: error:"), err
    assert "\x1b[" not in err, err  # plain text: no terminal escape codes from a library
    assert not list(tmp_path.iterdir()), f"{argv} left {list(tmp_path.iterdir())}"


@pytest.mark.parametrize(
    "argv",
    [
        _swap(certify("--arch", "cifar_resnet20"), "{d}/c.pt", "{d}/whole.pt"),
        _swap(evaluate(), "{d}/c.pt", "cifar_resnet20:{d}/whole.pt"),
        denoiser_test("--denoiser", "dncnn:{d}/whole.pt"),
        ["import-weights", "{d}/whole.pt", "--arch", "cifar_resnet20", "--out", "{out}"],
    ],
    ids=lambda a: a[0],
)
def test_a_pickled_model_is_refused_in_our_own_words(argv, files, tmp_path, capsys):
    """torch's weights_only refusal has escape codes and advises weights_only=False (which
    would run the file's code); the user reads one plain sentence that says what to do."""
    argv = [a.format(d=files, out=tmp_path / "out") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "\x1b[" not in err, err
    assert "weights_only" not in err, err
    assert "cannot load" in err, err
    assert "safely" in err, err
    assert "model.state_dict()" in err, err
    assert "conftest.LinearClassifier" in err  # the object it would have had to build


@pytest.mark.parametrize(
    "argv",
    [
        _swap(evaluate(), "{d}/c.pt", "nosucharch:{d}/w.safetensors"),
        _swap(certify(), "{d}/c.pt", "nosucharch:{d}/w.safetensors"),
        _swap(predict(), "{d}/c.pt", "nosucharch:{d}/missing.pt"),
        denoiser_test("--denoiser", "nosucharch:{d}/w.safetensors"),
    ],
    ids=lambda a: a[0],
)
def test_an_unknown_architecture_is_named_with_the_known_ones(argv, files, tmp_path, capsys):
    argv = [a.format(d=files, out=tmp_path / "out") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown architecture 'nosucharch'" in err, err
    assert all(name in err for name in list_models()), err
