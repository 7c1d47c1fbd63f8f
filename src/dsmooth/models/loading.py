"""`dsmooth.load`: one call for every weights format dsmooth reads without unpickling.

Spec forms, tried in order:
- a dsmooth checkpoint (folder with model.safetensors + config.json, or a `.safetensors`
  file with a dsmooth config);
- `pretrained:NAME`, or a bare NAME of a shipped model (`dsmooth.list_pretrained()`);
- `diffusers:PATH` (a diffusers DDPM folder, or `diffusers:PATH?steps=K`): a diffusion
  denoiser (dsmooth.models.diffusion, docs/diffusion.md);
- foreign weights `PATH` (`.pt/.pth/.th/.bin/.ckpt/.tar`, or `.safetensors` without a
  dsmooth config) with `arch=`, or written `ARCH:PATH` (e.g. `cifar_resnet20:r20.th`);
  the official denoised-smoothing checkpoints name their own architecture.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from dsmooth.errors import UserError
from dsmooth.models import list_models
from dsmooth.models.checkpoint import is_checkpoint, load_checkpoint, read_config_json
from dsmooth.models.config import ModelConfig
from dsmooth.models.foreign import STATE_DICT_SUFFIXES, import_weights, is_torchscript_archive
from dsmooth.models.pretrained import pretrained_path

PRETRAINED_PREFIX = "pretrained:"
DIFFUSERS_PREFIX = "diffusers:"


def split_spec(spec: str, arch: str | None = None) -> tuple[str, str | None]:
    """(path or name, architecture) from `ARCH:PATH` or a plain spec. A spec of that form
    whose ARCH is not in the registry (`nosucharch:w.safetensors`) is a UserError listing
    the known architectures."""
    if not Path(spec).exists() and ":" in spec:
        head, tail = spec.split(":", 1)
        if head in list_models():
            if arch is not None and arch != head:
                raise UserError(f"architecture given twice: {head!r} in the spec, {arch!r} too.")
            return tail, head
        if _names_an_architecture(head, tail):
            raise UserError(
                f"unknown architecture {head!r} in {spec}; known: {', '.join(list_models())}."
            )
    return spec, arch


#: Spec prefixes that are not architectures.
_PREFIXES = (PRETRAINED_PREFIX[:-1], DIFFUSERS_PREFIX[:-1])


def _names_an_architecture(head: str, tail: str) -> bool:
    """Whether `head:tail` can only be meant as ARCH:PATH: a name (not a URL scheme, a
    spec prefix, a dotted module or a drive letter) before a weights file's name."""
    suffix = Path(tail).suffix.lower()
    return (
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]+", head) is not None
        and head not in _PREFIXES
        and not tail.startswith("//")
        and (suffix in STATE_DICT_SUFFIXES or suffix == ".safetensors")
    )


def load_with_config(
    spec: str | os.PathLike,
    arch: str | None = None,
    *,
    mean=None,
    std=None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelConfig] | None:
    """(module in eval mode, its checked config), or None when `spec` is none of the forms
    above."""
    if str(spec).startswith(DIFFUSERS_PREFIX) and not Path(spec).exists():
        from dsmooth.models.diffusion import load_spec

        if arch is not None or mean is not None or std is not None:
            raise UserError("--arch/--mean/--std do not apply to a diffusers denoiser.")
        return load_spec(str(spec), device)
    spec, arch = split_spec(str(spec), arch)
    path = Path(spec)
    foreign_options = arch is not None or mean is not None or std is not None
    if is_checkpoint(path) and not (path.is_file() and _has_no_config(path)):
        if foreign_options:
            raise UserError(
                f"{path} is a dsmooth checkpoint: it stores its own architecture and "
                "normalisation, so --arch/--mean/--std do not apply."
            )
        return load_checkpoint(path, device)
    if not path.exists():
        name = spec[len(PRETRAINED_PREFIX) :] if spec.startswith(PRETRAINED_PREFIX) else spec
        found = pretrained_path(name)
        if found is not None:
            return load_checkpoint(found, device)
        if spec.startswith(PRETRAINED_PREFIX):
            from dsmooth.models.pretrained import pretrained

            pretrained(name)  # raises the UserError listing what is available
        return None
    if path.is_file() and (path.suffix in STATE_DICT_SUFFIXES or path.suffix == ".safetensors"):
        if is_torchscript_archive(path):
            return None
        model, config = import_weights(path, arch, mean, std, num_classes)
        return model.to(device), config
    return None


def _has_no_config(path: Path) -> bool:
    try:
        read_config_json(path)  # a malformed config is an error later, not "no config"
    except UserError:
        return True
    return False


def load(
    spec: str | os.PathLike,
    arch: str | None = None,
    *,
    mean=None,
    std=None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The model behind `spec` (see the module doc), in eval mode; its checkpoint config is
    attached as `.dsmooth_config` (a `ModelConfig`, which also reads as a dict).
    `mean`/`std` ("imagenet", "cifar10", or numbers) set a foreign classifier's input
    normalisation."""
    found = load_with_config(spec, arch, mean=mean, std=std, num_classes=num_classes, device=device)
    if found is None:
        raise UserError(
            f"cannot load {spec!r}: not a dsmooth checkpoint, a shipped model name, or "
            "a PyTorch state dict (.pt/.pth/.th)."
        )
    model, config = found
    model.dsmooth_config = config
    return model
