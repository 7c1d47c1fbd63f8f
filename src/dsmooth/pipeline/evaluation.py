"""Plain (not smoothed) accuracy of a base classifier f(D(.)): on clean images and under
one draw of Gaussian noise per image. A quick check that imported weights are right and
a denoiser helps, before spending hours on certification."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dsmooth.certify.base_classifier import module_device
from dsmooth.certify.noise import normal
from dsmooth.data.images import ImageSet
from dsmooth.errors import UserError
from dsmooth.sigma import check_sigma

#: Noise stage of evaluation draws (distinct from the certification stages 0-2, 1000+).
STAGE_EVALUATE = 3


def image_noise(shape: Sequence[int], sigma: float, seed: int, index: int) -> torch.Tensor:
    """N(0, sigma^2) noise for image `index`, independent of batching."""
    return normal(tuple(shape), sigma, seed=seed, index=index, stage=STAGE_EVALUATE)


def _predict(model: Callable, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    out = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)
    if out.ndim == 2:
        return out.argmax(1).cpu()
    if out.ndim == 1:
        return out.to("cpu", torch.int64)
    raise UserError(f"the classifier must return labels or scores, got shape {tuple(out.shape)}.")


@torch.inference_mode()
def evaluate_accuracy(
    model: Callable,
    data: ImageSet,
    *,
    sigma: float | None = None,
    indices: Sequence[int] | None = None,
    batch: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """{'n', 'clean_correct', 'clean_accuracy'} and, with sigma, the same for noisy inputs
    x + N(0, sigma^2) (one draw per image, seeded by (seed, index); not clipped, as in
    smoothing)."""
    if sigma is not None:
        check_sigma(sigma)
    if batch < 1:
        raise UserError(f"batch must be at least 1, got {batch}.")
    if isinstance(model, torch.nn.Module):
        model.eval()
    device = module_device(model)
    idx = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64)
    clean = noisy = 0
    for start in tqdm(
        range(0, len(idx), batch), desc="evaluate", unit="batch", disable=not progress
    ):
        chunk = idx[start : start + batch]
        x = data.batch(chunk)
        y = torch.from_numpy(data.labels[chunk])
        clean += int((_predict(model, x.to(device)) == y).sum())
        if sigma is not None:
            noise = torch.stack([image_noise(x.shape[1:], sigma, seed, int(i)) for i in chunk])
            noisy += int((_predict(model, (x + noise).to(device)) == y).sum())
    n = len(idx)
    result = {"n": n, "clean_correct": clean, "clean_accuracy": clean / n if n else float("nan")}
    if sigma is not None:
        result.update(
            sigma=sigma, noisy_correct=noisy, noisy_accuracy=noisy / n if n else float("nan")
        )
    return result
