"""One entry for certification data: a path or spec -> an ImageSet or a lazy ImageFolder.

A `.npz` or an image folder is read here (dsmooth.data.images); every other spec (an npz
with a prefix, several npz files, `cifar10`, a folder of npz splits) is a dataset
(dsmooth.data.datasets).
"""

from __future__ import annotations

import os
from pathlib import Path

from dsmooth.data.datasets import load_dataset
from dsmooth.data.images import ImageFolder, ImageSet, load_folder, load_npz
from dsmooth.errors import UserError


def _extended_spec(spec: str) -> bool:
    """Data specs of dsmooth.data.datasets that are not paths (docs/models.md)."""
    return ".npz:" in spec or ".npz," in spec or spec.lower() == "cifar10"


def load_images(path: str | os.PathLike, size: int | None = None) -> ImageSet | ImageFolder:
    """Load a dataset for certification from a `.npz` file or an image folder (read lazily;
    `size`: resize and centre-crop its images to size x size)."""
    p = Path(path)
    if not p.exists() and not _extended_spec(str(path)):
        raise UserError(f"data not found: {p}.")
    is_folder = p.is_dir() and any(d.is_dir() for d in p.iterdir())
    if size is not None and not is_folder:
        raise UserError("--size applies to image folders only; arrays are used as they are.")
    if not p.exists() or (p.is_dir() and not is_folder):
        return load_dataset(str(path))  # FILE.npz:PREFIX, a,b.npz, cifar10, npz folder
    if is_folder:
        return load_folder(p, size)
    if p.suffix == ".npz":
        return load_npz(p)
    raise UserError(f"{p}: expected a .npz file or an image folder.")
