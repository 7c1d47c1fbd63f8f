"""Denoiser training for denoised smoothing: D learns on x + N(0, sigma^2) with the MSE,
Stab or Clf objective (`objectives.py`), optionally fine-tuning an existing denoiser
(`init`: Stab+MSE = an MSE denoiser fine-tuned with Stab) and optionally through
surrogate classifiers only (the query-access setting)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from dsmooth.data.transforms import random_crop_flip, to_float_nchw
from dsmooth.errors import UserError
from dsmooth.models import list_models
from dsmooth.models.config import ModelConfig
from dsmooth.pipeline.engine import ieee_fp32
from dsmooth.sigma import check_sigma
from dsmooth.training import loop
from dsmooth.training.classifier import build
from dsmooth.training.evaluate import evaluate_denoiser
from dsmooth.training.objectives import OBJECTIVES, SURROGATE_MODES, DenoiserObjective
from dsmooth.training.precision import autocast, memory_format, resolve_precision, threads
from dsmooth.training.recipe import (
    Hooks,
    TrainingRun,
    check_lr,
    check_schedule,
    fit,
    load_sets,
    run_device,
)

OPTIMIZERS = ("adam", "sgd")


@dataclass
class DenoiserRecipe(TrainingRun):
    data: list[str]
    out: str
    sigma: float
    objective: str = "mse"
    arch: str | None = None  # None: the --init checkpoint's architecture, else dncnn
    arch_kwargs: dict = field(default_factory=dict)  # constructor options, e.g. depth
    classifier: str | None = None
    # load_model options for `classifier`: its input contract (range, layout, size,
    # normalisation; docs/sources.md). None = the defaults; surrogates take none.
    classifier_options: dict | None = None
    surrogates: list[str] = field(default_factory=list)
    surrogate_mode: str = "round-robin"
    val_target: bool = False
    init: str | None = None
    soft_targets: bool = False
    mse_weight: float = 0.0
    optimizer: str = "adam"
    # lr 1e-3 and weight decay 1e-4 (the official code's defaults) are TrainingRun's


def check(r: DenoiserRecipe, given: bool = False) -> None:
    """Raise a UserError for a bad recipe (`given`: classifier modules were passed in)."""
    if r.objective not in OBJECTIVES:
        raise UserError(
            f"unknown objective {r.objective!r}; choose one of {', '.join(OBJECTIVES)}."
        )
    if r.arch is None:
        r.arch = _init_arch(r.init) if r.init else "dncnn"
    if r.arch not in list_models("denoiser"):
        known = ", ".join(list_models("denoiser"))
        raise UserError(f"unknown denoiser architecture {r.arch!r}; known: {known}.")
    run_device(r)
    check_sigma(r.sigma)
    check_lr(r)
    if r.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {r.optimizer!r}.")
    check_schedule(r)
    if r.surrogate_mode not in SURROGATE_MODES:
        raise UserError(f"surrogate mode must be one of {', '.join(SURROGATE_MODES)}.")
    if r.objective != "mse" and not (r.classifier or r.surrogates or given):
        raise UserError(f"the {r.objective} objective needs --classifier (or --surrogates).")
    if r.val_target and not (r.classifier or given):
        raise UserError("--val-target needs --classifier.")


def _init_arch(spec: str) -> str:
    from dsmooth.models.checkpoint import is_checkpoint, read_config

    if is_checkpoint(spec):
        return read_config(spec).architecture
    return "dncnn"  # foreign weights: their loader names the architecture; checked later


def _load_classifier(spec: str, device: torch.device, options: dict | None = None) -> nn.Module:
    from dsmooth.sources import load_model

    return load_model(spec, role="classifier", device=device, **(options or {}))


def _load_denoiser_init(spec: str) -> tuple[nn.Module, ModelConfig]:
    from dsmooth.models.loading import load_with_config

    found = load_with_config(spec)
    if found is None:
        raise UserError(f"cannot load the denoiser to fine-tune from {spec!r}.")
    return found


def train_denoiser(
    r: DenoiserRecipe,
    resume: bool = False,
    classifier: nn.Module | None = None,
    surrogates: Sequence[nn.Module] | None = None,
) -> str:
    """Train (or resume) a denoiser into the checkpoint folder `r.out`.

    `classifier` / `surrogates` may be given as modules (else they are loaded from the
    recipe's specs). With surrogates the target classifier is used for nothing unless
    `r.val_target` asks to validate on it (never during training steps).
    """
    check(r, given=classifier is not None or bool(surrogates))
    with threads(r.threads):
        return _train(r, resume, classifier, surrogates)


def _classifiers(r, classifier, surrogates, device) -> tuple[nn.Module | None, list]:
    """(the target classifier to validate on, or None; the classifiers the objective trains
    against): the surrogates when there are any (the target then only with `r.val_target`),
    else the target classifier. Those loaded from specs are loaded onto `device`."""
    if bool(r.surrogates) or bool(surrogates):
        surrogates = list(surrogates or [_load_classifier(s, device) for s in r.surrogates])
        target = None
        if r.val_target:
            target = classifier
            if target is None:
                target = _load_classifier(r.classifier, device, r.classifier_options)
        return target, surrogates
    target = classifier
    if target is None and r.classifier:
        target = _load_classifier(r.classifier, device, r.classifier_options)
    return target, ([target] if target is not None else [])


def _initial_denoiser(r) -> tuple[nn.Module, dict]:
    """(the denoiser to train, its constructor options): from `r.init`'s checkpoint, or a
    new `r.arch`."""
    if not r.init:
        kwargs = dict(r.arch_kwargs)
        return build(r.arch, kwargs), kwargs
    denoiser, init_config = _load_denoiser_init(r.init)
    if init_config.architecture != r.arch:
        raise UserError(
            f"--init holds a {init_config.architecture!r} denoiser but --arch is {r.arch!r}."
        )
    if r.arch_kwargs:
        raise UserError("--arch-kwargs do not apply with --init (the checkpoint has them).")
    return denoiser, dict(init_config.kwargs or {})


def _val_classifiers(target: nn.Module | None, surrogates: Sequence) -> dict[str, nn.Module]:
    """What validation measures accuracy on: "noisy" (the target), "surrogate{i}_noisy"."""
    val_classifiers: dict[str, nn.Module] = {}
    if target is not None:
        val_classifiers["noisy"] = target
    for i, f in enumerate(surrogates):
        val_classifiers[f"surrogate{i}_noisy"] = f
    return val_classifiers


def _optimizer(r, denoiser: nn.Module) -> torch.optim.Optimizer:
    if r.optimizer == "adam":
        return torch.optim.Adam(denoiser.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(
        denoiser.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay
    )


def _train(r, resume, classifier=None, surrogates=None) -> str:
    device = run_device(r)
    ieee_fp32(device)  # fp32 on a GPU means fp32, not TF32 (as the certify engine)
    precision = resolve_precision(r.precision, device)
    fmt = memory_format(r.channels_last)
    images, labels, val = load_sets(r)

    use_surrogates = bool(r.surrogates) or bool(surrogates)
    target, train_classifiers = _classifiers(r, classifier, surrogates, device)

    torch.manual_seed(r.seed)
    denoiser, kwargs = _initial_denoiser(r)
    denoiser = denoiser.to(device, memory_format=fmt)
    optimizer = _optimizer(r, denoiser)
    objective = DenoiserObjective(
        r.objective,
        train_classifiers,
        soft_targets=r.soft_targets,
        mse_weight=r.mse_weight,
        mode=r.surrogate_mode,
        autocast=lambda: autocast(precision, device),
    )
    # modules (given or loaded) follow the run's device; a black box keeps its own (ONNX,
    # a server: the CPU) and validation hands it its inputs there
    for f in ([target] if target is not None else []) + list(train_classifiers):
        if isinstance(f, nn.Module):
            f.to(device, memory_format=fmt)

    def step_fn(batch, y, g, step):
        if r.crop_pad > 0 or r.flip:  # on the CPU, uint8: the same crops on every device
            batch = random_crop_flip(batch, g, r.crop_pad, r.flip)
        x = to_float_nchw(loop.to_device(batch, device))
        y = loop.to_device(y, device)
        noisy = (x + loop.randn(x.shape, g, device) * r.sigma).contiguous(memory_format=fmt)
        with autocast(precision, device):
            denoised = denoiser(noisy)
        return objective(denoised, x, y, step)

    val_classifiers = _val_classifiers(target, train_classifiers if use_surrogates else [])

    def validate() -> dict:
        return evaluate_denoiser(
            denoiser,
            val[0],
            labels=val[1],
            sigma=r.sigma,
            classifiers=val_classifiers,
            batch=r.val_batch,
            precision=precision,
            channels_last=r.channels_last,
            seed=r.seed,
            device=device,
        )

    def describe() -> dict:
        objective_name = r.objective + (f" + {r.mse_weight:g} mse" if r.mse_weight > 0 else "")
        return {
            "architecture": r.arch,
            "kwargs": kwargs,
            "kind": "denoiser",
            "input_range": [0.0, 1.0],
            "sigma": r.sigma,
            "objective": objective_name,
            "classifier": None if use_surrogates else r.classifier,
            "surrogates": list(r.surrogates),
            "init": r.init,
        }

    hooks = Hooks(step_fn, validate if val is not None else None, describe)
    desc = f"{r.arch} {r.objective}"
    return fit(r, denoiser, optimizer, sets=(images, labels), hooks=hooks, precision=precision,
               desc=desc, resume=resume)  # fmt: skip
