"""Certification methods as objects: one class per way of turning samples into a certificate.

Cohen et al.'s Clopper-Pearson CERTIFY and sequential CERTIFY differ in how they sample
and bound pA, and in what they log (`n_used`). Everything around them (the dataset loop,
Ray workers, the CLI's `--method`, the log's columns, the provenance record) is the same.
So each method is a small frozen object holding its parameters, fixed before any sample
is drawn (diffusers' scheduler pattern): `certify(smooth, x, index=i)` returns a
`Certificate`, and the class declares the extra log columns its certificates fill.

The product path talks only to this interface. Adding a method is one `Certifier`
subclass and one registry entry (`METHODS`, or `register_method` from another module):
`dsmooth certify --method NAME` then certifies with it, its columns after the reference
ones. The certified service (`dsmooth serve --smoothed`) offers the same registry: a
method that also builds its look-by-look state (`resumable`) and says which request
parameters may tighten it (`tightens`) is served too. This module does no I/O and knows
nothing of files, the CLI or HTTP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dsmooth.certify.resumable import Certification, CPCertification, SequentialCertification
from dsmooth.certify.sequential import SequentialPlan, certify_sequential, cp_lower, radius_of
from dsmooth.certify.stats import check_alpha, check_count, max_certified_radius
from dsmooth.errors import UserError

if TYPE_CHECKING:
    from dsmooth.certify.smooth import Smooth

#: Options of `dsmooth certify` a method may read besides n0, n and alpha (`Certifier.options`).
OPTIONAL = ("radius", "n_max", "tol")

# How a certified-service request may move a parameter its method lets it set
# (`Certifier.tightens`), so that the guarantee stays at least the server's.
SMALLER = "smaller"  # a number in (0, the server's value]
LARGER = "larger"  # an integer from the server's value up to the server's sample cap
ANY = "any"  # any valid value
#: Each parameter's rule: alpha and the tolerance only shrink, sample counts only grow,
#: target radii are free (they choose what is decided, at the same alpha). The rule
#: follows from what the parameter means, so it is one table; a method says which
#: parameters a request may set, not how.
TIGHTENING = {
    "alpha": SMALLER, "n0": LARGER, "n": LARGER, "n_max": LARGER, "tol": SMALLER, "radius": ANY,
}  # fmt: skip


@dataclass(frozen=True)
class Certificate:
    """One image's answer: the class or ABSTAIN (-1), its l2 radius, and the values of
    the method's own log columns (`extra`, keyed by `Certifier.columns`)."""

    prediction: int
    radius: float
    extra: Mapping[str, int | float | str] = field(default_factory=dict)


