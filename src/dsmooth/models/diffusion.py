"""Diffusion denoised smoothing (Carlini et al., ICLR 2023): an off-the-shelf DDPM as a
one-shot denoiser D.

Smooth has already added the noise: D receives x + sigma * d with x in [0, 1]. In the
model's [-1, 1] space that noise has std 2 * sigma, which is exactly the noise of the
forward process at the timestep t* where sqrt(1 - a_t) / sqrt(a_t) = 2 * sigma
(a_t = alphas_cumprod[t]). Scaling by sqrt(a_t*) turns the input into x_t*; one epsilon
prediction then gives x0_hat = (x_t - sqrt(1 - a_t*) eps) / sqrt(a_t*). D adds no noise
of its own and is a deterministic function of its input, so the certified sigma is the
sigma Smooth draws (docs/diffusion.md). t* depends on sigma, so D is sigma-aware:
`compose(classifier, D, sigma=)` hands it the certified sigma through `D.at_sigma`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsmooth.errors import UserError, brief
from dsmooth.models.config import ModelConfig
from dsmooth.sigma import check_sigma

#: How far (relatively) 2 * sigma may lie outside the schedule's noise range and still be
#: served by its nearest end; beyond it no timestep carries the certification noise.
RANGE_TOLERANCE = 0.1
PREFIX = "diffusers:"
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
#: What is tried on the Hugging Face hub when no local folder has the name: OWNER/NAME.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Without the optional `accelerate` package diffusers warns on every load unless told this.
_QUIET = {"low_cpu_mem_usage": False}


def noise_ratios(alphas_cumprod: Sequence[float] | torch.Tensor) -> np.ndarray:
    """sqrt(1 - a_t) / sqrt(a_t) per timestep: the [-1, 1]-space noise std of x_t / sqrt(a_t)."""
    a = np.asarray(torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu(), dtype=np.float64)
    return np.sqrt((1.0 - a) / a)


def timestep_for_sigma(
    alphas_cumprod: Sequence[float] | torch.Tensor,
    sigma: float,
    tolerance: float = RANGE_TOLERANCE,
) -> int:
    """The timestep whose noise ratio is closest to 2 * sigma, or a UserError when 2 * sigma
    lies outside the schedule's range by more than `tolerance` (relative)."""
    check_sigma(sigma)
    ratios = noise_ratios(alphas_cumprod)
    lo, hi = float(ratios.min()), float(ratios.max())
    target = 2.0 * float(sigma)
    if target < lo / (1 + tolerance) or target > hi * (1 + tolerance):
        raise UserError(
            f"sigma {sigma:g} is outside what this diffusion model's noise schedule reaches "
            f"(sigma {lo / 2:.3g} to {hi / 2:.3g} in [0, 1] pixel units); use a sigma in "
            "that range."
        )
    return int(np.argmin(np.abs(ratios - target)))


