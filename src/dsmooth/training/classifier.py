"""Classifier training: SGD with momentum, LR schedule, label smoothing, and optional
Gaussian noise augmentation at sigma (Cohen et al.'s base classifiers for randomized
smoothing: noise is added in [0, 1] pixel space, before the model's own normalisation,
and not clipped)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dsmooth.certify.base_classifier import module_device
from dsmooth.data.transforms import random_crop_flip, to_float_nchw
from dsmooth.errors import UserError
from dsmooth.models import create, list_models
from dsmooth.pipeline.engine import ieee_fp32
from dsmooth.sigma import check_sigma
from dsmooth.training import loop
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


@dataclass
class ClassifierRecipe(TrainingRun):
    arch: str
    data: list[str]
    out: str
    arch_kwargs: dict = field(default_factory=dict)  # constructor options, e.g. depth
    init: str | None = None  # a classifier checkpoint to continue from (warm restart)
    nesterov: bool = False
    label_smoothing: float = 0.0
    noise_sigma: float = 0.0
    num_classes: int | None = None
    # SGD's usual settings for CIFAR ResNets
    lr: float = field(default=0.1, kw_only=True)
    weight_decay: float = field(default=5e-4, kw_only=True)
    val_batch: int = field(default=500, kw_only=True)


def check(r: ClassifierRecipe) -> None:
    if r.arch not in list_models("classifier"):
        known = ", ".join(list_models("classifier"))
        raise UserError(f"unknown classifier architecture {r.arch!r}; known: {known}.")
    run_device(r)
    check_lr(r)
    check_schedule(r)
    if r.noise_sigma != 0:  # 0: no noise augmentation
        check_sigma(r.noise_sigma, "the noise sigma")
    if not 0 <= r.label_smoothing < 1:
        raise UserError(f"label smoothing must be in [0, 1), got {r.label_smoothing}.")
    if r.weight_decay < 0 or r.momentum < 0:
        raise UserError("weight decay and momentum must be >= 0.")


def train_classifier(r: ClassifierRecipe, resume: bool = False) -> str:
    """Train (or resume) a classifier into the checkpoint folder `r.out`; returns the
    loop status ("done", "stopped" at a budget, or "interrupted")."""
    check(r)
    with threads(r.threads):
        return _train(r, resume)


def _train(r, resume) -> str:
    device = run_device(r)
    ieee_fp32(device)  # fp32 on a GPU means fp32, not TF32 (as the certify engine)
    precision = resolve_precision(r.precision, device)
    fmt = memory_format(r.channels_last)
    images, labels, val = load_sets(r)
    num_classes = r.num_classes or int(labels.max()) + 1
    if int(labels.max()) >= num_classes:
        raise UserError(f"the data has label {int(labels.max())} but --num-classes {num_classes}.")

    torch.manual_seed(r.seed)
    if r.init:
        model, kwargs = _load_init(r, num_classes)
    else:
        kwargs = {**r.arch_kwargs, "num_classes": num_classes}
        model = build(r.arch, kwargs)
    model = model.to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=r.lr,
        momentum=r.momentum,
        nesterov=r.nesterov and r.momentum > 0,
        weight_decay=r.weight_decay,
    )

    def step_fn(batch, y, g, _step):
        if r.crop_pad > 0 or r.flip:  # on the CPU, uint8: the same crops on every device
            batch = random_crop_flip(batch, g, r.crop_pad, r.flip)
        x = to_float_nchw(loop.to_device(batch, device))
        y = loop.to_device(y, device)
        if r.noise_sigma > 0:
            x = x + loop.randn(x.shape, g, device) * r.noise_sigma
        x = x.contiguous(memory_format=fmt)
        with autocast(precision, device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=r.label_smoothing)
        correct = (logits.detach().argmax(1) == y).sum()
        return loss, {"loss": loss.detach() * len(y), "acc": correct, "n": len(y)}

    def validate() -> dict:
        return evaluate_classifier(
            model,
            val[0],
            labels=val[1],
            batch=r.val_batch,
            precision=precision,
            fmt=fmt,
            noise_sigma=r.noise_sigma,
            seed=r.seed,
        )

    def describe() -> dict:
        return {
            "architecture": r.arch,
            "kwargs": kwargs,
            "kind": "classifier",
            "num_classes": num_classes,
            "input_range": [0.0, 1.0],
            "normalization": _normalization(model),
            "sigma": r.noise_sigma,
            "objective": "cross_entropy" + (" + gaussian noise" if r.noise_sigma > 0 else ""),
        }

    hooks = Hooks(step_fn, validate if val is not None else None, describe)
    return fit(r, model, optimizer, sets=(images, labels), hooks=hooks, precision=precision,
               desc=r.arch, resume=resume)  # fmt: skip


def _load_init(r: ClassifierRecipe, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The --init checkpoint's module and constructor options, checked against the run:
    a warm restart continues the same network, so architecture and classes must match."""
    from dsmooth.models.loading import load_with_config

    found = load_with_config(r.init)
    if found is None:
        raise UserError(f"cannot load the classifier to continue from {r.init!r}.")
    model, config = found
    if config.kind not in (None, "classifier"):
        raise UserError(f"--init {r.init} holds a {config.kind}, not a classifier.")
    if config.architecture != r.arch:
        raise UserError(
            f"--init holds a {config.architecture!r} classifier but --arch is {r.arch!r}."
        )
    if r.arch_kwargs:
        raise UserError("--arch-kwargs do not apply with --init (the checkpoint has them).")
    kwargs = dict(config.kwargs or {})
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise UserError(
            f"--init has {kwargs['num_classes']} classes but the run has {num_classes}."
        )
    return model.train(), kwargs


def build(arch: str, kwargs: dict) -> torch.nn.Module:
    """A registry model, with bad constructor options reported as a user error."""
    try:
        return create(arch, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{arch} does not accept the options {kwargs} ({e}).") from None


@torch.no_grad()
def evaluate_classifier(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    labels: torch.Tensor,
    batch: int = 500,
    precision: str = "fp32",
    fmt: torch.memory_format = torch.contiguous_format,
    noise_sigma: float = 0.0,
    seed: int = 0,
) -> dict:
    """Clean accuracy and loss, and per-draw accuracy under N(0, sigma^2) noise (one draw
    per image, fixed seed so epochs compare) when `noise_sigma` > 0, on the model's device.
    The validation noise is drawn on the CPU and moved, so it is the same on every device."""
    model.eval()
    device = module_device(model)
    sums = {"val_loss": 0.0, "val_acc": 0.0, "val_noisy_acc": 0.0}
    g = loop.generator(seed, 2**31 - 1)
    for i in range(0, len(images), batch):
        x = to_float_nchw(images[i : i + batch])
        y = labels[i : i + batch].to(device)
        with autocast(precision, device):
            logits = model(x.to(device).contiguous(memory_format=fmt)).float()
            sums["val_loss"] += float(F.cross_entropy(logits, y, reduction="sum"))
            sums["val_acc"] += float((logits.argmax(1) == y).sum())
            if noise_sigma > 0:
                xn = (x + torch.randn(x.shape, generator=g) * noise_sigma).to(device)
                noisy = model(xn.contiguous(memory_format=fmt)).float()
                sums["val_noisy_acc"] += float((noisy.argmax(1) == y).sum())
    n = max(len(images), 1)
    out = {k: v / n for k, v in sums.items()}
    if noise_sigma <= 0:
        out.pop("val_noisy_acc")
    return out


def _normalization(model: torch.nn.Module) -> dict | None:
    norm = getattr(model, "normalize", None)
    if norm is None:
        return None
    return {"mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist()}
