"""dsmooth checkpoints: safetensors weights + a JSON config, never pickle.

A checkpoint is a folder with `model.safetensors` and `config.json`, or a single
`.safetensors` file whose metadata holds the same JSON under `dsmooth_config`. The config
names the registry architecture and its constructor kwargs, so `load_checkpoint` can
rebuild the module, plus what a user needs to trust it (data, recipe, sigma, metrics).
It is read and written through `ModelConfig` (dsmooth.models.config), which checks it: a
malformed config is refused when loaded, and never written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from dsmooth._io import replacing, replacing_folder
from dsmooth.errors import UserError
from dsmooth.models import create, model_kind
from dsmooth.models.config import ModelConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METADATA_KEY = "dsmooth_config"
#: The config's checksum of its weights file, so a mixed pair is refused when loaded.
WEIGHTS_SHA256 = "weights_sha256"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    config: Mapping,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `model`'s weights and `config` (a dict or a ModelConfig; must name
    `architecture`) atomically. The config is checked through `ModelConfig` first, so a
    malformed one is a UserError and nothing is written.

    `dtype=torch.float16` halves the size of shipped weights; loading restores float32.
    """
    from dsmooth._version import __version__

    if "architecture" not in config:
        raise ValueError("config must name the registry 'architecture'")
    path = Path(path)
    given = ModelConfig.from_dict(config, where=f"{path} (being saved)")
    checked = ModelConfig.from_dict(
        {**describe(model, given.architecture), **given, "dsmooth_version": __version__},
        where=f"{path} (being saved)",
    )
    if checked.kind != model_kind(checked.architecture):
        raise UserError(
            f"{path} (being saved): config field 'kind' says {checked.kind!r}, but "
            f"{checked.architecture} is a {model_kind(checked.architecture)}."
        )
    state = {
        k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
        .contiguous()
        .cpu()
        for k, v in model.state_dict().items()
    }
    if path.suffix == ".safetensors":
        text = json.dumps(checked.to_dict(), indent=2, sort_keys=True)
        with replacing(path) as tmp:
            save_file(state, str(tmp), metadata={METADATA_KEY: text})
        return path
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; a checkpoint folder cannot replace it.")
    # Weights and config go into a new folder that replaces the old one in one step, so a
    # reader never sees new weights under an old config. The config still names its
    # weights' checksum, which catches a pair mixed by hand (or by an older dsmooth).
    with replacing_folder(path, last=(CONFIG,)) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        written = replace(checked, weights_sha256=file_sha256(tmp / WEIGHTS))
        text = json.dumps(written.to_dict(), indent=2, sort_keys=True)
        (tmp / CONFIG).write_text(text + "\n")
    return path


def describe(model: nn.Module, architecture: str) -> dict:
    """Standard config fields read off the module: kind, input range, normalisation, classes."""
    from dsmooth.models import list_models, model_kind
    from dsmooth.models.normalize import Normalize

    if architecture not in list_models():
        raise ValueError(f"unknown architecture {architecture!r}: register it before saving")
    fields: dict = {"kind": model_kind(architecture), "input_range": [0.0, 1.0]}
    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if norm is not None:
        fields["normalization"] = {
            "mean": [round(float(v), 6) for v in norm.mean.flatten()],
            "std": [round(float(v), 6) for v in norm.std.flatten()],
        }
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if fields["kind"] == "classifier" and heads:
        fields["num_classes"] = int(heads[-1].out_features)
    return fields


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    if p.is_dir():
        return (p / WEIGHTS).is_file() and (p / CONFIG).is_file()
    return p.is_file() and p.suffix == ".safetensors"


def read_config_json(path: str | os.PathLike) -> dict:
    """The JSON config of a checkpoint folder or single file, as written (unchecked)."""
    p = Path(path)
    try:
        if p.is_dir():
            return json.loads((p / CONFIG).read_text())
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        if METADATA_KEY not in meta:
            raise UserError(f"{p} has no dsmooth config in its metadata.")
        return json.loads(meta[METADATA_KEY])
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise UserError(f"cannot read the checkpoint config of {p} ({e}).") from None


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The checked config of a checkpoint folder or single file (a UserError naming the
    checkpoint and the field when it is malformed)."""
    return ModelConfig.from_dict(read_config_json(path), where=str(path))


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the module from its config and load the weights (as float32), in eval mode.
    The config comes back as a `ModelConfig`, which reads like the dict it is written from."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}.")
    config = read_config(p)
    arch = config.architecture
    try:
        model = create(arch, **(config.kwargs or {}))
    except (TypeError, ValueError) as e:
        raise UserError(f"{p}: its config kwargs do not fit {arch} ({e}).") from None
    if config.kind is not None and config.kind != model_kind(arch):
        raise UserError(
            f"{p}: its config says it is a {config.kind}, but {arch} is a {model_kind(arch)}."
        )
    if (
        p.is_dir()
        and config.weights_sha256 is not None
        and file_sha256(p / WEIGHTS) != config.weights_sha256
    ):
        raise UserError(
            f"{p}: {WEIGHTS} is not the one {CONFIG} was written for (files mixed from two "
            "saves, or a save cut off by dsmooth 0.2 or older); save the checkpoint again."
        )
    try:
        state = load_file(str(p / WEIGHTS if p.is_dir() else p))
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot read the weights of {p} ({e}).") from None
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{p}: weights do not match {arch} ({e}).") from None
    return model.to(device).eval(), config
