"""Which certification parameters a request may set: it may tighten, never loosen.

The server's settings are the guarantee it offers. Its method object (a `Certifier` from
dsmooth.certify.methods, the registry `dsmooth certify` uses) says which of its
parameters a request may set (`Certifier.tightens`), each as TIGHTENING allows: a smaller
alpha, more samples (up to the server's cap), a smaller tolerance, other target radii.
Any request may also set its own seed and image index (so an answer can be reproduced
offline). It may not raise alpha, use fewer samples, change sigma, the noise or
the method, or name a parameter its method does not take: those would change what the
certificate means, so they get a 400 that names the parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from dsmooth.certify.methods import (
    ANY,
    LARGER,
    METHODS,
    SMALLER,
    TIGHTENING,
    Certifier,
    method_class,
)
from dsmooth.certify.noise import NOISE_VERSION
from dsmooth.errors import UserError

#: What every answer's guarantee states itself; a method's own entries may not replace
#: them (`Certifier.guarantee`).
GUARANTEED = frozenset({"method", "sigma", "alpha", "n0", "seed", "noise", "noise_version"})

#: At most this many target radii per request (each is one more stopping condition).
MAX_RADII = 32

#: Seeds and image indices stay below 2^32. The noise key hashes the list (seed, index,
#: stage) with numpy's SeedSequence, which splits larger integers into 32-bit words and
#: pads with zeros, so (0, 2^32, stage 0) and (0, 0, stage 1) would share their noise.
KEY_LIMIT = 2**32

#: How a parameter the server's method does not take is refused, naming the methods
#: that take it (any other: "not a parameter of the cp method.").
NOT_TAKEN = {"radius": "target radii are for the {} method.", "tol": "only for the {} method."}


class ParameterError(UserError):
    """A request parameter the server refuses; the message names it."""

    def __init__(self, name: str, message: str):
        super().__init__(f"parameter {name!r}: {message}")
        self.name = name


def served_method(name: str) -> type[Certifier]:
    """The registered method `name`, or a UserError: not registered, or without the
    look-by-look state the service runs."""
    cls = method_class(name)
    if not cls.servable():
        raise UserError(
            f"the certified service cannot serve the {name!r} method: it defines no "
            "look-by-look state (Certifier.resumable) beside its certify, so only "
            "`dsmooth certify` runs it."
        )
    return cls


@dataclass(frozen=True)
class CertifySettings:
    """Everything that decides one image's certificate (besides the image and index).

    The method's parameters are kept by the names requests use (certify's options; a
    method reads those it takes, so cp ignores n_max), and `certifier` is the method
    object built from them: it says what a request may tighten, how many samples an
    image takes, what the guarantee reports, and runs each image.
    """

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
    certifier: Certifier = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        cls = served_method(self.method)
        given = {"radius": self.radius, "n_max": self.n_max, "tol": self.tol}
        options = {key: value for key, value in given.items() if key in cls.options}
        method = cls.from_options(n0=self.n0, n=self.n, alpha=self.alpha, **options)
        clash = sorted(set(method.guarantee(self.sigma)) & GUARANTEED)
        if clash:
            raise UserError(
                f"the {self.method!r} method's guarantee() names {clash}, which the service "
                "itself reports; a method may add entries, not replace those."
            )
        object.__setattr__(self, "certifier", method)

    @property
    def samples_per_image(self) -> int:
        """The most noise samples one image can take."""
        return self.certifier.most_samples

    @property
    def largest_count(self) -> int:
        """The largest of n0 and the counts a request may raise: the least sample cap."""
        m = self.certifier
        counts = [m.in_effect(k, self.sigma) for k in m.tightens if TIGHTENING[k] == LARGER]
        return max([int(self.n0), *(int(c) for c in counts if c is not None)])

    def guarantee(self) -> dict:
        """The parameters a response reports, so a client can state or check its guarantee.

        Only the parameters that decide the certificate, each with its value in effect
        (no nulls): method, sigma, alpha and n0, the method's own (`Certifier.guarantee`:
        cp has n; sequential has n_max and either `radius` (decision mode, a list of
        floats) or `tol` (maximal-radius mode, a float, the default filled in)), and the
        noise's.
        """
        out = {
            "method": self.method,
            "sigma": float(self.sigma),
            "alpha": float(self.alpha),
            "n0": int(self.n0),
            **self.certifier.guarantee(self.sigma),
        }
        out.update(seed=int(self.seed), noise=self.noise, noise_version=int(NOISE_VERSION))
        return out


@dataclass(frozen=True)
class Policy:
    """The server's settings and how far a request may push them."""

    settings: CertifySettings
    n_cap: int  # the most n, n0 or n_max a request may ask for

    def __post_init__(self):
        s = self.settings
        largest = s.largest_count
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
        return replace(s, **changes)  # rebuilds the method: its own checks apply too

    def _tightened(self, name: str, value):
        """The request's value of parameter `name`, checked to be one the server's method
        lets a request set and to tighten the server's value."""
        if name == "seed":
            return key_number(name, value)
        if name not in TIGHTENING:
            raise ParameterError(name, "unknown parameter.")
        method = self.settings.certifier
        if name not in method.tightens:
            raise ParameterError(name, self._not_taken(name))
        rule, parsed = TIGHTENING[name], _parsed(name, value)
        if rule != ANY and method.in_effect(name, self.settings.sigma) is None:
            raise ParameterError(
                name, f"the server's {self.settings.method} method sets none to tighten."
            )
        if rule == SMALLER:
            limit = method.in_effect(name, self.settings.sigma)
            if not (0.0 < parsed <= limit):
                why = " (the server's alpha)" if name == "alpha" else ""
                raise ParameterError(name, f"must be in (0, {limit:g}]{why}, got {value}.")
        elif rule == LARGER:
            floor = method.in_effect(name, self.settings.sigma)
            if not floor <= parsed <= self.n_cap:
                raise ParameterError(
                    name,
                    f"must be in [{floor}, {self.n_cap}] (server's value to its cap), got {value}.",
                )
        return parsed  # ANY: any valid value

    def _not_taken(self, name: str) -> str:
        """Why the server's method refuses parameter `name`, naming the methods that take it."""
        readers = [m for m, c in METHODS.items() if name in c.tightens and c.servable()]
        if name in NOT_TAKEN and readers:
            return NOT_TAKEN[name].format(" or ".join(readers))
        return f"not a parameter of the {self.settings.method} method."


def _parsed(name: str, value):
    """A request's value of method parameter `name` as the method takes it: target radii,
    an integer count, or a number."""
    if name == "radius":
        return _radii(value)
    if name in ("n0", "n", "n_max"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(name, f"must be an integer, got {value!r}.")
        return int(value)
    return _number(name, value)


def _radii(value) -> tuple[float, ...]:
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