class DiffusionDenoiser(nn.Module):
    """D(x + sigma d): the DDPM's estimate of the clean image at the timestep matching sigma.

    `eps_model(x_t, t)` is called with x_t in [-1, 1] space and t a (N,) int64 tensor; it
    returns a tensor or an object with `.sample` (a diffusers UNet), predicting epsilon
    (or x0 / v, `prediction_type`). `steps` > 1 runs that many deterministic DDIM steps
    (eta = 0, no added noise) from t* to 0 instead of the one-shot estimate.
    """

    def __init__(
        self,
        eps_model: Callable,
        alphas_cumprod: Sequence[float] | torch.Tensor,
        sigma: float | None = None,
        steps: int = 1,
        prediction_type: str = "epsilon",
    ):
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f"steps must be a positive integer, got {steps!r}.")
        if prediction_type not in PREDICTION_TYPES:
            raise UserError(
                f"unsupported prediction type {prediction_type!r}; "
                f"supported: {', '.join(PREDICTION_TYPES)}."
            )
        self.model = eps_model  # a submodule when it is an nn.Module
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().cpu()
        if len(a) == 0 or not bool(((a > 0) & (a < 1)).all()):
            raise UserError("alphas_cumprod must be a non-empty sequence of values in (0, 1).")
        self._abar = a.tolist()  # float64 coefficients, whatever device the module is on
        self.register_buffer("alphas_cumprod", a.float())
        # A buffer, so a checksum of the module (the log's provenance) tells k steps apart.
        self.register_buffer("denoise_steps", torch.tensor(steps, dtype=torch.int64))
        self.steps = steps
        self.prediction_type = prediction_type
        self.sigma: float | None = None
        self.timestep: int | None = None
        self.timesteps: tuple[int, ...] = ()
        if sigma is not None:
            self._select(sigma)

    def _select(self, sigma: float) -> None:
        """Set t* (and the DDIM timesteps) for noise level `sigma`, in place."""
        t = timestep_for_sigma(self._abar, sigma)
        self.sigma, self.timestep = float(sigma), t
        grid = np.linspace(t, 0, self.steps).round().astype(int) if self.steps > 1 else [t]
        self.timesteps = tuple(dict.fromkeys(int(s) for s in grid))

    def at_sigma(self, sigma: float) -> DiffusionDenoiser:
        """This denoiser at noise level `sigma` ([0, 1] pixel units): a new module sharing
        the UNet (no weights copied), so `self`, and whatever was composed from it at
        another sigma, keeps its own timestep. The hook `compose(..., sigma=)` calls."""
        chosen = DiffusionDenoiser(
            self.model, self._abar, sigma, self.steps, self.prediction_type
        ).to(self.alphas_cumprod.device)
        chosen.train(self.training)
        if hasattr(self, "dsmooth_config"):  # what dsmooth.load attached
            chosen.dsmooth_config = self.dsmooth_config
        return chosen

    def train(self, mode: bool = True) -> DiffusionDenoiser:
        """The off-the-shelf model stays in eval mode: dropout would make D random."""
        super().train(mode)
        if isinstance(self.model, nn.Module):
            self.model.eval()
        return self

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma}, timestep={self.timestep}, steps={self.steps}, "
            f"prediction_type={self.prediction_type!r}"
        )

    def _predict(self, xt: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat clipped to [-1, 1], eps) at timestep t."""
        a = self._abar[t]
        ts = torch.full((xt.shape[0],), t, dtype=torch.int64, device=xt.device)
        out = self.model(xt, ts)
        if not isinstance(out, torch.Tensor):
            out = out.sample if hasattr(out, "sample") else out[0]
        out = out.to(xt.dtype)
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (xt - math.sqrt(1 - a) * eps) / math.sqrt(a)
        elif self.prediction_type == "sample":
            x0 = out
            eps = (xt - math.sqrt(a) * x0) / math.sqrt(1 - a)
        else:  # v = sqrt(a) eps - sqrt(1 - a) x0
            x0 = math.sqrt(a) * xt - math.sqrt(1 - a) * out
            eps = math.sqrt(1 - a) * xt + math.sqrt(a) * out
        return x0.clamp(-1, 1), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.timestep is None:
            raise UserError(
                "the diffusion denoiser needs the noise level it removes: give --sigma, or "
                "use at_sigma(sigma) / compose(classifier, denoiser, sigma=sigma)."
            )
        xt = math.sqrt(self._abar[self.timesteps[0]]) * (2 * x - 1)
        for i, t in enumerate(self.timesteps):
            x0, eps = self._predict(xt, t)
            if i + 1 < len(self.timesteps):
                a_next = self._abar[self.timesteps[i + 1]]
                xt = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
        return (x0 + 1) / 2


def split_steps(source: str) -> tuple[str, int]:
    """(path or hub id, steps) from `SOURCE` or `SOURCE?steps=K`."""
    if "?" not in source or Path(source).exists():
        return source, 1
    source, query = source.rsplit("?", 1)
    key, _, value = query.partition("=")
    if key != "steps" or not value.isdigit() or int(value) < 1:
        raise UserError(f"write diffusers:PATH?steps=K with K a positive integer, not {query!r}.")
    return source, int(value)


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise UserError(
            "diffusion denoisers need diffusers: pip install 'dsmooth[diffusion]'."
        ) from None
    return diffusers


def _named_class(diffusers, folder: Path, config_name: str, base: type, default: type) -> type:
    """The diffusers class a saved config names, when it is one of `base`'s kind."""
    try:
        name = json.loads((folder / config_name).read_text()).get("_class_name")
    except (OSError, ValueError):
        return default
    cls = getattr(diffusers, str(name), None)
    return cls if isinstance(cls, type) and issubclass(cls, base) else default


