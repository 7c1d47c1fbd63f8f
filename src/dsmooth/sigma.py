"""The noise level sigma, checked once for every layer: models, training and certification.

sigma is in [0, 1] pixel units, like the images (docs/design.md, the pixel-space rule).
"""

from __future__ import annotations

import math

from dsmooth.errors import UserError

#: Above this, sigma is surely in the wrong units: noise ten times the whole pixel range.
MAX_SIGMA = 10.0


def check_sigma(sigma, name: str = "sigma") -> float:
    """sigma as a float, or a UserError: it must be positive and finite, and in [0, 1]
    pixel units (0.25 is 64/255), so a 0-255 value such as 64 is refused with a hint."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise UserError(f"{name} must be a positive number, got {sigma}.")
    if not math.isfinite(sigma):
        raise UserError(f"{name} must be a positive number, got {sigma}.")
    if sigma > MAX_SIGMA:
        raise UserError(
            f"{name} {sigma:g} is far beyond the pixel range: sigma is in [0, 1] pixel units "
            f"(0.25 is 64/255); if {sigma:g} is in 0-255 units, use {sigma / 255:.4g}."
        )
    return float(sigma)
