"""The denoising grid: clean, noisy and denoised images with the classifier's labels.

The noise shown for image i at a given sigma and seed is the first selection sample
that certification with that seed draws for that image (dsmooth.certify.noise, stage
STAGE_SELECT), so the picture shows what the base classifier actually saw. Used by
`dsmooth visualize` and by `dsmooth report`'s sample images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dsmooth.data.images import parse_class_names
from dsmooth.errors import UserError, brief
from dsmooth.sigma import check_sigma

MAX_IMAGES = 32


MAX_SIGMAS = 8

#: The Greek sigma of the column titles.
_SIGMA = "\N{GREEK SMALL LETTER SIGMA}"


def class_names(spec: str | None, data_classes: Sequence[str]) -> list[str] | None:
    if spec is None:
        return list(data_classes) or None
    return parse_class_names(spec)


def _call(model: Callable, x, what: str):
    import torch

    try:
        with torch.inference_mode():
            out = model(x)
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"the {what} failed on a batch of shape {tuple(x.shape)} ({brief(e)})."
        ) from None
    return out


def _to_image_tensor(out, like):
    import torch

    t = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
    if tuple(t.shape) != tuple(like.shape):
        raise UserError(
            f"the denoiser returned shape {tuple(t.shape)} for input {tuple(like.shape)}; "
            "a denoiser must keep the image shape."
        )
    return t.to(like.device, torch.float32)


def _check_request(data, indices: Sequence[int], sigmas: Sequence[float]) -> None:
    if not indices:
        raise UserError("give at least one image index.")
    if len(indices) > MAX_IMAGES or len(sigmas) > MAX_SIGMAS:
        raise UserError(f"show at most {MAX_IMAGES} images and {MAX_SIGMAS} sigmas at once.")
    bad = [i for i in indices if not 0 <= i < len(data)]
    if bad:
        raise UserError(f"image index {bad[0]} is outside 0..{len(data) - 1}.")
    for s in sigmas:
        check_sigma(s)


def _probe_classes(classifier: Callable, x, data) -> int:
    """The classifier's score width on one image, or the data's class count (at least 2)
    for a classifier that returns labels."""
    out = _call(classifier, x[:1], "classifier")
    shape = tuple(getattr(out, "shape", ()))
    return int(shape[1]) if len(shape) == 2 else max(data.num_classes, 2)


def denoising_grid(
    classifier: Callable,
    data,
    *,
    indices: Sequence[int],
    sigmas: Sequence[float],
    denoiser: Callable | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    names: Sequence[str] | None = None,
    device: str = "cpu",
    warn: Callable[[str], None] | None = None,
):
    """Figure: one row per image; columns clean, then per sigma x + d (and D(x + d)), the
    denoiser set up for each sigma (`dsmooth.pipeline.compose.denoiser_at_sigma`; a training-sigma
    mismatch is said through `warn`)."""
    import torch

    from dsmooth.analysis.plots import image_grid
    from dsmooth.certify.base_classifier import to_labels
    from dsmooth.certify.noise import STAGE_SELECT, NoiseStream
    from dsmooth.pipeline.compose import denoiser_at_sigma

    _check_request(data, indices, sigmas)
    device = torch.device(device)
    x = data.batch(indices).to(device)
    labels = [int(data.labels[i]) for i in indices]
    if num_classes is None:
        num_classes = _probe_classes(classifier, x, data)

    def predict(batch) -> list[int]:
        return to_labels(_call(classifier, batch, "classifier"), num_classes, len(batch)).tolist()

    def name(c: int) -> str:
        return names[c] if names and 0 <= c < len(names) else str(c)

    def hwc(batch) -> list[np.ndarray]:
        return list(batch.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy())

    columns, panels, preds = ["clean"], [hwc(x)], [predict(x)]
    for sigma in sigmas:
        noise = torch.stack(
            [
                NoiseStream(
                    x.shape[1:], sigma, seed=seed, index=i, stage=STAGE_SELECT, device=device
                ).take(1)[0]
                for i in indices
            ]
        )
        noisy = x + noise
        columns.append(f"x + d, {_SIGMA}={sigma:g}")
        panels.append(hwc(noisy))
        preds.append(predict(noisy))
        if denoiser is not None:
            at_sigma = denoiser_at_sigma(denoiser, sigma, warn=warn)  # a diffusion model's t*
            denoised = _to_image_tensor(_call(at_sigma, noisy, "denoiser"), noisy)
            columns.append(f"D(x + d), {_SIGMA}={sigma:g}")
            panels.append(hwc(denoised))
            preds.append(predict(denoised))
    rows = range(len(indices))
    images = [[panel[r] for panel in panels] for r in rows]
    captions = [[f"pred: {name(p[r])}" for p in preds] for r in rows]
    colors = [["tab:green" if p[r] == labels[r] else "tab:red" for p in preds] for r in rows]
    row_titles = [f"#{i}: {name(y)}" for i, y in zip(indices, labels, strict=True)]
    return image_grid(images, captions, column_titles=columns, row_titles=row_titles, colors=colors)
