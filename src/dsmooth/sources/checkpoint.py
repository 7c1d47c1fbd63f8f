"""dsmooth checkpoints, shipped (pretrained) names and foreign PyTorch state dicts.

Options read: `arch` (registry name for a foreign state dict; or write the spec
`ARCH:PATH`), `mean` / `std` (a foreign classifier's normalisation: preset name or
numbers), `device`, `role` (a classifier checkpoint given as the denoiser, or the
reverse, is an error). TorchScript archives are left to `sources.torchscript`.
"""

from __future__ import annotations

from dsmooth.errors import UserError
from dsmooth.models.loading import load_with_config
from dsmooth.sources.options import SourceOptions


def resolve(spec: str, options: SourceOptions):
    found = load_with_config(
        spec,
        arch=options.arch,
        mean=options.mean,
        std=options.std,
        device=options.device,
    )
    if found is None:
        return None
    model, config = found
    role, kind = options.role, config.kind
    if role in ("classifier", "denoiser") and kind is not None and role != kind:
        raise UserError(f"{spec} is a {kind} ({config.architecture}), not a {role}.")
    model.dsmooth_config = config
    return model
