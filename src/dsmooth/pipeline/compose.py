"""Turn whatever the user calls a classifier into a function: image batch -> labels.

A base classifier is a `torch.nn.Module` returning logits, or any callable mapping a
float [0, 1] NCHW batch to integer labels (N,) or scores (N, K), as numpy or torch: exactly
one per image, since every answer is counted as a vote.

`compose` builds f(D(.)) for one noise level. A denoiser is trained for (or, like a
diffusion model, conditioned on) the sigma it removes, so the sigma being certified is
handed to it here, through one hook: a denoiser with `at_sigma(sigma)` returns the module
to run at that sigma; any other denoiser is used unchanged. A dsmooth checkpoint's config
records its training sigma, and a mismatch is said once, here, for every command.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

from dsmooth.errors import UserError
from dsmooth.models.config import ModelConfig
from dsmooth.sigma import check_sigma


class SigmaMismatchWarning(UserWarning):
    """A denoiser runs at another noise level than its checkpoint says it was trained for."""


def sigma_aware(denoiser: Callable) -> bool:
    """Whether `denoiser` takes the noise level: it has an `at_sigma(sigma)` method."""
    return callable(getattr(denoiser, "at_sigma", None))


def trained_sigma(denoiser: Callable) -> float | None:
    """The training sigma a dsmooth denoiser's config records (`.dsmooth_config`), or None."""
    config = getattr(denoiser, "dsmooth_config", None)
    if isinstance(config, ModelConfig):  # what dsmooth's loaders attach: checked
        kind, sigma = config.kind, config.sigma
    elif isinstance(config, Mapping):  # a plain dict attached by hand
        kind, sigma = config.get("kind"), config.get("sigma")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            return None
    else:
        return None
    return float(sigma) if kind == "denoiser" and sigma is not None else None


def _warn(message: str) -> None:
    warnings.warn(message, SigmaMismatchWarning, stacklevel=5)  # compose's caller


def check_trained_sigma(
    denoiser: Callable,
    sigma: float,
    *,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Warn through `warn` (default: a SigmaMismatchWarning), or with `strict` raise a
    UserError, when the denoiser's config records another training sigma (relative
    tolerance 1e-6). The certificate stays valid at any sigma, but D then sees noise it
    was not trained to remove and certified accuracy usually collapses."""
    trained = trained_sigma(denoiser)
    if trained is None or math.isclose(trained, float(sigma), rel_tol=1e-6):
        return
    mismatch = f"the denoiser was trained for sigma {trained:g} but is used at sigma {sigma:g}"
    if strict:
        raise UserError(
            f"{mismatch}; use a denoiser trained for sigma {sigma:g}, or allow the mismatch "
            "(drop --strict)."
        )
    (warn or _warn)(f"{mismatch}; certificates stay valid but are likely much weaker")


def denoiser_at_sigma(
    denoiser: Callable,
    sigma: float,
    *,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Callable:
    """The denoiser to run at noise level `sigma`: checked against its training sigma
    (`check_trained_sigma`), then `denoiser.at_sigma(sigma)` for a sigma-aware one (a
    diffusion model picks its timestep), else `denoiser` itself, unchanged."""
    check_sigma(sigma)
    check_trained_sigma(denoiser, sigma, strict=strict, warn=warn)
    if not sigma_aware(denoiser):
        return denoiser
    chosen = denoiser.at_sigma(float(sigma))
    if chosen is None:
        raise UserError(
            f"{type(denoiser).__name__}.at_sigma({sigma:g}) returned None; it must return the "
            "denoiser to run at that sigma (itself, when it configures itself in place)."
        )
    return chosen


class Composed(nn.Module):
    """f(D(x)): a classifier behind an optional denoiser, both taking [0, 1] images.

    `sigma` is the noise level the denoiser was set up for (None: used as given); a plain
    attribute, so the state dict, and the checksums logs record, stay those of f and D.
    """

    def __init__(
        self, classifier: nn.Module, denoiser: nn.Module | None = None, sigma: float | None = None
    ):
        super().__init__()
        self.classifier = classifier
        self.denoiser = denoiser
        self.sigma = sigma

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"  # part of a converted graph's cache key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.denoiser is not None:
            x = self.denoiser(x)
        return self.classifier(x)


def compose(
    classifier: Callable,
    denoiser: Callable | None = None,
    sigma: float | None = None,
    *,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Callable:
    """The base classifier f(D(.)) that denoised smoothing certifies at noise level `sigma`.

    With `sigma` (give the sigma you certify at), the denoiser is checked against the
    training sigma its checkpoint records (a mismatch warns through `warn`, default a
    SigmaMismatchWarning, or with `strict` is a UserError) and a sigma-aware denoiser (one
    with `at_sigma(sigma)`, e.g. a diffusion model choosing its timestep) is replaced by
    the module it returns for that sigma. Without `sigma` the denoiser runs as given: an
    ordinary denoiser the same either way, a sigma-aware one only if already set up (a
    DiffusionDenoiser built with `sigma=`; otherwise it refuses to run).
    """
    if denoiser is None:
        return classifier
    if sigma is not None:
        denoiser = denoiser_at_sigma(denoiser, sigma, strict=strict, warn=warn)
    if isinstance(classifier, nn.Module) and isinstance(denoiser, nn.Module):
        return Composed(classifier, denoiser, sigma)

    def composed(x):
        return classifier(denoiser(x))

    # the attributes Composed has
    composed.classifier, composed.denoiser, composed.sigma = classifier, denoiser, sigma
    return composed
