"""From specs to a running f(D(.)): models loaded and composed, data loaded, the engine set up.

The steps every command and runner shares on the way to a `Smooth`, with plain
parameters, so that a `CertifyJob`, the Ray workers, the service and the commands that
run a classifier without smoothing (evaluate, visualize) all build the same thing.
`smooth_for` is the one recipe from a base classifier to a fast `Smooth`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from dsmooth.certify.base_classifier import to_labels
from dsmooth.certify.smooth import Smooth, check_count
from dsmooth.data.images import ImageSet, match_classes, parse_class_names
from dsmooth.data.load import load_images
from dsmooth.errors import UserError, brief
from dsmooth.pipeline import engine
from dsmooth.pipeline.compose import compose
from dsmooth.sources import load_model


def warn_sigma(message: str, hint: str = " (--strict makes this an error)") -> None:
    """A denoiser's sigma mismatch as the commands print it: one line on stderr (`hint`
    is for runs that have a strict switch)."""
    print(f"warning: {message}{hint}.", file=sys.stderr)


def load_data(spec, size: int | None = None) -> ImageSet:
    """The images of `spec` (dsmooth.data.load.load_images); none at all is a UserError."""
    data = load_images(spec, size)
    if len(data) == 0:
        raise UserError(f"{spec} contains no images.")
    return data


def load_base(
    classifier: str,
    denoiser: str | None = None,
    *,
    device: torch.device | str = "cpu",
    sigma: float | None = None,
    strict: bool = False,
    channels: int | None = None,
    options: Mapping | None = None,
    warn: Callable[[str], None] = warn_sigma,
):
    """f(D(.)) from a classifier spec (loaded with `options`: foreign weights, input
    contract, remote client) and an optional denoiser spec, composed at `sigma` when
    given (dsmooth.pipeline.compose.compose: the training sigma checked, `strict` makes a mismatch
    an error), and checked against the images' `channels` when given."""
    device = torch.device(device)
    f = load_model(classifier, role="classifier", device=device, **dict(options or {}))
    d = load_model(denoiser, role="denoiser", device=device) if denoiser else None
    if channels is not None:
        from dsmooth.sources.contract import check_channels

        check_channels(f, channels, "classifier")
        if d is not None:
            check_channels(d, channels, "denoiser")
    return compose(f, d, sigma, strict=strict, warn=warn)


def _probe(base, data: ImageSet, device):
    x = data.image(0)[None].to(device)
    with torch.inference_mode():
        try:
            return base(x)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"the model failed on an image of shape {tuple(x.shape)} ({brief(e)})."
            ) from None


def infer_num_classes(base, data: ImageSet, device) -> int:
    """The classifier's score width, or the dataset's class count for label outputs."""
    out = _probe(base, data, device)
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) == 2:
        return int(shape[1])
    return max(data.num_classes, 2)


def probe_output_size(base, data: ImageSet, device, num_classes: int) -> None:
    """A UserError when the classifier's output does not fit `num_classes`."""
    to_labels(_probe(base, data, device), num_classes, 1)


def align_labels(data: ImageSet, num_classes: int, class_names: str | None = None) -> None:
    """The data's labels in the classifier's label order (dsmooth.data.images.match_classes);
    `class_names` is the comma-separated spec, or 'cifar10'."""
    match_classes(data, num_classes, parse_class_names(class_names) if class_names else None)


def check_labels(data: ImageSet, num_classes: int) -> None:
    """A UserError when a label does not name one of the classifier's classes."""
    if len(data.labels) and int(data.labels.max()) >= num_classes:
        raise UserError(
            f"the data has label {int(data.labels.max())} but the classifier has "
            f"{num_classes} classes."
        )


def is_eight_bit(data) -> bool:
    """Whether every image is m / 255 by construction: uint8 arrays and image files."""
    images = getattr(data, "images", None)
    return images is None or images.dtype == np.uint8


def resolve_noise(asked: str, data, spec="the data") -> str:
    """Noise 'auto' is lattice for 8-bit data and gaussian otherwise; asking for lattice
    noise on float data is refused, since only 8-bit images sit on the lattice."""
    eight_bit = is_eight_bit(data)
    if asked == "auto":
        return "lattice" if eight_bit else "gaussian"
    if asked == "lattice" and not eight_bit:
        raise UserError(
            f"--noise lattice needs 8-bit images, but {spec} holds float images; "
            "use --noise gaussian, or store the images as uint8."
        )
    return asked


def calibration_for(data: ImageSet, precision: str, sigma: float, seed: int, count: int = 300):
    """int8's calibration set: the first `count` images at `sigma`, or None."""
    if precision != "int8":
        return None
    from dsmooth.pipeline.openvino_backend import Calibration

    check_count("calibration-images", count)
    images = torch.stack([data.image(i) for i in range(min(count, len(data)))])
    return Calibration(images, float(sigma), int(seed))


def smooth_for(
    base,
    num_classes: int,
    *,
    sigma: float,
    image_shape: Sequence[int],
    options: engine.EngineOptions,
    seed: int = 0,
    noise: str = "gaussian",
    batch: int | str = 64,
    first: int | None = None,
    calibration=None,
    warm_up: bool = True,
    report: Callable[[str], None] = engine.stderr_report,
) -> tuple[Smooth, int]:
    """The one recipe from f(D(.)) to a fast Smooth: the engine set up with `options`,
    `batch` 'auto' measured, the graph compiled for the first batches (`first` samples,
    then `batch`) before any row is timed. Returns the Smooth and the batch size."""
    image_shape = tuple(image_shape)
    base = engine.accelerate(
        base, options, report=report, image_shape=image_shape, calibration=calibration
    )
    if batch == "auto":
        batch = engine.choose_batch_size(base, image_shape, report=report)
    if warm_up and isinstance(base, engine.EngineModule):
        base.warm_up(image_shape, (min(first or batch, batch), batch))
    return Smooth(base, num_classes, sigma, seed=seed, noise=noise), int(batch)


def engine_for(
    base,
    options: engine.EngineOptions,
    *,
    samples: int,
    image_shape: Sequence[int],
    data: ImageSet | None = None,
    sigma: float = 0.0,
    seed: int = 0,
    calibration_images: int = 300,
    warm_up: Sequence[int] = (),
    report: Callable[[str], None] = engine.stderr_report,
):
    """f(D(.)) on the engine, outside a Smooth (evaluate, the certification service):
    `options` settled for about `samples` forward passes of one image (`engine.for_work`),
    int8 calibrated on the first `calibration_images` images of `data` at `sigma` (without
    `data`, no calibration), and the graph compiled for the `warm_up` batch sizes."""
    image_shape = tuple(image_shape)
    options = engine.for_work(options, samples)
    calibration = None
    if data is not None:
        device = engine.resolve_device(options.device)
        precision = engine.resolve_precision(options.precision, device)
        calibration = calibration_for(data, precision, sigma, seed, calibration_images)
    base = engine.accelerate(
        base, options, report=report, image_shape=image_shape, calibration=calibration
    )
    if warm_up and isinstance(base, engine.EngineModule):
        base.warm_up(image_shape, tuple(warm_up))
    return base
