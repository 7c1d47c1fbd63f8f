"""The recipe fields classifier and denoiser training share (data, optimisation
schedule, run budget), turned into what the loop needs in one place, so both trainers
check, save and resume them the same way."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from dsmooth.errors import UserError
from dsmooth.pipeline.engine import resolve_device
from dsmooth.training import loop
from dsmooth.training.data import load_training_set
from dsmooth.training.loop import LoopOptions
from dsmooth.training.schedule import SCHEDULES, lr_at


@dataclass(kw_only=True)
class TrainingRun:
    """What every training run has, whatever it trains: the optimisation schedule, the
    augmentation, precision, the device, and the run's budget and checkpointing.
    `ClassifierRecipe` and `DenoiserRecipe` add what they train and set their own learning
    rate, weight decay and validation batch.

    `device` ("cpu", "cuda", "cuda:N") is where the model, the classifiers and the noise
    live; like `threads` it belongs to the host, not to the recipe, so a run may resume on
    another device (`loop.MUTABLE`)."""

    val_data: str | None = None
    epochs: int = 90
    batch: int = 128
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    crop_pad: int = 4
    flip: bool = True
    precision: str = "auto"
    channels_last: bool = True
    device: str = "cpu"
    seed: int = 0
    max_train_images: int | None = None
    max_val_images: int | None = None
    val_batch: int = 250
    threads: int | None = None
    save_every_minutes: float = 10.0
    max_steps: int | None = None
    max_minutes: float | None = None
    progress: bool = True

    def __post_init__(self):
        # a torch.device given from Python is kept as its name: the saved recipe is JSON
        if isinstance(self.device, torch.device):
            self.device = str(self.device)


def check_lr(r: TrainingRun) -> None:
    """Raise a UserError for bad epochs, batch size or learning rate."""
    if r.epochs < 1 or r.batch < 1:
        raise UserError("epochs and batch must be at least 1.")
    if not (r.lr > 0 and math.isfinite(r.lr)):
        raise UserError(f"the learning rate must be positive, got {r.lr}.")


def run_device(r: TrainingRun) -> torch.device:
    """The torch device the run trains on, or a UserError (unknown, or CUDA on a machine
    without it): the same check as `dsmooth certify --device`."""
    return resolve_device(r.device)


def check_schedule(r: TrainingRun) -> None:
    if r.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {r.schedule!r}; choose one of {', '.join(SCHEDULES)}.")


def load_sets(r) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Training images and labels, and the validation set (None without --val-data), of a
    ClassifierRecipe or DenoiserRecipe (each declares its own `data` and `out`)."""
    images, labels = load_training_set(r.data, r.max_train_images)
    val = load_training_set([r.val_data], r.max_val_images, split="test") if r.val_data else None
    return images, labels, val


def lr_schedule(r: TrainingRun, n_images: int) -> Callable[[int, int], float]:
    """lr_fn(step, total_steps) for the loop, with the warm-up converted to steps."""
    steps_per_epoch = max(n_images // r.batch, 1)
    warmup = round(r.warmup_epochs * steps_per_epoch)

    def lr_fn(step: int, total: int) -> float:
        return lr_at(
            step,
            total,
            base_lr=r.lr,
            schedule=r.schedule,
            warmup_steps=warmup,
            milestones=r.milestones,
            gamma=r.gamma,
        )

    return lr_fn


def recipe_json(r: TrainingRun) -> dict:
    """The recipe as saved with the run, with data paths made absolute (so a resume
    started from another folder compares equal)."""
    recipe = asdict(r)
    recipe["data"] = [str(Path(p).resolve()) for p in r.data]
    recipe["val_data"] = str(Path(r.val_data).resolve()) if r.val_data else None
    return recipe


def loop_options(r, desc: str) -> LoopOptions:
    return LoopOptions(
        out=Path(r.out),
        epochs=r.epochs,
        batch=r.batch,
        seed=r.seed,
        save_every_minutes=r.save_every_minutes,
        max_steps=r.max_steps,
        max_minutes=r.max_minutes,
        progress=r.progress,
        desc=desc,
        device=run_device(r),
    )


class Hooks(NamedTuple):
    """What a trainer brings to the shared loop: one optimisation step, a validation
    (None without validation data), and the config fields of what it trained
    (architecture, kind, objective...)."""

    step: loop.StepFn
    validate: Callable[[], dict] | None
    describe: Callable[[], dict]


def fit(
    r: TrainingRun,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    sets: tuple[torch.Tensor, torch.Tensor],
    hooks: Hooks,
    precision: str,
    desc: str,
    resume: bool,
) -> str:
    """Run the loop for recipe `r`, exporting the model to `r.out` with its config after
    each epoch (the trainer's fields, then the run's: data, epochs, precision, metrics,
    recipe), and return the loop status."""
    from dsmooth.models.checkpoint import save_checkpoint

    images, labels = sets
    recipe = recipe_json(r)

    def export(prog: loop.Progress, epochs_done: float) -> None:
        config = {
            **hooks.describe(),
            "dataset": recipe["data"],
            "epochs": epochs_done,
            "precision": precision,
            "metrics": prog.history[-1] if prog.history else {},
            "recipe": recipe,
        }
        save_checkpoint(model, r.out, config)

    return loop.run_loop(
        model,
        optimizer,
        images=images,
        labels=labels,
        step_fn=hooks.step,
        validate_fn=hooks.validate or dict,  # no validation data: no metrics
        export_fn=export,
        lr_fn=lr_schedule(r, len(images)),
        opts=loop_options(r, desc=desc),
        recipe=recipe,
        resume=resume,
    )
