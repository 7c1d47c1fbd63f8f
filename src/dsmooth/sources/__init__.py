"""Bring-your-own classifiers and denoisers: one entry point, many formats.

`load_model(spec)` tries each resolver in `RESOLVERS` order; a resolver returns a model
(an `nn.Module` for white-box use, or a plain callable for black-box use) or None when
`spec` is not its kind. Add a format by writing `sources/<format>.py` with a
`resolve(spec: str, options: dict)` function and listing it in `RESOLVERS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from dsmooth.errors import UserError

#: Resolver modules, tried in order. Each has `resolve(spec, options) -> model | None`.
RESOLVERS = [
    "dsmooth.sources.checkpoint",
    "dsmooth.sources.torchscript",
    "dsmooth.sources.onnx",
    "dsmooth.sources.keras",
    "dsmooth.sources.savedmodel",
    "dsmooth.sources.remote",
    "dsmooth.sources.entrypoint",
]


def load_model(spec: str, **options) -> Callable:
    """Load a classifier or denoiser from a path, name or URL (see RESOLVERS)."""
    for name in RESOLVERS:
        model = importlib.import_module(name).resolve(str(spec), options)
        if model is not None:
            if options.get("role", "classifier") == "classifier":
                from dsmooth.sources.contract import apply_contract

                model = apply_contract(model, options)
            return model
    raise UserError(f"cannot load a model from {spec!r}: no such file, name or supported format.")