class Certifier(ABC):
    """A certification method with its parameters; subclasses are frozen dataclasses.

    Every method selects its class with `n0` samples of the selection stage first, so
    `--stop-if-misclassified` can stop an image after selection (`selection_only`).
    """

    #: The `--method` name.
    name: ClassVar[str]
    #: One line for `--method`'s help.
    summary: ClassVar[str] = ""
    #: Log columns after the reference ones, filled by `Certificate.extra`.
    columns: ClassVar[tuple[str, ...]] = ()
    #: Which of OPTIONAL the method reads (`from_options` receives them); giving another
    #: is an error rather than silently ignored.
    options: ClassVar[tuple[str, ...]] = ()
    #: Whether the method's estimation budget is `--n` (reports then show n as such).
    spends_n: ClassVar[bool] = True
    #: Which parameters a certified-service request may set (each by its TIGHTENING
    #: rule); any other a request names gets a 400. Empty by default: then a request sets
    #: only its seed, index and timeout.
    tightens: ClassVar[tuple[str, ...]] = ()

    n0: int

    @abstractmethod
    def certify(self, smooth: Smooth, x, batch_size: int = 64, *, index: int) -> Certificate:
        """Certify image `x` (noise keyed by `index`) with `smooth`'s base classifier."""

    def selection_only(self, prediction: int) -> Certificate:
        """The certificate of an image stopped after its n0 selection samples: the
        selected class at radius 0 (override to fill `columns`)."""
        return Certificate(prediction, 0.0)

    def record(self) -> dict:
        """The method's entries of a log's provenance record (dsmooth.logs.provenance): the
        options it reads are recorded from its attributes of the same names, so a log
        does not resume under other values."""
        record: dict[str, Any] = {"method": self.name, "radius": None, "n_max": None, "tol": None}
        for key in self.options:
            value = getattr(self, key, None)
            record[key] = list(value) if isinstance(value, tuple) else value
        return record

    @classmethod
    def from_options(cls, *, n0: int, n: int, alpha: float, **options) -> Certifier:
        """The method from `dsmooth certify`'s n0, n, alpha and the `options` it reads."""
        make: Callable[..., Certifier] = cls  # every subclass is a dataclass of these fields
        return make(n0=n0, n=n, alpha=alpha, **options)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Certifier:
        """The method that wrote a log, from its provenance record (`record()` inverted),
        so reports describe a log through the method instead of knowing every method."""
        options = {k: record[k] for k in cls.options if record.get(k) is not None}
        if isinstance(options.get("radius"), list):
            options["radius"] = tuple(options["radius"])
        return cls.from_options(
            n0=int(record["n0"]), n=int(record["n"]), alpha=float(record["alpha"]), **options
        )

    # How reports speak of a log this method wrote (dsmooth.analysis.settings).

    @property
    def samples(self) -> int:
        """The estimation samples at most: what caps the certified radius."""
        n = getattr(self, "n", None)
        if n is None:
            raise NotImplementedError(f"{type(self).__name__} has no n: define `samples`")
        return int(n)

    def budget(self) -> str:
        """The samples that cap the radius, for people: 'n = 500'."""
        return f"n = {self.samples}"

    def who(self) -> str:
        """What can certify no further than the cap: 'n = 500'."""
        return f"{self.name} with {self.budget()}"

    def short(self) -> str:
        """The method and its budget in a list of settings: 'n = 500'."""
        return f"{self.name}, {self.budget()}"

    def settings(self) -> str:
        """The report's method column: 'CERTIFY (Clopper-Pearson)'."""
        return self.short()

    def flags(self) -> list[str]:
        """The `dsmooth certify` flags that select this method with its options (n0, n
        and alpha are the caller's)."""
        out = ["--method", self.name]
        for key in self.options:
            value = getattr(self, key, None)
            if value is not None:
                values = value if isinstance(value, tuple) else (value,)
                out += [f"--{key.replace('_', '-')}", *(f"{v:g}" for v in values)]
        return out

    @property
    def decided_radii(self) -> tuple[float, ...] | None:
        """Target radii when the method only decides them: its radius column is then the
        largest target certified, not the largest radius (None: the radius itself)."""
        return None

    def max_radius(self, sigma: float) -> float | None:  # noqa: ARG002 (subclasses read it)
        """The largest radius the method can certify at `sigma` (every sample on the top
        class), or None when the method does not say."""
        return None

    # What the certified service (dsmooth.deploy.service) asks: it shares each batch among
    # many images, so it runs one image look by look instead of calling `certify`.

    def resumable(self, num_classes: int, sigma: float) -> Certification:
        """One image's certification as a state machine that asks for noise samples and is
        fed their class counts (dsmooth.certify.resumable); with the same noise it must
        answer as `certify` does. A method without one is not served."""
        raise NotImplementedError(f"{type(self).__name__} has no resumable certification")

    @classmethod
    def servable(cls) -> bool:
        """Whether the certified service can run the method: `resumable` is defined in the
        class that defines `certify`, or below it. A subclass that changes `certify` but
        inherits its parent's state machine would be served its parent's certificates
        under its own name, so it is not servable until it says how it runs look by look."""

        def definer(attr: str) -> type:
            return next(k for k in cls.__mro__ if attr in vars(k))

        runs = definer("resumable")
        return runs is not Certifier and issubclass(runs, definer("certify"))

    @property
    def most_samples(self) -> int:
        """The most noise samples one image can take, selection included (what the
        service's per-request sample limit counts)."""
        return int(self.n0) + self.samples

    def in_effect(self, name: str, sigma: float):  # noqa: ARG002 (subclasses read it)
        """The value of parameter `name` the method certifies with, a default filled in:
        what a request's value is checked against (`tightens`); None when the method
        has no such value (then a request cannot tighten it)."""
        return getattr(self, name, None)

    def guarantee(self, sigma: float) -> dict:
        """The method's entries of a service answer's guarantee besides alpha and n0
        (which every method reports), each with its value in effect and no nulls, so a
        client can state or check its guarantee: by default n (if it `spends_n`) and the
        options it reads, whether or not a request may tighten them."""
        out: dict[str, Any] = {"n": self.samples} if self.spends_n else {}
        for name in self.options:
            value = self.in_effect(name, sigma)
            if isinstance(value, tuple):
                out[name] = [float(v) for v in value]
            elif value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class CohenCP(Certifier):
    """Cohen et al.'s CERTIFY: select with n0 samples, bound pA with n fresh ones."""

    name: ClassVar[str] = "cp"
    summary: ClassVar[str] = "Cohen et al., fixed n"
    tightens: ClassVar[tuple[str, ...]] = ("alpha", "n0", "n")

    n0: int
    n: int
    alpha: float

    def __post_init__(self):
        check_count("n0", self.n0)
        check_count("n", self.n)
        check_alpha(self.alpha)

    def certify(self, smooth: Smooth, x, batch_size: int = 64, *, index: int) -> Certificate:
        prediction, radius = smooth.certify(x, self.n0, self.n, self.alpha, batch_size, index=index)
        return Certificate(prediction, radius)

    def resumable(self, num_classes: int, sigma: float) -> Certification:
        return CPCertification(num_classes, sigma, self.n0, self.n, self.alpha)

    def who(self) -> str:
        return self.budget()

    def short(self) -> str:
        return self.budget()

    def settings(self) -> str:
        return "CERTIFY (Clopper-Pearson)"

    def flags(self) -> list[str]:
        return []  # the default method

    def max_radius(self, sigma: float) -> float:
        # below 0 when n is too small for alpha: every image abstains
        return max(max_certified_radius(sigma, self.alpha, self.n), 0.0)


