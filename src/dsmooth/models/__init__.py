"""Model registry: names -> constructors of plain `nn.Module`s (timm style).

Every model takes float32 NCHW images in [0, 1]; classifiers carry their own input
normalisation (`Normalize`) so the smoothing engine never sees normalised data.
Register a constructor with `@register("name")`; build one with `create("name", **kw)`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dsmooth.errors import UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_KIND: dict[str, str] = {}


def register(name: str, kind: str = "classifier"):
    """Decorator adding a constructor to the registry under `name` (kind: classifier|denoiser)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        _KIND[name] = kind
        return fn

    return wrap


def create(name: str, **kwargs) -> nn.Module:
    """Build the architecture `name` (randomly initialised) with constructor kwargs."""
    _import_all()
    if name not in _REGISTRY:
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(list_models())}.")
    return _REGISTRY[name](**kwargs)


def list_models(kind: str | None = None) -> list[str]:
    _import_all()
    return sorted(n for n in _REGISTRY if kind is None or _KIND[n] == kind)


def model_kind(name: str) -> str:
    _import_all()
    return _KIND[name]


def _import_all() -> None:
    import importlib

    for module in ARCHITECTURE_MODULES:
        importlib.import_module(module)


#: Modules whose import registers architectures.
ARCHITECTURE_MODULES = [
    "dsmooth.models.cifar_resnet",
    "dsmooth.models.cohen_resnet",
    "dsmooth.models.wide_resnet",
    "dsmooth.models.dncnn",
    "dsmooth.models.memnet",
]
