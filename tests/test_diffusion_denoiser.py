"""Diffusion denoised smoothing (docs/diffusion.md): the one-shot step is exact for
analytic epsilon predictors, adds no noise of its own (so the certified sigma is Smooth's),
picks its timestep from sigma, and runs end to end as `--denoiser diffusers:PATH`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import LinearClassifier
from helpers import certify_args

from dsmooth.certify.noise import STAGE_ESTIMATE, STAGE_SELECT, NoiseStream
from dsmooth.certify.smooth import Smooth
from dsmooth.cli import main
from dsmooth.errors import UserError
from dsmooth.models.diffusion import DiffusionDenoiser, load_diffusers, timestep_for_sigma
from dsmooth.pipeline.compose import compose


def linear_alphas() -> torch.Tensor:
    """alphas_cumprod of DDPMScheduler's defaults (linear betas 1e-4..0.02, 1000 steps),
    from diffusers when it is installed."""
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
        return torch.cumprod(1.0 - betas, dim=0)
    return DDPMScheduler().alphas_cumprod


def ratio(alphas, t: int) -> float:
    a = float(alphas[t])
    return math.sqrt((1 - a) / a)


class PointEps:
    """The optimal epsilon predictor when the data is the single point m0 (model space)."""

    def __init__(self, alphas, m0: torch.Tensor):
        self.alphas, self.m0 = torch.as_tensor(alphas, dtype=torch.float64), m0

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas[t].view(-1, 1, 1, 1).to(xt.dtype)
        return (xt - a.sqrt() * self.m0) / (1 - a).sqrt()


class GaussianEps:
    """E[eps | x_t] when the data is N(mu, s^2 I) in model space."""

    def __init__(self, alphas, mu: torch.Tensor, s: float):
        self.alphas, self.mu, self.s = torch.as_tensor(alphas, dtype=torch.float64), mu, s

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas[t].view(-1, 1, 1, 1).to(xt.dtype)
        return (1 - a).sqrt() * (xt - a.sqrt() * self.mu) / (a * self.s**2 + 1 - a)


def gaussian_posterior_mean(y: torch.Tensor, a: float, mu: torch.Tensor, s: float):
    """E[x0 | x_t] in [0, 1] pixels, x_t = sqrt(a) (2y - 1), for m0 ~ N(mu, s^2 I)."""
    xt = math.sqrt(a) * (2 * y - 1)
    m = mu + math.sqrt(a) * s**2 * (xt - math.sqrt(a) * mu) / (a * s**2 + 1 - a)
    return (m + 1) / 2


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_point_data_is_recovered_exactly(sigma, steps):
    alphas = linear_alphas()
    g = torch.Generator().manual_seed(0)
    x0 = 0.05 + 0.9 * torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64)
    denoiser = DiffusionDenoiser(PointEps(alphas, 2 * x0 - 1), alphas, sigma=sigma, steps=steps)
    y = x0 + sigma * torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(denoiser(y), x0.expand(5, -1, -1, -1), atol=1e-5, rtol=0)


def test_gaussian_data_gives_the_posterior_mean():
    alphas, sigma, s = linear_alphas(), 0.25, 0.1
    g = torch.Generator().manual_seed(1)
    mu = 0.6 * torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64) - 0.3
    denoiser = DiffusionDenoiser(GaussianEps(alphas, mu, s), alphas, sigma=sigma)
    t = int(np.argmin([abs(ratio(alphas, i) - 2 * sigma) for i in range(len(alphas))]))
    assert denoiser.timestep == t
    assert denoiser.sigma == sigma
    x = (mu + s * torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64) + 1) / 2
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    expected = gaussian_posterior_mean(y, float(alphas[t]), mu, s)
    assert expected.min() > 0.02
    assert expected.max() < 0.98  # clipping is not active
    torch.testing.assert_close(denoiser(y), expected, atol=1e-4, rtol=0)


def test_model_space_noise_is_twice_sigma():
    """With a timestep at exactly 2 sigma, D is the pixel-space posterior mean for noise
    sigma: the [0, 1] -> [-1, 1] map doubles the noise and nothing else changes it."""
    sigma, s = 0.25, 0.2
    alphas = torch.tensor([0.99, 0.9, 0.5, 1 / (1 + 4 * sigma**2), 0.05], dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    mu = 0.4 * torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) - 0.2
    denoiser = DiffusionDenoiser(GaussianEps(alphas, mu, s), alphas, sigma=sigma)
    assert denoiser.timestep == 3
    mx, sx = (mu + 1) / 2, s / 2  # the prior in pixels
    y = mx + 0.3 * torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
    expected = mx + sx**2 / (sx**2 + sigma**2) * (y - mx)
    torch.testing.assert_close(denoiser(y), expected, atol=1e-6, rtol=0)


def test_timestep_follows_sigma_and_unreachable_sigmas_are_user_errors():
    alphas = linear_alphas()
    ts = [timestep_for_sigma(alphas, s) for s in (0.12, 0.25, 0.5, 1.0)]
    assert ts == sorted(ts)
    assert len(set(ts)) == 4
    for s, t in zip((0.12, 0.25, 0.5, 1.0), ts, strict=True):
        assert abs(ratio(alphas, t) - 2 * s) <= abs(ratio(alphas, t + 1) - 2 * s)
        assert abs(ratio(alphas, t) - 2 * s) <= abs(ratio(alphas, t - 1) - 2 * s)
    top, bottom = ratio(alphas, len(alphas) - 1), ratio(alphas, 0)
    assert timestep_for_sigma(alphas, 0.97 * bottom / 2) == 0  # within tolerance
    for bad in (0.001, 2 * top, 0.0, -0.25, math.nan):
        with pytest.raises(UserError, match="sigma"):
            timestep_for_sigma(alphas, bad)
    with pytest.raises(UserError, match=r"reaches \(sigma 0\.005 to 78\.7"):
        DiffusionDenoiser(PointEps(alphas, torch.zeros(1)), alphas, sigma=0.001)


def test_denoiser_without_sigma_refuses_to_run():
    alphas = linear_alphas()
    denoiser = DiffusionDenoiser(PointEps(alphas, torch.zeros(1)), alphas)
    assert denoiser.timestep is None
    with pytest.raises(UserError, match="noise level"):
        denoiser(torch.rand(1, 3, 4, 4))
    composed = compose(torch.nn.Flatten(), denoiser, sigma=0.5)
    assert composed.denoiser.timestep == timestep_for_sigma(alphas, 0.5)
    assert composed.denoiser.model is denoiser.model  # the same weights, not a copy


def test_at_sigma_leaves_the_denoiser_and_earlier_compositions_alone():
    """compose at one sigma and then at another: each keeps its own timestep."""
    alphas = linear_alphas()
    denoiser = DiffusionDenoiser(PointEps(alphas, torch.zeros(1)), alphas, sigma=0.25)
    low = compose(torch.nn.Flatten(), denoiser, sigma=0.12)
    high = compose(torch.nn.Flatten(), denoiser, sigma=0.5)
    assert denoiser.timestep == timestep_for_sigma(alphas, 0.25)
    assert low.denoiser.timestep == timestep_for_sigma(alphas, 0.12)
    assert high.denoiser.timestep == timestep_for_sigma(alphas, 0.5)
    assert (low.sigma, high.sigma) == (0.12, 0.5)


def test_smooth_noise_is_exactly_sigma_with_none_added_by_the_denoiser():
    """What D receives is Smooth's x + sigma * d, bit for bit, and what f receives is D of
    it: D is a deterministic function, so the certified sigma is the one Smooth drew."""
    alphas, sigma, seed, index = linear_alphas(), 0.25, 7, 3
    mu = torch.full((1, 3, 4, 4), 0.1)
    denoiser = DiffusionDenoiser(GaussianEps(alphas, mu, 0.3), alphas)
    seen_by_d, seen_by_f = [], []

    class RecordD(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = denoiser

        def at_sigma(self, s):
            self.inner = self.inner.at_sigma(s)
            return self

        def forward(self, x):
            seen_by_d.append(x.clone())
            return self.inner(x)

    class RecordF(torch.nn.Module):
        def forward(self, x):
            seen_by_f.append(x.clone())
            return torch.stack([x.mean((1, 2, 3)), 1 - x.mean((1, 2, 3))], 1)

    record_d = RecordD()
    smooth = Smooth(compose(RecordF(), record_d, sigma=sigma), 2, sigma, seed=seed)
    assert record_d.inner.timestep == timestep_for_sigma(alphas, sigma)
    x = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    smooth.certify(x, 7, 13, 0.001, batch_size=5, index=index)
    drawn = torch.cat(
        [
            NoiseStream(x.shape, sigma, seed=seed, index=index, stage=STAGE_SELECT).take(7),
            NoiseStream(x.shape, sigma, seed=seed, index=index, stage=STAGE_ESTIMATE).take(13),
        ]
    )
    received = torch.cat(seen_by_d)
    assert torch.equal(received, drawn + x)
    with torch.inference_mode():
        redone = torch.cat([record_d.inner(b) for b in seen_by_d])
    assert torch.equal(torch.cat(seen_by_f), redone)


# ---- with diffusers: a tiny random UNet, saved and loaded as a real model would be ----


def tiny_unet(dropout: float = 0.0):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        dropout=dropout,
    )


@pytest.fixture
def ddpm_folder(tmp_path):
    """A tiny DDPM in the pipeline layout of google/ddpm-cifar10-32 saved locally:
    model_index.json + unet/ + scheduler/."""
    diffusers = pytest.importorskip("diffusers")
    path = tmp_path / "ddpm"
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler()).save_pretrained(
        str(path)
    )
    return path


def test_scheduler_default_schedule_matches_the_fallback():
    diffusers = pytest.importorskip("diffusers")
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    torch.testing.assert_close(
        diffusers.DDPMScheduler().alphas_cumprod, torch.cumprod(1 - betas, 0)
    )


def test_unet_denoiser_is_deterministic_in_train_and_eval_mode():
    alphas = linear_alphas()
    denoiser = DiffusionDenoiser(tiny_unet(dropout=0.5), alphas, sigma=0.25)
    y = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outputs = []
    for mode in (True, True, False, False):
        denoiser.train(mode)
        with torch.no_grad():
            outputs.append(denoiser(y))
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])
    assert outputs[0].shape == y.shape
    assert outputs[0].min() >= 0
    assert outputs[0].max() <= 1


def test_layouts_load_the_same_model(ddpm_folder, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    assert (ddpm_folder / "model_index.json").is_file()
    pipeline = load_diffusers(ddpm_folder, sigma=0.5)
    unet_dir = tmp_path / "unet_only"
    diffusers.UNet2DModel.from_pretrained(str(ddpm_folder / "unet")).save_pretrained(str(unet_dir))
    diffusers.DDPMScheduler().save_pretrained(str(unet_dir / "scheduler"))
    inside = load_diffusers(unet_dir, sigma=0.5, steps=2)
    assert pipeline.timestep == inside.timestep
    assert inside.timesteps == (inside.timestep, 0)
    y = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(pipeline(y), DiffusionDenoiser(inside.model, linear_alphas(), 0.5)(y))
    with pytest.raises(UserError, match="not a diffusers model folder"):
        load_diffusers(tmp_path)


#: certify_args(..., *TWO, **SMALL): a quick `dsmooth certify` run on two images
TWO, SMALL = ("--max", "2"), {"n0": "10", "n": "20", "batch": "10"}


def test_certify_with_a_diffusers_denoiser(
    tiny_data_file, tiny_classifier_file, ddpm_folder, tmp_path
):
    out, spec = tmp_path / "log.tsv", f"diffusers:{ddpm_folder}"
    argv = certify_args(
        tiny_data_file, tiny_classifier_file, out, "--denoiser", spec, *TWO, **SMALL
    )
    assert main(argv) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("idx\tlabel\tpredict\tradius")
    assert len(lines) == 3
    record = json.loads((tmp_path / "log.tsv.json").read_text())
    assert record["denoiser_timestep"] == timestep_for_sigma(linear_alphas(), 0.25)
    assert record["denoiser_steps"] == 1
    assert record["models"]["denoiser"]["spec"] == spec

    bad = tmp_path / "bad.tsv"
    argv = certify_args(
        tiny_data_file, tiny_classifier_file, bad, "--denoiser", spec, *TWO, sigma="200", **SMALL
    )
    assert main(argv) == 2
    assert not bad.exists()


def test_diffusers_spec_is_a_denoiser_not_a_classifier(ddpm_folder, tiny_data_file, tmp_path):
    argv = ["predict", "--data", str(tiny_data_file), "--classifier", f"diffusers:{ddpm_folder}"]
    argv += ["--sigma", "0.25", "--n", "10", "--out", str(tmp_path / "p.tsv"), "--no-progress"]
    assert main(argv) == 2


def test_classifier_of_another_input_size_behind_the_denoiser(
    tiny_data_file, ddpm_folder, tmp_path
):
    """D works at the data's 8x8; the classifier resizes D's output to its own 16x16."""
    classifier = tmp_path / "c16.pt"
    torch.jit.save(torch.jit.script(LinearClassifier(3 * 16 * 16, 3).eval()), str(classifier))
    out = tmp_path / "p.tsv"
    spec = f"diffusers:{ddpm_folder}?steps=2"
    argv = certify_args(
        tiny_data_file, classifier, out, "--denoiser", spec, *TWO, sigma="0.5", **SMALL
    )
    assert main([*argv, "--input-size", "16x16"]) == 0
    assert len(out.read_text().splitlines()) == 3
    record = json.loads((tmp_path / "p.tsv.json").read_text())
    assert record["denoiser_steps"] == 2


def test_test_denoiser_command_sets_the_timestep(tiny_data_file, ddpm_folder, tmp_path):
    report = tmp_path / "r.json"
    argv = ["test-denoiser", "--denoiser", f"diffusers:{ddpm_folder}", "--sigma", "0.25"]
    argv += ["--data", str(tiny_data_file), "--json", str(report), "--no-progress"]
    assert main(argv) == 0
    assert math.isfinite(json.loads(report.read_text())["psnr"])


def test_compose_keeps_its_old_signature():
    f, d = torch.nn.Flatten(), torch.nn.Identity()
    assert compose(f) is f
    assert compose(f, None, sigma=0.25) is f
    assert compose(f, d).denoiser is d
    assert compose(f, d, sigma=0.25).denoiser is d


def test_visualize_sets_the_timestep_per_sigma(
    tiny_data_file, tiny_classifier_file, ddpm_folder, tmp_path
):
    out = tmp_path / "grid.png"
    argv = ["visualize", "--classifier", str(tiny_classifier_file), "--data", str(tiny_data_file)]
    argv += ["--denoiser", f"diffusers:{ddpm_folder}", "--indices", "0", "--sigmas", "0.12", "0.5"]
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_serve_and_export_need_sigma_for_a_diffusion_denoiser(
    ddpm_folder, tiny_classifier_file, tmp_path, capsys
):
    spec = f"diffusers:{ddpm_folder}"
    out = tmp_path / "d.pt"
    export = ["export", "--denoiser", spec, "--format", "torchscript", "--out", str(out)]
    serve = ["serve", "--classifier", str(tiny_classifier_file), "--denoiser", spec]
    for argv in (export, serve):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "give --sigma" in err[0], err
    assert main([*export, "--sigma", "-1"]) == 2
    assert not out.exists()


def test_export_with_sigma_writes_the_denoiser_at_its_timestep(ddpm_folder, tmp_path):
    out = tmp_path / "d.pt"
    argv = ["export", "--denoiser", f"diffusers:{ddpm_folder}", "--format", "torchscript"]
    argv += ["--out", str(out), "--input-shape", "3,8,8", "--sigma", "0.5"]
    assert main(argv) == 0
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = load_diffusers(ddpm_folder, sigma=0.5)(x)
    assert torch.allclose(torch.jit.load(str(out))(x), expected, atol=1e-5)


def test_bench_builds_the_ddpm_cifar10_unet_with_random_weights():
    pytest.importorskip("diffusers")
    from dsmooth.pipeline.bench import DDPM, build_pipeline

    pipeline = build_pipeline(f"{DDPM}+cifar_resnet20", sigma=0.5)
    unet = pipeline.denoiser.model
    assert 35.5e6 < sum(p.numel() for p in unet.parameters()) < 36e6
    assert pipeline.denoiser.timestep == timestep_for_sigma(linear_alphas(), 0.5)
