"""Resumable training state in one file, written atomically.

`train_state.safetensors` holds the trainable model's weights and the optimizer's tensors
(momentum buffers, Adam moments), and its metadata holds a JSON document with everything
else (epoch, step, position inside the epoch, partial-epoch sums, metrics history, the
recipe). One file replaced with `os.replace` means a crash at any moment leaves either
the previous state or the new one, never a mix. Randomness needs no saved state: batch
order, augmentation and noise are drawn from generators seeded by (seed, epoch, batch).
No pickle anywhere.
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


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(
    out_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict,
) -> Path:
    """Write model + optimizer + `info` (JSON-serialisable) to OUT/train_state.safetensors."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
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
    out_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict:
    """Restore `model` and `optimizer` in place from OUT; returns the saved info."""
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
    optimizer.load_state_dict(_unflatten_optimizer(tensors, info.pop("optimizer")))
    return info
