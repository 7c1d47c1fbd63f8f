"""Turn whatever the user calls a classifier into a function: image batch -> labels.

A base classifier is a `torch.nn.Module` returning logits, or any callable mapping a
float [0, 1] NCHW batch to labels (N,) or scores (N, K), as numpy or torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dsmooth.errors import UserError


class Composed(nn.Module):
    """f(D(x)): a classifier behind an optional denoiser, both taking [0, 1] images."""

    def __init__(self, classifier: nn.Module, denoiser: nn.Module | None = None):
        super().__init__()
        self.classifier = classifier
        self.denoiser = denoiser

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.denoiser is not None:
            x = self.denoiser(x)
        return self.classifier(x)


def compose(classifier: Callable, denoiser: Callable | None = None) -> Callable:
    """The base classifier f(D(.)) that denoised smoothing certifies."""
    if denoiser is None:
        return classifier
    if isinstance(classifier, nn.Module) and isinstance(denoiser, nn.Module):
        return Composed(classifier, denoiser)

    def composed(x):
        return classifier(denoiser(x))

    composed.classifier, composed.denoiser = classifier, denoiser  # as Composed has them
    return composed


def module_device(fn: Callable) -> torch.device:
    """The device of a module's first parameter or buffer, else the CPU."""
    if isinstance(fn, nn.Module):
        for t in list(fn.parameters()) + list(fn.buffers()):
            return t.device
    return torch.device(getattr(fn, "device", "cpu"))


def to_labels(output, num_classes: int) -> torch.Tensor:
    """Labels (int64, CPU) from a classifier's output; checks its size against num_classes."""
    if isinstance(output, (tuple, list)) and output and not np.isscalar(output[0]):
        output = output[0]
    if isinstance(output, np.ndarray):
        output = torch.from_numpy(output)
    if not isinstance(output, torch.Tensor):
        output = torch.as_tensor(np.asarray(output))
    if output.ndim == 2:
        if output.shape[1] != num_classes:
            raise UserError(
                f"the classifier returns {output.shape[1]} scores per image but num_classes "
                f"is {num_classes}."
            )
        return output.argmax(dim=1).to("cpu", torch.int64)
    if output.ndim == 1:
        labels = output.to("cpu", torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise UserError(
                f"the classifier returned a label outside 0..{num_classes - 1} (num_classes)."
            )
        return labels
    raise UserError(
        f"the classifier must return labels (N,) or scores (N, K), got shape {tuple(output.shape)}."
    )


def label_function(base: Callable, num_classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap `base` so it maps a batch to int64 CPU labels, in eval/inference mode."""
    if isinstance(base, nn.Module):
        base.eval()

    def labels(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = base(batch)
        return to_labels(out, num_classes)

    return labels
