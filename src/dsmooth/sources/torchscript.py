"""TorchScript files (`torch.jit.save`): a white-box module, no unpickling."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch

from dsmooth.errors import UserError, brief
from dsmooth.sources.options import SourceOptions


def is_torchscript(path: Path) -> bool:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def resolve(spec: str, options: SourceOptions):
    path = Path(spec)
    if not is_torchscript(path):
        return None
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated upstream, still works
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location=options.device)
    except Exception as e:
        raise UserError(f"cannot load TorchScript model {path} ({brief(e)}).") from None
    return model.eval()
