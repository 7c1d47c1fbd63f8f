"""The smoothed classifier g(x) = argmax_c P[f(x + d) = c], d ~ N(0, sigma^2 I).

PREDICT and CERTIFY follow Cohen, Rosenfeld and Kolter (ICML 2019), Algorithms 1-2.
This module knows nothing of files or model formats: it takes a base classifier that
maps a float [0, 1] NCHW batch to labels or scores, and returns numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from dsmooth.certify import stats
from dsmooth.certify.base_classifier import label_function, module_device
from dsmooth.certify.methods import make_method
from dsmooth.certify.noise import (
    STAGE_ESTIMATE,
    STAGE_PREDICT,
    STAGE_SELECT,
    BlockStream,
    NoiseStream,
)
from dsmooth.certify.stats import check_count
from dsmooth.errors import UserError
from dsmooth.sigma import check_sigma

ABSTAIN = -1

#: How noise is drawn (docs/certification.md): "gaussian" adds float noise to x, as Cohen
#: et al. do; "lattice" adds the Gaussian rounded to the 1/255 lattice, sampled exactly,
#: which is sound in floating point for 8-bit images (dsmooth.certify.lattice).
NOISE_MODES = ("gaussian", "lattice")


def check_image(x) -> torch.Tensor:
    """A float32 CHW tensor in [0, 1], or a UserError saying what is wrong."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.ndim != 3:
        raise UserError(f"an image must have shape (C, H, W), got {tuple(x.shape)}.")
    x = x.to(torch.float32)
    if torch.isnan(x).any():
        raise UserError("the image contains NaN values.")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise UserError(
            f"pixel values must lie in [0, 1] (noise is added in pixel space), got "
            f"[{lo:g}, {hi:g}]; divide 0-255 data by 255."
        )
    return x


