"""What a log's provenance record says, for people: its settings, a command with them,
its class names, and the largest radius those settings can certify.

The record (`LOG.json`, dsmooth.logs.provenance) decides a log's rows; this module only reads
it. Logs without one (older versions, the papers' released logs) have none of this, and
every function here answers None or nothing for them rather than guessing.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, fields

from dsmooth.analysis.tables import Report, Series
from dsmooth.certify.methods import Certifier, Sequential, certifier_from_record
from dsmooth.errors import UserError

#: The mark of a radius column above the largest radius its rows' settings can certify.
DAGGER = "\u2020"


# ----------------------------------------------------------------------------- radius cap


@dataclass(frozen=True)
class RadiusCap:
    """The largest radius a run can certify: every estimation sample on the top class."""

    radius: float
    sigma: float
    alpha: float
    certifier: Certifier  # the method that wrote the log, with its settings

    @property
    def samples(self) -> int:
        """n, or n_max for sequential CERTIFY."""
        return self.certifier.samples

    @property
    def method(self) -> str:
        return self.certifier.name

    @property
    def budget(self) -> str:
        return self.certifier.budget()

    @property
    def shown(self) -> str:
        """The cap rounded down to 3 decimals, so a radius printed above it is above it."""
        return f"{math.floor(self.radius * 1000 + 1e-9) / 1000:.3f}"

    @property
    def who(self) -> str:
        """What can certify no further, e.g. 'n = 500' or 'sequential CERTIFY with n_max = 2000'."""
        return self.certifier.who()

    def describe(self) -> str:
        return f"{self.certifier.short()}, sigma = {self.sigma:g}, alpha = {self.alpha:g}"

    def excludes(self, radius: float) -> bool:
        """Whether no image can be certified at `radius` with these settings."""
        return radius > self.radius * (1 + 1e-12)


def sequential_max_radius(
    sigma: float,
    alpha: float,
    n_max: int,
    radius: Sequence[float] | None = None,
    tol: float | None = None,
) -> float:
    """The largest radius sequential CERTIFY can return (`Sequential.max_radius`)."""
    radii = None if radius is None else tuple(float(r) for r in radius)
    return Sequential(1, float(alpha), int(n_max), radii, tol).max_radius(sigma)


def radius_cap(record: dict | None) -> RadiusCap | None:
    """The cap of a certify log's record, or None (no record, a predict log, missing or
    invalid settings, or a method that does not say its largest radius)."""
    certifier = certifier_from_record(record)
    if certifier is None or record is None:
        return None
    try:
        sigma, alpha = float(record["sigma"]), float(record["alpha"])
        cap = certifier.max_radius(sigma)
    except (KeyError, TypeError, ValueError, UserError):
        return None
    return None if cap is None else RadiusCap(cap, sigma, alpha, certifier)


def log_cap(path: str | os.PathLike) -> RadiusCap | None:
    from dsmooth.logs.provenance import read

    return radius_cap(read(path))


def series_cap(series: Series) -> RadiusCap | None:
    """The largest cap over a row's logs; None unless every log's cap is known."""
    return common_cap([log_cap(log.path) for log in series.logs])


def marked(radii: Sequence[float], caps: Sequence[RadiusCap | None]) -> list[bool]:
    """Per radius: whether it is above the cap of at least one row whose cap is known."""
    known = [c for c in caps if c is not None]
    return [any(c.excludes(r) for c in known) for r in radii]


def common_cap(caps: Sequence[RadiusCap | None]) -> RadiusCap | None:
    """The cap above which no row can certify anything, when every row's cap is known."""
    if not caps or any(c is None for c in caps):
        return None
    return max(caps, key=lambda c: c.radius)


def plot_cap(caps: Sequence[RadiusCap | None]) -> tuple[float | None, str | None]:
    """`cap` and `cap_label` for dsmooth.analysis.plots.plot_curves: the radius beyond which no
    row can certify anything (None unless every row's cap is known)."""
    cap = common_cap(caps)
    if cap is None:
        return None, None
    if len({(c.radius, c.samples, c.method) for c in caps}) == 1:
        return cap.radius, f"beyond {cap.shown}: out of reach of {cap.who}"
    return cap.radius, f"beyond {cap.shown}: out of reach of every row's settings"


