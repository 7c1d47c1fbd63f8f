"""Which certification parameters a request may set: it may tighten, never loosen.

The server's settings are the guarantee it offers. A request may ask for a smaller
alpha, more samples (up to the server's cap), a smaller tolerance, other target radii,
and its own seed and image index (so an answer can be reproduced offline). It may not
raise alpha, use fewer samples, change sigma, the noise or the method: those would
change what the certificate means, so they get a 400 that names the parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dsmooth.certify.noise import NOISE_VERSION
from dsmooth.certify.sequential import SequentialPlan
from dsmooth.errors import UserError

METHODS = ("cp", "sequential")

#: At most this many target radii per request (each is one more stopping condition).
MAX_RADII = 32

#: Seeds and image indices stay below 2^32. The noise key hashes the list (seed, index,
#: stage) with numpy's SeedSequence, which splits larger integers into 32-bit words and
#: pads with zeros, so (0, 2^32, stage 0) and (0, 0, stage 1) would share their noise.
KEY_LIMIT = 2**32


class ParameterError(UserError):
    """A request parameter the server refuses; the message names it."""

    def __init__(self, name: str, message: str):
        super().__init__(f"parameter {name!r}: {message}")
        self.name = name


@dataclass(frozen=True)
class CertifySettings:
    """Everything that decides one image's certificate (besides the image and index)."""

    method: str
    sigma: float
    alpha: float
    n0: int
    n: int
    n_max: int
    radius: tuple[float, ...] | None
    tol: float | None
    seed: int
    noise: str

    @property
    def samples_per_image(self) -> int:
        """The most noise samples one image can take."""
        return self.n0 + (self.n if self.method == "cp" else self.n_max)

    @property
    def tolerance(self) -> float:
        """The maximal-radius tolerance in effect: `tol`, or the sequential default."""
        return SequentialPlan(
            self.sigma, self.alpha, n_max=self.n_max, radii=None, tol=self.tol
        ).tolerance

    def guarantee(self) -> dict:
        """The parameters a response reports, so a client can state or check its guarantee.

        Only the parameters that decide the certificate, each with its value in effect
        (no nulls): cp has n; sequential has n_max and either `radius` (decision mode,
        a list of floats) or `tol` (maximal-radius mode, a float, the default filled in).
        """
        out = {
            "method": self.method,
            "sigma": float(self.sigma),
            "alpha": float(self.alpha),
            "n0": int(self.n0),
        }
        if self.method == "cp":
            out["n"] = int(self.n)
        else:
            out["n_max"] = int(self.n_max)
            if self.radius is not None:
                out["radius"] = [float(r) for r in self.radius]
            else:
                out["tol"] = float(self.tolerance)
        out.update(seed=int(self.seed), noise=self.noise, noise_version=int(NOISE_VERSION))
        return out


@dataclass(frozen=True)
class Policy:
    """The server's settings and how far a request may push them."""

    settings: CertifySettings
    n_cap: int  # the most n, n0 or n_max a request may ask for

    def __post_init__(self):
        s = self.settings
        if s.method not in METHODS:
            raise UserError(f"method must be cp or sequential, got {s.method!r}.")
        largest = max(s.n0, s.n if s.method == "cp" else s.n_max)
        if self.n_cap < largest:
            raise UserError(f"the sample cap {self.n_cap} is below the server's own {largest}.")
        if isinstance(s.seed, bool) or not isinstance(s.seed, int) or not 0 <= s.seed < KEY_LIMIT:
            raise UserError(f"the seed must be an integer in [0, 2^32), got {s.seed!r}.")

    def resolve(self, params: dict | None) -> CertifySettings:
        """The settings for one request, or a ParameterError naming what would loosen them."""
        s = self.settings
        changes: dict = {}
        for name, value in dict(params or {}).items():
            if value is None or name in ("index", "timeout"):
                continue
            if name in ("sigma", "noise", "method"):
                if _same(getattr(s, name), value):
                    continue
                raise ParameterError(
                    name, f"the server certifies with {name} {getattr(s, name)!r} only."
                )
            changes[name] = self._tightened(name, value)
        return replace(s, **changes)

    def _tightened(self, name: str, value):
        """The request's value of parameter `name`, checked to tighten the server's."""
        s = self.settings
        if name == "alpha":
            alpha = _number(name, value)
            if not (0.0 < alpha <= s.alpha):
                raise ParameterError(
                    name, f"must be in (0, {s.alpha:g}] (the server's alpha), got {value}."
                )
            return alpha
        if name in ("n0", "n", "n_max"):
            return self._count(name, value)
        if name == "tol":
            if s.method == "cp":
                raise ParameterError(name, "only for the sequential method.")
            tol = _number(name, value)
            limit = s.tolerance
            if not (0.0 < tol <= limit):
                raise ParameterError(name, f"must be in (0, {limit:g}], got {value}.")
            return tol
        if name == "radius":
            return self._radii(value)
        if name == "seed":
            return key_number(name, value)
        raise ParameterError(name, "unknown parameter.")

    def _count(self, name: str, value) -> int:
        s = self.settings
        if (name == "n_max" and s.method == "cp") or (name == "n" and s.method == "sequential"):
            raise ParameterError(name, f"not a parameter of the {s.method} method.")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(name, f"must be an integer, got {value!r}.")
        floor = getattr(s, name)
        if not floor <= value <= self.n_cap:
            raise ParameterError(
                name,
                f"must be in [{floor}, {self.n_cap}] (server's value to its cap), got {value}.",
            )
        return int(value)

    def _radii(self, value) -> tuple[float, ...] | None:
        if self.settings.method == "cp":
            raise ParameterError("radius", "target radii are for the sequential method.")
        if isinstance(value, str):  # OIP v2 parameters are scalars: "0.25,0.5"
            try:
                value = [float(r) for r in value.split(",")]
            except ValueError:
                raise ParameterError("radius", f"must be numbers, got {value!r}.") from None
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_RADII:
            raise ParameterError("radius", f"give 1 to {MAX_RADII} target radii.")
        radii = tuple(_number("radius", r) for r in values)
        if any(r < 0 or math.isinf(r) for r in radii):
            raise ParameterError("radius", f"target radii must be finite and >= 0, got {value}.")
        return radii


def key_number(name: str, value, count: int = 1) -> int:
    """A seed or first image index: an integer with value + count - 1 < KEY_LIMIT."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ParameterError(name, f"must be a non-negative integer, got {value!r}.")
    if value + count > KEY_LIMIT:
        raise ParameterError(name, f"must keep every image's {name} below 2^32, got {value}.")
    return int(value)


def _same(expected, value) -> bool:
    if isinstance(expected, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == expected
    return value == expected


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ParameterError(name, f"must be a number, got {value!r}.")
    return float(value)
