"""A base classifier as a function: image batch -> int64 labels, one per image, checked.

A base classifier is a `torch.nn.Module` returning logits, or any callable mapping a
float [0, 1] NCHW batch to integer labels (N,) or scores (N, K), as numpy or torch: exactly
one per image, since every answer is counted as a vote.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dsmooth.errors import UserError


def module_device(fn: Callable) -> torch.device:
    """The device of a module's first parameter or buffer, else the CPU."""
    if isinstance(fn, nn.Module):
        for t in list(fn.parameters()) + list(fn.buffers()):
            return t.device
    return torch.device(getattr(fn, "device", "cpu"))


def to_labels(output, num_classes: int, batch_size: int | None = None) -> torch.Tensor:
    """Labels (int64, CPU) from a classifier's output, or a UserError.

    A wrong-sized answer would be counted as votes (duplicated labels inflate pA; float
    probabilities cast to int vote for class 0), so exactly one integer label or one score
    row per input (`batch_size`, when known) is required.
    """
    output = output_tensor(output)
    _check_shape(output, batch_size)
    if output.ndim == 2:
        return _labels_of_scores(output, num_classes)
    return _checked_labels(output, num_classes)


def output_tensor(output) -> torch.Tensor:
    """The classifier's output as a tensor (the first item of a tuple or list of arrays;
    a list of numbers is one answer, not several outputs)."""
    if isinstance(output, (tuple, list)) and output and not np.isscalar(output[0]):
        output = output[0]
    if isinstance(output, np.ndarray):
        output = torch.from_numpy(output)
    if not isinstance(output, torch.Tensor):
        output = torch.as_tensor(np.asarray(output))
    return output


def _check_shape(output: torch.Tensor, batch_size: int | None) -> None:
    """A UserError unless `output` is labels (N,) or scores (N, K), one per image, not bool."""
    if output.ndim not in (1, 2):
        raise UserError(
            "the classifier must return labels (N,) or scores (N, K), got shape "
            f"{tuple(output.shape)}."
        )
    if batch_size is not None and output.shape[0] != batch_size:
        raise UserError(
            f"the classifier returned {output.shape[0]} {'labels' if output.ndim == 1 else 'rows'}"
            f" for {batch_size} images; it must return exactly one label or score row per image."
        )
    if output.dtype == torch.bool:
        raise UserError(
            "the classifier returned booleans; return int labels (N,) or scores (N, K)."
        )


def _labels_of_scores(output: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The top class of each score row (N, K), K being num_classes."""
    if output.shape[1] != num_classes:
        raise UserError(
            f"the classifier returns {output.shape[1]} scores per image but num_classes "
            f"is {num_classes}."
        )
    return output.argmax(dim=1).to("cpu", torch.int64)


def _checked_labels(output: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels (N,) as int64 on the CPU, each in 0..num_classes - 1."""
    if output.is_floating_point() or output.is_complex():
        raise UserError(
            f"the classifier returned a 1-D {str(output.dtype).removeprefix('torch.')} array; "
            "labels must be integers (return scores as (N, K), not probabilities as (N,))."
        )
    labels = output.to("cpu", torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise UserError(
            f"the classifier returned a label outside 0..{num_classes - 1} (num_classes)."
        )
    return labels


def label_function(base: Callable, num_classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap `base` so it maps a batch to int64 CPU labels, in eval/inference mode."""
    if isinstance(base, nn.Module):
        base.eval()

    def labels(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = base(batch)
        return to_labels(out, num_classes, len(batch))

    return labels