def cap_footnote(
    names: Sequence[str], caps: Sequence[RadiusCap | None], radii: Sequence[float]
) -> str | None:
    """The footnote of the marked radius columns, or None when none is marked."""
    if not any(marked(radii, caps)):
        return None
    known = [(name, c) for name, c in zip(names, caps, strict=True) if c is not None]
    if len({(c.radius, c.samples, c.method) for _, c in known}) == 1:
        c = known[0][1]
        if c.radius <= 0:
            return (
                f"{DAGGER} {c.who} certifies no radius at all (sigma = {c.sigma:g}, "
                f"alpha = {c.alpha:g}): every image abstains; use a larger n."
            )
        return (
            f"{DAGGER} above {c.shown}, the largest radius {c.who} can certify "
            f"(sigma = {c.sigma:g}, alpha = {c.alpha:g})."
        )
    parts = "; ".join(f"{name} {c.shown} ({c.describe()})" for name, c in known)
    return f"{DAGGER} above the largest radius a row's settings can certify: {parts}."


def mark_head(head: Sequence[str], marks: Sequence[bool], mark: str):
    """The header of a certified-accuracy table (a name column, then one per radius) with
    `mark` after each marked radius."""
    out = list(head)
    for k, m in enumerate(marks):
        if m and k + 1 < len(out):
            out[k + 1] = f"{out[k + 1]}{mark}"
    return out


@dataclass
class CappedReport(Report):
    """A Report whose radius columns above what the logs' settings can certify carry a
    dagger, explained in a footnote (markdown, LaTeX, HTML) and listed in the JSON."""

    caps: list[RadiusCap | None] | None = None

    def __post_init__(self):
        if self.caps is None:
            self.caps = [series_cap(s) for s in self.series]

    @property
    def marks(self) -> list[bool]:
        return marked(self.radii, self.caps)

    @property
    def footnote(self) -> str | None:
        return cap_footnote([s.name for s in self.series], self.caps, self.radii)

    def main_table(self, decimals: int, latex: bool = False):
        head, body = super().main_table(decimals, latex)
        mark = r"$^\dagger$" if latex else f" {DAGGER}"
        return mark_head(head, self.marks, mark), body

    def markdown(self, decimals: int = 0) -> str:
        text = super().markdown(decimals)
        note = self.footnote
        return text if note is None else f"{text}\n{note}\n"

    def latex(self, decimals: int = 0) -> str:
        text = super().latex(decimals)
        note = self.footnote
        if note is None:
            return text
        body = note.removeprefix(DAGGER).replace("_", r"\_").replace("%", r"\%")
        return f"{text}\n$^\\dagger${body}\n"

    def json(self) -> str:
        import json

        data = json.loads(super().json())
        data["radius_caps"] = [
            None
            if c is None
            else {
                "series": s.name,
                "radius": c.radius,
                "sigma": c.sigma,
                "alpha": c.alpha,
                "samples": c.samples,
                "method": c.method,
            }
            for s, c in zip(self.series, self.caps, strict=True)
        ]
        data["above_cap"] = [r for r, m in zip(self.radii, self.marks, strict=True) if m]
        return json.dumps(data, indent=2) + "\n"


def with_caps(report: Report) -> CappedReport:
    """The same report, its radius columns marked where the logs' records cap them."""
    if isinstance(report, CappedReport):
        return report
    return CappedReport(**{f.name: getattr(report, f.name) for f in fields(report)})


# ----------------------------------------------------------------------------- settings


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_text(record: dict) -> str:
    if record.get("command") == "predict":
        return "PREDICT"
    certifier = certifier_from_record(record)
    if certifier is not None:
        text = certifier.settings()
    else:
        text = str(record.get("method") or "CERTIFY (Clopper-Pearson)")
    if record.get("stop_if_misclassified"):
        text += "; stop if misclassified"
    return text


def precision_text(record: dict) -> str:
    parts = [str(record.get("precision", "?"))]
    extra = [str(v) for v in (record.get("backend"), record.get("device_type")) if v]
    return f"{parts[0]} ({', '.join(extra)})" if extra else parts[0]