@dataclass(frozen=True)
class Sequential(Certifier):
    """Sequential CERTIFY (dsmooth.certify.sequential): stop sampling once the answer is known.

    `radii` decides those target radii; None finds the maximal radius to within `tol`
    (default 0.1 sigma). At most `n_max` estimation samples; logs `n_used` (n0 included).
    """

    name: ClassVar[str] = "sequential"
    summary: ClassVar[str] = "stop early, same guarantee, log column n_used"
    columns: ClassVar[tuple[str, ...]] = ("n_used",)
    options: ClassVar[tuple[str, ...]] = OPTIONAL
    spends_n: ClassVar[bool] = False  # n_max is its budget
    tightens: ClassVar[tuple[str, ...]] = ("alpha", "n0", "n_max", "tol", "radius")

    n0: int
    alpha: float
    n_max: int
    radii: tuple[float, ...] | None = None
    tol: float | None = None

    def __post_init__(self):
        check_count("n0", self.n0)
        if self.radii is not None:
            radii = tuple(float(r) for r in np.atleast_1d(self.radii))
            object.__setattr__(self, "radii", radii)
        # the plan's checks (alpha, n_max, radii, tol, looks) do not depend on sigma
        SequentialPlan(
            1.0, float(self.alpha), n_max=int(self.n_max), radii=self.radii, tol=self.tol
        )

    @classmethod
    def from_options(
        cls, *, n0: int, n: int, alpha: float, n_max: int | None = None, **options
    ) -> Sequential:
        """`--n-max` defaults to `--n`; `--radius` gives the target radii, `--tol` the
        maximal-radius tolerance."""
        n_max = n if n_max is None else n_max
        return cls(n0, alpha, n_max, options.get("radius"), options.get("tol"))

    def certify(self, smooth: Smooth, x, batch_size: int = 64, *, index: int) -> Certificate:
        r = certify_sequential(
            smooth, x, n0=self.n0, alpha=self.alpha, n_max=self.n_max, radius=self.radii,
            batch_size=batch_size, index=index, tol=self.tol,
        )  # fmt: skip
        return Certificate(r.prediction, r.radius, {"n_used": r.n_used})

    def selection_only(self, prediction: int) -> Certificate:
        return Certificate(prediction, 0.0, {"n_used": self.n0})

    def resumable(self, num_classes: int, sigma: float) -> Certification:
        return SequentialCertification(
            num_classes, sigma, n0=self.n0, alpha=self.alpha, n_max=self.n_max,
            radius=self.radii, tol=self.tol,
        )  # fmt: skip

    def in_effect(self, name: str, sigma: float):
        """`tol` with its default (0.1 sigma) filled in; `radius` is `radii`."""
        if name == "tol":
            return SequentialPlan(
                float(sigma), float(self.alpha), n_max=int(self.n_max), tol=self.tol
            ).tolerance
        return self.radii if name == "radius" else super().in_effect(name, sigma)

    def guarantee(self, sigma: float) -> dict:
        """n_max, and the target radii (decision mode) or the tolerance (maximal-radius
        mode): the tolerance decides nothing in decision mode."""
        if self.radii is not None:
            return {"n_max": int(self.n_max), "radius": [float(r) for r in self.radii]}
        return {"n_max": int(self.n_max), "tol": float(self.in_effect("tol", sigma))}

    def record(self) -> dict:
        radius = None if self.radii is None else list(self.radii)
        return {"method": self.name, "radius": radius, "n_max": self.n_max, "tol": self.tol}

    @property
    def samples(self) -> int:
        return int(self.n_max)

    @property
    def decided_radii(self) -> tuple[float, ...] | None:
        return self.radii or None

    def budget(self) -> str:
        return f"n_max = {self.n_max}"

    def who(self) -> str:
        return f"sequential CERTIFY with {self.budget()}"

    def short(self) -> str:
        return f"sequential, {self.budget()}"

    def settings(self) -> str:
        if self.radii:
            return f"{self.short()}; targets " + ", ".join(f"{r:g}" for r in self.radii)
        return f"{self.short()}; largest radius" + (f", tol {self.tol:g}" if self.tol else "")

    def flags(self) -> list[str]:
        out = ["--method", self.name]
        if self.radii:
            out += ["--radius", *(f"{r:g}" for r in self.radii)]
        out += ["--n-max", str(self.n_max)]
        return out + ([] if self.tol is None else ["--tol", f"{self.tol:g}"])

    def max_radius(self, sigma: float) -> float:
        """Its bound is the best over the looks of a Clopper-Pearson bound at that look's
        level, so the largest is the best over the looks with every sample on top."""
        plan = SequentialPlan(
            float(sigma), float(self.alpha), n_max=int(self.n_max), radii=self.radii, tol=self.tol
        )
        best = max(
            float(cp_lower(n, n, level))
            for n, level in zip(plan.schedule, plan.levels, strict=True)
        )
        return float(radius_of(best, plan.sigma))