def _local_folders(path: Path) -> tuple[Path, Path]:
    """(UNet folder, scheduler folder) of a pipeline folder (model_index.json + unet/ +
    scheduler/), a folder with unet/ + scheduler/, or a UNet folder with scheduler/ (or a
    scheduler_config.json) inside."""
    unet = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (unet / "config.json").is_file():
        raise UserError(
            f"{path} is not a diffusers model folder (no unet/config.json or config.json); "
            "save one with save_pretrained (docs/diffusion.md)."
        )
    for scheduler in (path / "scheduler", unet / "scheduler", path, unet):
        if (scheduler / "scheduler_config.json").is_file():
            return unet, scheduler
    raise UserError(
        f"{path} has no scheduler (scheduler/scheduler_config.json); save the model's "
        "noise schedule beside it (docs/diffusion.md)."
    )


def load_diffusers(
    source: str | os.PathLike,
    sigma: float | None = None,
    steps: int = 1,
    device: str | torch.device = "cpu",
) -> DiffusionDenoiser:
    """A DiffusionDenoiser from a local diffusers folder (see `_local_folders`), in eval
    mode. A `source` that is not a local path is a Hugging Face hub id (e.g.
    google/ddpm-cifar10-32), downloaded by diffusers into its cache."""
    diffusers = _diffusers()
    path = Path(source)
    try:
        if path.exists():
            unet_dir, scheduler_dir = _local_folders(path)
            unet_cls = _named_class(
                diffusers, unet_dir, "config.json", diffusers.ModelMixin, diffusers.UNet2DModel
            )
            scheduler_cls = _named_class(
                diffusers,
                scheduler_dir,
                "scheduler_config.json",
                diffusers.SchedulerMixin,
                diffusers.DDPMScheduler,
            )
            unet = unet_cls.from_pretrained(str(unet_dir), **_QUIET)
            scheduler = scheduler_cls.from_pretrained(str(scheduler_dir))
        elif HUB_ID.match(str(source)):  # network, or the local diffusers cache
            unet = diffusers.UNet2DModel.from_pretrained(str(source), subfolder="unet", **_QUIET)
            scheduler = diffusers.DDPMScheduler.from_pretrained(str(source), subfolder="scheduler")
        else:
            raise UserError(f"diffusion model folder {source} does not exist.")
    except UserError:
        raise
    except Exception as e:
        where = "" if path.exists() else "no such local folder, and from the hub: "
        raise UserError(f"cannot load the diffusion model {source} ({where}{brief(e)}).") from None
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise UserError(
            f"{source}: the scheduler {type(scheduler).__name__} has no alphas_cumprod "
            "(a DDPM/DDIM noise schedule is needed)."
        )
    prediction = getattr(scheduler.config, "prediction_type", "epsilon") or "epsilon"
    model = DiffusionDenoiser(unet, alphas, sigma, steps, prediction)
    return model.to(device).eval()


#: The UNet of google/ddpm-cifar10-32 (Ho et al. 2020, 35.7M parameters), as diffusers
#: configures it: the denoiser of Carlini et al.'s CIFAR-10 results.
DDPM_CIFAR10_UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "norm_eps": 1e-6,
    "dropout": 0.1,
}


def random_ddpm_cifar10(sigma: float | None = None, seed: int = 0) -> DiffusionDenoiser:
    """google/ddpm-cifar10-32's architecture and schedule (linear betas 1e-4..0.02, 1000
    steps) with random weights: what one noise sample costs, without the download. Without
    `sigma` it is set up by `at_sigma` (`compose(..., sigma=)`)."""
    diffusers = _diffusers()
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**DDPM_CIFAR10_UNET)
    alphas = diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    return DiffusionDenoiser(unet, alphas, sigma).eval()


def load_spec(
    spec: str, device: str | torch.device = "cpu"
) -> tuple[DiffusionDenoiser, ModelConfig]:
    """(denoiser, config) from `diffusers:PATH` or `diffusers:PATH?steps=K`."""
    source, steps = split_steps(spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec)
    if not source:
        raise UserError("write the diffusion denoiser as diffusers:PATH (a local folder).")
    model = load_diffusers(source, steps=steps, device=device)
    config = {
        "kind": "denoiser",
        "architecture": f"diffusers:{type(model.model).__name__}",
        "source": source,
        "steps": steps,
        "prediction_type": model.prediction_type,
    }
    return model, ModelConfig.from_dict(config, where=spec)
