"""Training data: one or more datasets concatenated into one uint8 NHWC tensor.

Kept as uint8 in memory (CIFAR-10 train: 150 MB) and converted per batch, after
augmentation, to float32 NCHW in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dsmooth.data.datasets import load_dataset
from dsmooth.errors import UserError


def load_training_set(
    paths: Sequence[str], max_images: int | None = None, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, H, W, C) and int64 labels of `paths` joined in order (first `max_images`).

    Each path is anything `dsmooth.data.datasets.load_dataset` reads (npz, cifar-10-batches-py,
    `cifar10`, image folders); `split` picks train or test where a source holds both."""
    if not paths:
        raise UserError("no training data given.")
    parts = [load_dataset(p, split=split) for p in paths]
    shapes = {p.images.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise UserError(f"the datasets have different image shapes {sorted(shapes)}.")
    dtypes = {p.images.dtype for p in parts}
    images = np.concatenate([p.images for p in parts]) if len(parts) > 1 else parts[0].images
    if len(dtypes) > 1:
        images = np.concatenate([_as_float(p.images) for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    if max_images is not None:
        if max_images < 1:
            raise UserError(f"the image limit must be at least 1, got {max_images}.")
        images, labels = images[:max_images], labels[:max_images]
    if images.shape[-1] != 3:
        images = _to_rgb(images)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.copy())


def _as_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images


def _to_rgb(images: np.ndarray) -> np.ndarray:
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return images[..., :3]  # drop alpha
