"""Shipped weights: `dsmooth.pretrained(name)` loads `<dir>/<name>/` (a checkpoint folder
with a MODEL_CARD.md) from the package's `pretrained/` folder, or from the folders listed
in `DSMOOTH_PRETRAINED_PATH` (searched first, `os.pathsep`-separated)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import nn

from dsmooth.errors import UserError
from dsmooth.models.checkpoint import is_checkpoint, load_checkpoint

ENV_VAR = "DSMOOTH_PRETRAINED_PATH"
MODEL_CARD = "MODEL_CARD.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def search_path() -> list[Path]:
    """Where shipped models are looked up, in order."""
    extra = [Path(d) for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    return [*extra, Path(__file__).resolve().parents[1] / "pretrained"]


def list_pretrained() -> list[str]:
    """Names of the available shipped models."""
    names: set[str] = set()
    for root in search_path():
        if root.is_dir():
            names |= {d.name for d in root.iterdir() if is_checkpoint(d) and _NAME.match(d.name)}
    return sorted(names)


def pretrained_path(name: str) -> Path | None:
    """The checkpoint folder of shipped model `name`, or None if there is none."""
    if not _NAME.match(name):
        return None
    for root in search_path():
        if is_checkpoint(root / name):
            return root / name
    return None


def pretrained(name: str, device: str = "cpu") -> nn.Module:
    """The shipped model `name` in eval mode, its config as `.dsmooth_config`."""
    path = pretrained_path(name)
    if path is None:
        known = ", ".join(list_pretrained()) or "none installed"
        raise UserError(f"no pretrained model named {name!r} (available: {known}).")
    model, config = load_checkpoint(path, device)
    model.dsmooth_config = config
    return model


def model_card(name: str) -> str:
    """The model card text of shipped model `name` ('' if it has none)."""
    path = pretrained_path(name)
    card = path / MODEL_CARD if path else None
    return card.read_text() if card and card.is_file() else ""