class Smooth:
    """A smoothed classifier around `base_classifier` with noise level `sigma`.

    Randomness is derived from (seed, index, stage), so `certify(x, ..., index=i)`
    gives the same answer whatever the batch size or the worker that runs it. `index` is a
    required keyword: a default would give every image the same noise. With
    `noise="lattice"` the images must be 8-bit (every pixel m / 255), and the certificate
    is exact in floating point for f after rounding to that lattice (dsmooth.certify.lattice).
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: Callable,
        num_classes: int,
        sigma: float,
        seed: int = 0,
        noise: str = "gaussian",
    ):
        sigma = check_sigma(sigma)
        if int(num_classes) < 2:
            raise UserError(f"num_classes must be at least 2, got {num_classes}.")
        if noise not in NOISE_MODES:
            raise UserError(f"noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}.")
        self.noise = noise
        self.base_classifier = base_classifier
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.device = module_device(base_classifier)
        self._labels = label_function(base_classifier, self.num_classes)
        self._drawn: tuple | None = None  # see reusing()

    def predict(self, x, n: int, alpha: float, batch_size: int = 64, *, index: int) -> int:
        """Top class, or ABSTAIN if the top two counts do not differ at level alpha."""
        check_count("n", n)
        stats.check_alpha(alpha)
        counts = self.sample_counts(x, n, batch_size, index=index, stage=STAGE_PREDICT)
        top2 = np.argsort(-counts, kind="stable")[:2]
        count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
        if stats.binomial_pvalue(count1, count1 + count2) > alpha:
            return ABSTAIN
        return int(top2[0])

    def certify(
        self,
        x,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int = 64,
        *,
        index: int,
        method: str = "cp",
        radius: float | Sequence[float] | None = None,
        n_max: int | None = None,
        tol: float | None = None,
    ) -> tuple[int, float]:
        """(class, l2 radius) certified with probability >= 1 - alpha, or (ABSTAIN, 0.0).

        The class is selected with n0 samples; its probability is bounded with n fresh
        samples (never reusing the selection samples). Another `method` from the registry
        (dsmooth.certify.methods) certifies instead: "sequential" samples in rounds and stops
        early (docs/sequential.md), deciding the target `radius` (one or more radii), or
        with `radius=None` finding the radius to within `tol`, using at most `n_max`
        (default: n) estimation samples.
        """
        if method != "cp":  # another certification method (dsmooth.certify.methods)
            check_count("n", n)
            certifier = make_method(
                method, n0=n0, n=n, alpha=alpha, radius=radius, n_max=n_max, tol=tol
            )
            certificate = certifier.certify(self, x, batch_size, index=index)
            return certificate.prediction, certificate.radius
        check_count("n0", n0)
        check_count("n", n)
        stats.check_alpha(alpha)
        counts_selection = self.sample_counts(x, n0, batch_size, index=index, stage=STAGE_SELECT)
        c_hat = int(counts_selection.argmax())
        counts_estimation = self.sample_counts(x, n, batch_size, index=index, stage=STAGE_ESTIMATE)
        p_lower = stats.lower_confidence_bound(int(counts_estimation[c_hat]), n, alpha)
        if p_lower < 0.5:
            return ABSTAIN, 0.0
        return c_hat, stats.radius(self.sigma, p_lower)

    @contextmanager
    def reusing(self, x, counts: np.ndarray, *, index: int, stage: int, num: int) -> Iterator[None]:
        """Within the block, the draw `sample_counts(x, num, ..., index=, stage=)` of this
        very image object returns `counts` instead of sampling again.

        The noise of a draw depends only on (seed, index, stage, sample number), so those
        counts are that draw: `--stop-if-misclassified` looks at the selection draw first,
        and CERTIFY then reuses it instead of spending n0 more samples on the same noise.
        """
        counts = np.asarray(counts, dtype=np.int64)
        check_counts(counts, int(num), self.num_classes)
        self._drawn = (x, int(index), int(stage), int(num), counts.copy())
        try:
            yield
        finally:
            self._drawn = None

    def sample_counts(
        self, x, num: int, batch_size: int, *, index: int, stage: int = STAGE_ESTIMATE
    ) -> np.ndarray:
        """Class counts of f(x + d) over `num` noise draws (int64 array of num_classes).

        The counts must add up to `num`: every bound downstream assumes n Bernoulli trials.
        """
        check_count("batch_size", batch_size)
        drawn = getattr(self, "_drawn", None)
        if drawn is not None and drawn[0] is x and drawn[1:4] == (index, stage, int(num)):
            return drawn[4].copy()
        x = check_image(x).to(self.device)
        if self.noise == "lattice":
            from dsmooth.certify.lattice import LatticeNoiseStream, from_levels, to_levels

            levels = to_levels(x).to(torch.int32)
            stream: BlockStream = LatticeNoiseStream(
                x.shape, self.sigma, seed=self.seed, index=index, stage=stage, device=self.device
            )

            def noisy(m: int) -> torch.Tensor:
                return from_levels(stream.take(m).to(torch.int32).add_(levels))
        else:
            stream = NoiseStream(
                x.shape, self.sigma, seed=self.seed, index=index, stage=stage, device=self.device
            )

            def noisy(m: int) -> torch.Tensor:
                return stream.take(m).add_(x)

        counts = torch.zeros(self.num_classes, dtype=torch.int64)
        remaining = int(num)
        while remaining > 0:
            m = min(batch_size, remaining)
            batch = noisy(m)
            counts += torch.bincount(self._labels(batch), minlength=self.num_classes)
            remaining -= m
        check_counts(counts, int(num), self.num_classes)
        return counts.numpy()


def check_counts(counts, num: int, num_classes: int) -> None:
    """A RuntimeError unless `counts` are num_classes non-negative votes adding up to num.

    The base classifier's output is checked per batch (`base_classifier.to_labels`); this
    is the last line of defence before the counts become a certificate.
    """
    counts = torch.as_tensor(counts)
    if counts.shape != (num_classes,) or int(counts.min()) < 0 or int(counts.sum()) != num:
        raise RuntimeError(
            f"class counts {counts.tolist()} do not add up to the {num} samples drawn; "
            "refusing to certify from them."
        )
