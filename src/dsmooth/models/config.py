"""`ModelConfig`: the typed config beside a checkpoint's weights.

timm keeps a typed pretrained config (`PretrainedCfg`) beside each model's weights; dsmooth
does the same, and for one reason: it is what lets a loader check that a model is used as
it was trained (its architecture and constructor options, its kind, the normalisation
inside it, the sigma a denoiser was trained for). `ModelConfig.from_dict` checks the type
of every field dsmooth reads or writes and names, in one sentence, the checkpoint and the
field that is wrong; every other key is kept in `extra` exactly as written, so a config
read and written again is the same JSON.

A ModelConfig is also a read-only `Mapping` over `to_dict()`, so code written for the plain
dict configs of dsmooth 0.2 and older (`config["sigma"]`, `config.get("kind")`, `"x" in
config`, `dict(config)`, `{**config, "note": ...}`) keeps working; `json.dumps` needs
`dict(config)` or `config.to_dict()`.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Literal

from dsmooth.errors import UserError

KINDS = ("classifier", "denoiser")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Normalization:
    """The per-channel input normalisation built into a classifier (`Normalize`)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True, eq=False)
class ModelConfig(Mapping):
    """What a dsmooth checkpoint says about its weights. Build one with `from_dict`, which
    checks it; a field that is None was not written (or was written as null, which
    `to_dict` keeps). Equal to any mapping with the same `to_dict()`."""

    #: The registry name the loader builds (`dsmooth.models.create`), or for a diffusion
    #: denoiser `diffusers:<class>`.
    architecture: str
    kind: Literal["classifier", "denoiser"] | None = None
    #: Constructor arguments of `architecture`.
    kwargs: dict[str, Any] | None = None
    input_range: tuple[float, float] | None = None
    normalization: Normalization | None = None
    num_classes: int | None = None
    #: The noise level trained for: a denoiser's, or a noise-trained classifier's (0.0
    #: for a classifier trained on clean images).
    sigma: float | None = None
    objective: str | None = None
    #: The classifier a denoiser was trained for (a spec), and the surrogates it was
    #: trained through instead, if any.
    classifier: str | None = None
    surrogates: tuple[str, ...] | None = None
    #: The checkpoint training started from (a spec, or a sentence).
    init: str | None = None
    dataset: str | tuple[str, ...] | None = None
    epochs: float | None = None
    precision: str | None = None
    metrics: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    #: For imported weights: file, sha256, format and the file's scalar extras (a mapping);
    #: for a diffusers denoiser, its folder.
    source: dict[str, Any] | str | None = None
    note: str | None = None
    dsmooth_version: str | None = None
    #: The checksum of the folder's `model.safetensors` this config was written for.
    weights_sha256: str | None = None
    #: Every other key, as written.
    extra: dict[str, Any] = field(default_factory=dict)
    #: The typed fields written as null (so that they are written as null again).
    nulls: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        clash = sorted(set(self.extra) & _FIELD_NAMES)
        if clash:
            raise ValueError(f"extra keys {clash} are ModelConfig fields; set those fields")

    @classmethod
    def from_dict(cls, config: Mapping, where: str = "a model config") -> ModelConfig:
        """The checked config of the JSON object `config`; `where` names it (the checkpoint's
        path) in the one-sentence UserError a field of the wrong type or value raises."""
        if isinstance(config, ModelConfig):
            return config
        _check_top_level(config, where)
        typed: dict[str, Any] = {}
        nulls = set()
        for name, parse in _PARSERS.items():
            if name not in config:
                continue
            value = config[name]
            if value is None:
                nulls.add(name)
                continue
            _check_json(value, name, where)
            typed[name] = parse(value, name, where)
        extra = {}
        for key, value in config.items():
            if key not in _PARSERS:
                _check_json(value, key, where)
                extra[key] = copy.deepcopy(value)
        return cls(**typed, extra=extra, nulls=frozenset(nulls))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the keys as read (or given), keys sorted, values copied."""
        out: dict[str, Any] = {}
        for name in _PARSERS:
            value = getattr(self, name)
            if value is not None:
                out[name] = _to_json(value)
            elif name in self.nulls:
                out[name] = None
        out.update(copy.deepcopy(self.extra))
        return dict(sorted(out.items()))

    # ------------------------------------------------------------ read-only Mapping

    @cached_property
    def _json(self) -> dict[str, Any]:
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._json[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)

    def __contains__(self, key: object) -> bool:
        return key in self._json


# ------------------------------------------------------------------------- parsing


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _bad(where: str, name: str, expected: str, value: Any) -> UserError:
    return UserError(f"{where}: config field {name!r} must be {expected}, not {_show(value)}.")


def _check_top_level(config: Any, where: str) -> None:
    if not isinstance(config, Mapping):
        raise UserError(f"{where}: its config is not a JSON object but {_show(config)}.")
    for key in config:
        if not isinstance(key, str):
            raise UserError(f"{where}: its config has a key that is not a string ({key!r}).")
    if config.get("architecture") is None:
        raise UserError(f"{where}: its config names no 'architecture'.")


def _check_json(value: Any, name: str, where: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise UserError(
            f"{where}: config field {name!r} cannot be written as JSON ({e})."
        ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _string(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, name, "a string", value)
    return value


def _architecture(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(where, name, "a registry name (a non-empty string)", value)
    return value


def _kind(value: Any, name: str, where: str) -> str:
    if value not in KINDS:
        raise _bad(where, name, "'classifier' or 'denoiser'", value)
    return value


def _object(value: Any, name: str, where: str) -> dict:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _bad(where, name, "a JSON object", value)
    return copy.deepcopy(dict(value))


def _non_negative(value: Any, name: str, where: str) -> float:
    if not _is_number(value) or value < 0:
        raise _bad(where, name, "a number >= 0", value)
    return value


def _count(value: Any, name: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _bad(where, name, "a whole number >= 1", value)
    return value


def _strings(value: Any, name: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _bad(where, name, "a list of strings", value)
    return tuple(value)


def _dataset(value: Any, name: str, where: str) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _bad(where, name, "a string or a list of strings", value)
    return tuple(value)


def _input_range(value: Any, name: str, where: str) -> tuple[float, float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_number(v) for v in value)
        or not value[0] < value[1]
    ):
        raise _bad(where, name, "two numbers [low, high] with low < high", value)
    return (value[0], value[1])


def _normalization(value: Any, name: str, where: str) -> Normalization:
    expected = 'an object {"mean": [...], "std": [...]} of equal-length lists, std > 0'
    if not isinstance(value, Mapping) or set(value) != {"mean", "std"}:
        raise _bad(where, name, expected, value)
    mean, std = value["mean"], value["std"]
    if (
        not isinstance(mean, (list, tuple))
        or not isinstance(std, (list, tuple))
        or not mean
        or len(mean) != len(std)
        or not all(_is_number(v) for v in (*mean, *std))
        or not all(v > 0 for v in std)
    ):
        raise _bad(where, name, expected, value)
    return Normalization(tuple(mean), tuple(std))


def _source(value: Any, name: str, where: str) -> dict | str:
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _bad(where, name, "a JSON object or a string", value)
    return copy.deepcopy(dict(value))


def _sha256(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise _bad(where, name, "a sha256 checksum (64 lowercase hex digits)", value)
    return value


#: The JSON key of each typed field and how it is read, in field order.
_PARSERS = {
    "architecture": _architecture,
    "kind": _kind,
    "kwargs": _object,
    "input_range": _input_range,
    "normalization": _normalization,
    "num_classes": _count,
    "sigma": _non_negative,
    "objective": _string,
    "classifier": _string,
    "surrogates": _strings,
    "init": _string,
    "dataset": _dataset,
    "epochs": _non_negative,
    "precision": _string,
    "metrics": _object,
    "recipe": _object,
    "source": _source,
    "note": _string,
    "dsmooth_version": _string,
    "weights_sha256": _sha256,
}
_FIELD_NAMES = frozenset(f.name for f in fields(ModelConfig)) - {"extra", "nulls"}


def _to_json(value: Any) -> Any:
    if isinstance(value, Normalization):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return copy.deepcopy(value)