#: `--method` name -> Certifier class, in `--help` order.
METHODS: dict[str, type[Certifier]] = {"cp": CohenCP, "sequential": Sequential}


def certifier_from_record(record: Mapping[str, Any] | None) -> Certifier | None:
    """The method that wrote a certify log, from its provenance record, or None: no
    record, a predict log, a method not registered here, or missing or invalid settings
    (an old or hand-edited record)."""
    if not record or record.get("command", "certify") != "certify":
        return None
    cls = METHODS.get(record.get("method") or "cp")
    if cls is None:
        return None
    try:
        return cls.from_record({"n0": 1, **record})  # records before 0.2 may lack n0
    except (KeyError, TypeError, ValueError, UserError):
        return None


def register_method(cls: type[Certifier]) -> type[Certifier]:
    """Add a Certifier subclass to METHODS under its `name` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Certifier)):
        raise TypeError(f"{cls!r} is not a Certifier subclass")
    if METHODS.get(cls.name, cls) is not cls:
        raise ValueError(f"a certification method named {cls.name!r} is already registered")
    unknown = set(cls.options) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"{cls.name}: options {sorted(unknown)} are not certify options")
    check_tightens(cls)
    if cls.columns and cls.selection_only is Certifier.selection_only:
        # else --stop-if-misclassified fails at the first misclassified image, hours in
        raise ValueError(f"{cls.name}: declares columns {list(cls.columns)} but does not "
                         "override selection_only to fill them")  # fmt: skip
    METHODS[cls.name] = cls
    return cls


def check_tightens(cls: type[Certifier]) -> None:
    """A ValueError unless `cls.tightens` names parameters of TIGHTENING the method is
    built from (a request's value must reach the method, or it would be ignored)."""
    built_from = {"alpha", "n0", *cls.options, *(("n",) if cls.spends_n else ())}
    unknown = sorted(set(cls.tightens) - built_from)
    if unknown:
        raise ValueError(f"{cls.name}: tightens {unknown}, which it is not built from")


def method_class(name: str) -> type[Certifier]:
    """The registered method class `name`, or a UserError naming the registered ones."""
    cls = METHODS.get(name)
    if cls is None:
        known = ", ".join(map(repr, METHODS))
        raise UserError(f"method must be one of {known}, got {name!r}.")
    return cls


def make_method(
    name: str,
    *,
    n0: int,
    n: int,
    alpha: float,
    radius: float | Sequence[float] | None = None,
    n_max: int | None = None,
    tol: float | None = None,
) -> Certifier:
    """The registered method `name` from `dsmooth certify`'s options.

    An option the method does not read must not be given: it would be ignored silently.
    """
    cls = method_class(name)
    given = {"radius": radius, "n_max": n_max, "tol": tol}
    for key, value in given.items():
        if value is not None and key not in cls.options:
            readers = " or ".join(m for m, c in METHODS.items() if key in c.options)
            raise UserError(f"--{key.replace('_', '-')} needs --method {readers}.")
    options = {key: value for key, value in given.items() if key in cls.options}
    return cls.from_options(n0=n0, n=n, alpha=alpha, **options)


def check_certificate(method: Certifier, certificate: Certificate) -> None:
    """A RuntimeError unless the certificate fills exactly the method's log columns."""
    if set(certificate.extra) != set(method.columns):
        raise RuntimeError(
            f"the {method.name} method returned columns {sorted(certificate.extra)} but "
            f"declares {list(method.columns)}"
        )
