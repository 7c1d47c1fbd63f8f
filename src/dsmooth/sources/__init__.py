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

                check_options_apply(spec, name, options)
                model = apply_contract(model, options)
            return model
    raise UserError(f"cannot load a model from {spec!r}: no such file, name or supported format.")


#: Contract options that change the pixels a model receives, and their no-op values.
_PIXEL_OPTIONS = {
    "input_range": ("--input-range", (None, 1.0)),
    "input_mean": ("--input-mean", (None,)),
    "input_std": ("--input-std", (None,)),
    "input_layout": ("--input-layout", (None, "auto", "NCHW")),
    "channel_order": ("--channel-order", (None, "RGB")),
    "input_dtype": ("--input-dtype", (None, "float32")),
}


def check_options_apply(spec: str, resolver: str, options: dict) -> None:
    """Refuse flags that cannot mean what they say for this kind of model: --arch/--mean/
    --std import a state dict, and are silently meaningless for any other format; a
    dsmooth checkpoint takes [0, 1] NCHW RGB and normalises itself, so pixel contract
    flags would feed it other pixels (e.g. --input-range 255: garbage, exit 0)."""
    if resolver != "dsmooth.sources.checkpoint":
        given = [f"--{k}" for k in ("arch", "mean", "std") if options.get(k) is not None]
        if given:
            raise UserError(
                f"{'/'.join(given)} {'describes' if len(given) == 1 else 'describe'} a PyTorch "
                "state dict to import (docs/models.md), "
                f"but {spec} is a {resolver.rsplit('.', 1)[-1]} model; for a model that does "
                "not normalise its input itself, use --input-mean/--input-std."
            )
        return
    given = [
        flag for key, (flag, neutral) in _PIXEL_OPTIONS.items() if options.get(key) not in neutral
    ]
    if given:
        raise UserError(
            f"{spec} is a dsmooth checkpoint, which takes [0, 1] NCHW RGB images and "
            f"normalises them itself; {', '.join(given)} would feed it other pixels: drop "
            f"{'it' if len(given) == 1 else 'them'}."
        )
