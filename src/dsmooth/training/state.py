"""Resumable training state in one file, written atomically.

`train_state.safetensors` holds the trainable model's weights and the optimizer's tensors
(momentum buffers, Adam moments), and its metadata holds a JSON document with everything
else (epoch, step, position inside the epoch, partial-epoch sums, metrics history, the
recipe). One file replaced with `os.replace` means a crash at any moment leaves either
the previous state or the new one, never a mix. Randomness needs almost no saved state:
batch order, augmentation and noise are drawn from generators seeded by (seed, epoch,
batch). What a model draws from the global generator itself (dropout) on a CUDA device
comes from the CUDA generator, whose state a CUDA run saves (`rng/cuda`) and a CUDA
resume restores. No pickle anywhere.

Tensors are stored on the CPU, so a state saved on one device resumes on another: the
weights are copied into the run's model wherever it lives, and the optimizer tensors are
mapped to the run's device (as `torch.load(map_location=...)` would).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from dsmooth._io import replacing
from dsmooth.errors import UserError

STATE_FILE = "train_state.safetensors"
_META = "dsmooth_train_state"
_CUDA_RNG = "rng/cuda"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(
    tensors: dict[str, torch.Tensor], meta: dict, device: torch.device | None = None
) -> dict:
    """The optimizer's state dict, its tensors mapped to `device` (None: as stored, on the
    CPU). A scalar `step` stays on the CPU, where torch keeps it; `load_state_dict` then
    casts each tensor to its parameter (and keeps what its policy keeps)."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            if device is not None and not (name == "step" and value.ndim == 0):
                value = value.to(device)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(
    out_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict,
    *,
    device: torch.device | None = None,
) -> Path:
    """Write model + optimizer + `info` (JSON-serialisable) to OUT/train_state.safetensors,
    and on a CUDA `device` that device's RNG state."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    if device is not None and device.type == "cuda":
        tensors[_CUDA_RNG] = torch.cuda.get_rng_state(device).contiguous()
    meta = json.dumps({**info, "optimizer": opt_meta})
    path = out / STATE_FILE
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META: meta})
    return path


def has_state(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / STATE_FILE).is_file()


def read_info(out_dir: str | os.PathLike) -> dict:
    """The JSON part of a saved state (without loading tensors)."""
    path = Path(out_dir) / STATE_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[_META])
    except (OSError, KeyError, json.JSONDecodeError, SafetensorError) as e:
        raise UserError(f"cannot read the training state {path} ({e}).") from None


def load_state(
    out_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | None = None,
) -> dict:
    """Restore `model` and `optimizer` in place from OUT, the optimizer's tensors mapped to
    `device` (the run's; None: left on the CPU for `load_state_dict` to place), and on a
    CUDA `device` its RNG state when a CUDA run saved one; returns the saved info. A state
    saved on any device loads on any other."""
    path = Path(out_dir) / STATE_FILE
    info = read_info(out_dir)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot read the training state {path} ({e}).") from None
    weights = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path} does not match the model being trained ({e}).") from None
    optimizer.load_state_dict(_unflatten_optimizer(tensors, info.pop("optimizer"), device))
    if device is not None and device.type == "cuda" and _CUDA_RNG in tensors:
        torch.cuda.set_rng_state(tensors[_CUDA_RNG], device)
    return info
