"""Per-channel input normalisation as a layer, so models take [0, 1] pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers saved with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class NormalizedClassifier(nn.Module):
    """A classifier with its normalisation inside: input in [0, 1], output logits."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

#: The randomized-smoothing code bases (Cohen et al., Salman et al.) use this CIFAR-10 std.
COHEN_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
COHEN_CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Named normalisations accepted wherever a mean/std is asked for (`--mean imagenet`).
PRESETS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cohen_cifar10": (COHEN_CIFAR10_MEAN, COHEN_CIFAR10_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def parse_stats(value, which: str) -> tuple[float, ...] | None:
    """A mean or std from a preset name ("imagenet"), "a,b,c", or numbers; None stays None."""
    from dsmooth.errors import UserError

    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower()
        if key in PRESETS:
            return tuple(PRESETS[key][0 if which == "mean" else 1])
        parts = [p for p in value.replace(" ", ",").split(",") if p]
    else:
        parts = list(value)
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        numbers = ()
    if not numbers:
        raise UserError(
            f"{which} must be comma-separated numbers or one of {', '.join(PRESETS)}; "
            f"got {value!r}."
        )
    if which == "std" and min(numbers) <= 0:
        raise UserError(f"std values must be positive, got {value!r}.")
    return numbers
