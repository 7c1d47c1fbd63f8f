"""`dsmooth serve --smoothed`: flags, the binding rule, and a real process under SIGTERM."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


from service_helpers import dsmooth_server  # noqa: E402

from dsmooth import Smooth  # noqa: E402
from dsmooth.cli import main  # noqa: E402
from dsmooth.deploy.client import CertifiedClient  # noqa: E402


def smoothed(model_file, *extra: str) -> list[str]:
    return ["serve", "--smoothed", "--classifier", str(model_file), "--sigma", "0.25",
            "--input-shape", "3,8,8", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--alpha", "0.7"], "alpha"),
        (["--n0", "0"], "n0"),
        (["--method", "cp", "--radius", "0.5"], "--radius needs --method sequential"),
        (["--n-cap", "5"], "--n-cap"),
        (["--max-images-per-request", "500", "--queue", "10"], "exceeds --queue"),
        (["--host", "0.0.0.0"], "without a bearer token"),
        (["--auth-token-file", "/nonexistent/token"], "does not exist"),
        (["--request-timeout", "0"], "--request-timeout"),
        (["--noise-secret-file", "/nonexistent/secret"], "cannot read the noise secret"),
        (["--public-noise", "--noise-secret-file", "s"], "exclude each other"),
        (["--method", "cp", "--tol", "0.1"], "--tol needs --method sequential"),
        (["--tol", "0"], "--tol must be positive"),
        (["--radius", "inf"], "--radius values must be finite"),
        (["--n-max", "0"], "n-max must be at least 1"),
    ],
)
def test_bad_flags_are_one_sentence_and_exit_2(tiny_classifier_file, capsys, extra, words):
    assert main(smoothed(tiny_classifier_file, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert words in err, err
    assert len(err.splitlines()) == 1, err


def test_smoothed_flags_need_smoothed_and_sigma(tiny_classifier_file, capsys):
    assert main(["serve", "--classifier", str(tiny_classifier_file), "--alpha", "0.01"]) == 2
    assert "--alpha needs --smoothed" in capsys.readouterr().err
    args = ["serve", "--smoothed", "--classifier", str(tiny_classifier_file)]
    assert main([*args, "--input-shape", "3,8,8"]) == 2
    assert "--sigma" in capsys.readouterr().err
    assert main([*args, "--sigma", "0.25"]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_flags_give_the_server_settings_and_a_body_limit_from_the_shape(tiny_classifier_file):
    """Sequential by default (the flags are certify's, commands.common), n_max from --n;
    the body limit follows --input-shape and --max-images-per-request."""
    from dsmooth.cli import build_parser
    from dsmooth.cli.commands.serve import smoothed_settings
    from dsmooth.deploy.service.wire import body_limit

    parse = build_parser().parse_args
    policy, limits = smoothed_settings(parse(smoothed(tiny_classifier_file, "--n", "500")))
    s = policy.settings
    assert (s.method, s.n_max, s.radius, s.tol, policy.n_cap) == (
        "sequential",
        500,
        None,
        None,
        500,
    )
    assert limits.max_body_bytes is None
    assert limits.body_bytes((3, 8, 8)) == body_limit((3, 8, 8), 64)
    extra = ("--method", "cp", "--max-images-per-request", "4")
    policy, limits = smoothed_settings(parse(smoothed(tiny_classifier_file, *extra)))
    assert policy.settings.method == "cp"
    assert limits.body_bytes((3, 8, 8)) == body_limit((3, 8, 8), 4)
    extra = ("--radius", "0.25", "0.5", "--n-max", "2000")
    s = smoothed_settings(parse(smoothed(tiny_classifier_file, *extra)))[0].settings
    assert (s.method, s.radius, s.n_max) == ("sequential", (0.25, 0.5), 2000)


@pytest.mark.slow
def test_a_real_server_answers_like_offline_and_stops_on_sigterm(tiny_classifier_file, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef0123\n")
    args = smoothed(tiny_classifier_file, "--public-noise")
    args += ["--port", "0", "--method", "cp", "--n0", "20", "--n", "300", "--alpha", "0.01"]
    args += ["--auth-token-file", str(token_file), "--batch", "64", "--grace", "1"]
    args += ["--request-timeout", "5", "--n-cap", "5000000"]
    with dsmooth_server(args) as server:
        proc, url = server.proc, server.url
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (3, 3, 8, 8)).astype(np.uint8)
        with CertifiedClient(url, token="0123456789abcdef0123", timeout=30) as client:
            certs = client.certify(images, seed=7, index=4)
        model = torch.jit.load(str(tiny_classifier_file))
        smooth = Smooth(model, 3, 0.25, seed=7)
        for i, c in enumerate(certs):
            x = torch.from_numpy(images[i]).float().div_(255.0)
            assert (c.prediction, c.radius) == smooth.certify(x, 20, 300, 0.01, index=4 + i)

        answers: list = []

        def slow_request():  # in flight when SIGTERM arrives: answered early, not dropped
            with CertifiedClient(url, token="0123456789abcdef0123", timeout=30) as client:
                answers.append(client.certify(images[:1], n=5_000_000))

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        thread.join(30)
        # uvicorn re-raises the signal once it has shut down cleanly (exit status 143)
        assert proc.wait(30) in (0, -signal.SIGTERM)
        # answered after --grace (1 s) with what is certified so far, not at its deadline
        assert answers, answers
        assert answers[0][0].reason == "shutdown", answers