def noise_text(record: dict) -> str:
    noise = record.get("noise") or "gaussian"
    version = record.get("noise_version")
    return f"{noise} (v{version})" if version is not None else noise


def model_spec(record: dict, role: str) -> str | None:
    m = (record.get("models") or {}).get(role)
    if isinstance(m, dict):
        return m.get("spec")
    return None if m is None else str(m)


def data_spec(record: dict) -> str | None:
    d = record.get("data")
    return d.get("spec") if isinstance(d, dict) else (None if d is None else str(d))


def certify_command(record: dict, log: str | os.PathLike) -> str:
    """A `dsmooth` command with the record's settings (the ones it keeps: not --skip or
    --max, nor the input contract of foreign models)."""
    command = record.get("command") or "certify"
    argv = ["dsmooth", command]

    def add(flag: str, value) -> None:
        if value is not None:
            argv.extend([flag, _number(value)])

    add("--classifier", model_spec(record, "classifier"))
    add("--denoiser", model_spec(record, "denoiser"))
    add("--data", data_spec(record))
    add("--class-names", record.get("class_names"))
    add("--sigma", record.get("sigma"))
    if command == "certify":
        add("--n0", record.get("n0"))
    add("--n", record.get("n"))
    add("--alpha", record.get("alpha"))
    add("--seed", record.get("seed"))
    add("--noise", record.get("noise"))
    precision = record.get("precision")
    if precision and " " not in str(precision):
        add("--precision", precision)
    add("--backend", record.get("backend"))
    if record.get("device_type") not in (None, "cpu"):
        add("--device", record.get("device_type"))
    certifier = certifier_from_record(record) if command == "certify" else None
    if certifier is not None:
        argv += certifier.flags()
    elif command == "certify" and record.get("method") not in (None, "cp"):
        argv += ["--method", str(record["method"])]
    if record.get("stop_if_misclassified"):
        argv.append("--stop-if-misclassified")
    argv += ["--out", str(log)]
    return shlex.join(argv)


def _budget_is_n(record: dict) -> bool:
    certifier = certifier_from_record(record)
    return certifier is None or certifier.spends_n


def settings_row(record: dict | None) -> dict[str, str]:
    """The settings a report shows for one log ('-' for what the record lacks)."""
    if not record:
        return {}
    cap = radius_cap(record)
    return {
        "sigma": _number(record.get("sigma", "-")),
        "alpha": _number(record.get("alpha", "-")),
        "n0": _number(record["n0"]) if record.get("n0") is not None else "-",
        # a method whose budget is not n (sequential: n_max) shows it in the method column
        "n": _number(record.get("n", "-")) if _budget_is_n(record) else "-",
        "method": method_text(record),
        "noise": noise_text(record),
        "seed": _number(record.get("seed", "-")),
        "precision": precision_text(record),
        "largest radius": "-" if cap is None else cap.shown,
    }


SETTINGS_COLUMNS = (
    "sigma",
    "alpha",
    "n0",
    "n",
    "method",
    "noise",
    "seed",
    "precision",
    "largest radius",
)


# ----------------------------------------------------------------------------- classes

_CIFAR10 = re.compile(r"cifar[-_ ]?10(?!\d)", re.IGNORECASE)


def known_class_names(
    record: dict | None = None, specs: Sequence[str | None] = (), num_classes: int | None = None
) -> list[str] | None:
    """Class names in label order: the record's --class-names, else CIFAR-10's when the
    record's (or the given) data or model names say CIFAR-10 and there are 10 classes."""
    from dsmooth.data.images import CIFAR10_CLASSES, parse_class_names

    record = record or {}
    if record.get("class_names"):
        try:
            return parse_class_names(str(record["class_names"]))
        except Exception:
            return None
    classes = record.get("num_classes", num_classes)
    names = [data_spec(record), model_spec(record, "classifier"), *specs]
    if classes in (None, 10) and any(s and _CIFAR10.search(str(s)) for s in names):
        return list(CIFAR10_CLASSES)
    return None
