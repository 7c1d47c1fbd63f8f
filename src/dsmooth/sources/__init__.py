"""Bring-your-own classifiers and denoisers: one entry point, many formats.

`load_model(spec)` tries each resolver in `RESOLVERS` order; a resolver returns a model
(an `nn.Module` for white-box use, or a plain callable for black-box use) or None when
`spec` is not its kind. The keyword options become one `SourceOptions` (sources/options.py),
which refuses unknown names, before any resolver runs. Add a format by writing
`sources/<format>.py` with a `resolve(spec: str, options: SourceOptions)` function that
reads the options' attributes, and listing it in `RESOLVERS`; an option no source read
before is a new `SourceOptions` field, and needs its CLI flag in
cli/commands/source_options.py (tests/test_sources_contract.py checks the two match).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from dsmooth.errors import UserError
from dsmooth.sources.options import WEIGHTS_OPTIONS, SourceOptions

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
    """Load a classifier or denoiser from a path, name or URL (see RESOLVERS); `options`
    are `SourceOptions` fields, and an unknown one is a UserError."""
    settings = SourceOptions.from_mapping(options)
    for name in RESOLVERS:
        model = importlib.import_module(name).resolve(str(spec), settings)
        if model is not None:
            if settings.as_classifier:
                from dsmooth.sources.contract import apply_contract

                check_options_apply(spec, name, settings)
                model = apply_contract(model, settings)
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


def check_options_apply(spec: str, resolver: str, options: SourceOptions) -> None:
    """Refuse flags that cannot mean what they say for this kind of model: --arch/--mean/
    --std import a state dict, and are silently meaningless for any other format; a
    dsmooth checkpoint takes [0, 1] NCHW RGB and normalises itself, so pixel contract
    flags would feed it other pixels (e.g. --input-range 255: garbage, exit 0)."""
    if resolver != "dsmooth.sources.checkpoint":
        given = [f"--{k}" for k in WEIGHTS_OPTIONS if getattr(options, k) is not None]
        if given:
            raise UserError(
                f"{'/'.join(given)} {'describes' if len(given) == 1 else 'describe'} a PyTorch "
                "state dict to import (docs/models.md), "
                f"but {spec} is a {resolver.rsplit('.', 1)[-1]} model; for a model that does "
                "not normalise its input itself, use --input-mean/--input-std."
            )
        return
    given = [
        flag
        for key, (flag, neutral) in _PIXEL_OPTIONS.items()
        if getattr(options, key) not in neutral
    ]
    if given:
        raise UserError(
            f"{spec} is a dsmooth checkpoint, which takes [0, 1] NCHW RGB images and "
            f"normalises them itself; {', '.join(given)} would feed it other pixels: drop "
            f"{'it' if len(given) == 1 else 'them'}."
        )
