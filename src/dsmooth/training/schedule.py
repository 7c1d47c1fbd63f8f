"""Learning-rate schedules as pure functions of the global step.

A pure function (instead of a stateful torch scheduler) makes resuming exact by
construction: the learning rate of step k depends only on k and the recipe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dsmooth.errors import UserError

SCHEDULES = ("cosine", "step", "onecycle", "constant")


def lr_at(
    step: int,
    total_steps: int,
    *,
    base_lr: float,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    final_lr_fraction: float = 0.0,
) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    - cosine: half cosine from base_lr to base_lr * final_lr_fraction;
    - step: multiply by `gamma` at each milestone (fractions of the run, e.g. 0.5, 0.75
      as in He et al.; 1/3, 2/3 give Cohen et al.'s 30/60 of 90 epochs);
    - onecycle: linear rise from base_lr/25 over the first 30%, then cosine to ~0;
    - constant.
    An optional linear warm-up from ~0 over `warmup_steps` multiplies any schedule.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}.")
    total = max(total_steps, 1)
    t = min(step / total, 1.0)
    if schedule == "cosine":
        floor = base_lr * final_lr_fraction
        lr = floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * t))
    elif schedule == "step":
        lr = base_lr * gamma ** sum(t >= m for m in milestones)
    elif schedule == "onecycle":
        peak, start = 0.3, base_lr / 25
        if t < peak:
            lr = start + (base_lr - start) * t / peak
        else:
            lr = base_lr * 0.5 * (1 + math.cos(math.pi * (t - peak) / (1 - peak)))
    else:
        lr = base_lr
    if warmup_steps > 0 and step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr
