"""dsmooth checkpoints, shipped (pretrained) names and foreign PyTorch state dicts.

Options read: `arch` (registry name for a foreign state dict; or write the spec
`ARCH:PATH`), `mean` / `std` (a foreign classifier's normalisation: preset name or
numbers), `device`, `role` (a classifier checkpoint given as the denoiser, or the
reverse, is an error). TorchScript archives are left to `sources.torchscript`.
"""

from __future__ import annotations

from dsmooth.errors import UserError
from dsmooth.models.loading import load_with_config


def resolve(spec: str, options: dict):
    found = load_with_config(
        spec,
        arch=options.get("arch"),
        mean=options.get("mean"),
        std=options.get("std"),
        device=options.get("device", "cpu"),
    )
    if found is None:
        return None
    model, config = found
    role, kind = options.get("role"), config.kind
    if role in ("classifier", "denoiser") and kind is not None and role != kind:
        raise UserError(f"{spec} is a {kind} ({config.architecture}), not a {role}.")
    model.dsmooth_config = config
    return model
