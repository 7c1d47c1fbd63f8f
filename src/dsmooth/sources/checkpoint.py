"""dsmooth checkpoints, shipped (pretrained) names and foreign PyTorch state dicts.

Options read: `arch` (registry name for a foreign state dict; or write the spec
`ARCH:PATH`), `mean` / `std` (a foreign classifier's normalisation: preset name or
numbers), `device`. TorchScript archives are left to `sources.torchscript`.
"""

from __future__ import annotations

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
    model.dsmooth_config = config
    return model
