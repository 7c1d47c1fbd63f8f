"""Image sets in pixel space: uint8 HWC files in, float [0, 1] CHW tensors out.

Sources: a `.npz` with `images` (N, H, W, C; uint8, or float already in [0, 1]) and
`labels`, or an image folder with one subfolder per class (sorted names are the labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dsmooth.data.transforms import resize_center_crop
from dsmooth.errors import UserError

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class ImageSet:
    """Images (N, H, W, C) as uint8 or float32 in [0, 1], with int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str] = field(default_factory=list)
    #: Image files relative to the folder (when read from one): logged with each row.
    files: list[str] | None = None
    #: Labels are the ranks of the subfolder names, which only `match_classes` makes the
    #: classifier's labels.
    labels_from_folders: bool = False

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def image(self, i: int) -> torch.Tensor:
        """Image i as a float32 (C, H, W) tensor in [0, 1]."""
        return to_chw_float(self.images[i])

    def batch(self, indices) -> torch.Tensor:
        return torch.stack([self.image(int(i)) for i in indices])


def to_chw_float(image: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(image))
    t = t.float().div_(255.0) if image.dtype == np.uint8 else t.float()
    return t.permute(2, 0, 1).contiguous()


def check_images(images: np.ndarray, source: str) -> np.ndarray:
    """Shape (N, H, W, C), uint8 or float in [0, 1] without NaN; otherwise a UserError."""
    if images.ndim == 3:  # grayscale N, H, W
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise UserError(
            f"{source}: images must have shape (N, H, W, C) with C in 1, 3, 4; got {images.shape}."
        )
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise UserError(f"{source}: images must be uint8 or float, got {images.dtype}.")
    if np.isnan(images).any():
        raise UserError(f"{source}: images contain NaN values.")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise UserError(
            f"{source}: float images must lie in [0, 1], got [{lo:g}, {hi:g}] "
            "(0-255 data must be stored as uint8 or divided by 255)."
        )
    return images.astype(np.float32, copy=False)


def load_npz(path: Path) -> ImageSet:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # corrupt or not an npz
        raise UserError(f"cannot read {path} as a .npz archive ({e}).") from None
    with archive:
        if "images" not in archive or "labels" not in archive:
            raise UserError(f"{path} must contain arrays 'images' and 'labels'.")
        images = check_images(archive["images"], str(path))
        labels = np.asarray(archive["labels"]).astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise UserError(f"{path}: {len(images)} images but {len(labels)} labels.")
    if len(labels) and labels.min() < 0:
        raise UserError(f"{path}: labels must be non-negative.")
    return ImageSet(images, labels)


class ImageFolder:
    """An image folder read lazily: image i is decoded when it is certified.

    Certifying every 100th image of a 50,000-image folder reads 500 files, and memory
    holds one image at a time. Same interface as `ImageSet` (len, labels, classes,
    image, batch), without `images`. With `size`, each image is resized and centre-cropped
    to size x size (`dsmooth.data.transforms.resize_center_crop`); without it images keep their
    own sizes, which a classifier with a fixed input size accepts only if they match.
    """

    labels_from_folders = True

    def __init__(
        self,
        files: list[Path],
        labels,
        classes: list[str],
        size: int | None = None,
        resize: int | None = None,
    ):
        self.paths = files
        self.files = [f"{p.parent.name}/{p.name}" for p in files]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = classes
        self.size = size
        self.resize = resize

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def array(self, i: int) -> np.ndarray:
        """Image i as uint8 (H, W, 3), resized and cropped when the folder has a size."""
        from PIL import Image

        file = self.paths[i]
        try:
            with Image.open(file) as im:
                im = im.convert("RGB")
                if self.size is not None:
                    im = resize_center_crop(im, self.size, self.resize)
                return np.array(im)  # a writable copy, for torch
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read image {file} ({e}).") from None

    def image(self, i: int) -> torch.Tensor:
        """Image i as a float32 (C, H, W) tensor in [0, 1]."""
        return to_chw_float(self.array(i))

    def batch(self, indices) -> torch.Tensor:
        return torch.stack([self.image(int(i)) for i in indices])


def load_folder(path: Path, size: int | None = None, resize: int | None = None) -> ImageFolder:
    """An image folder with one subfolder per class (sorted names are the labels)."""
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{path} has no class subfolders (expected one folder per class).")
    files, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(label)
    if not files:
        raise UserError(f"{path} contains no images.")
    if size is not None and size < 1:
        raise UserError(f"--size must be a positive number of pixels, got {size}.")
    return ImageFolder(files, labels, classes, size, resize)


def parse_class_names(spec: str, flag: str = "--class-names") -> list[str]:
    """'cifar10' or comma-separated class names, in label order."""
    if spec.strip().lower() in ("cifar10", "cifar-10"):
        return list(CIFAR10_CLASSES)
    names = [n.strip() for n in spec.split(",")]
    if not all(names):
        raise UserError(f"{flag} has an empty name: {spec!r}.")
    if len(set(names)) != len(names):
        raise UserError(f"{flag} names a class twice: {spec!r}.")
    return names


def match_classes(data, num_classes: int, names: list[str] | None = None) -> None:
    """Make the data's labels the classifier's: an image folder's subfolders are matched
    to `names` (the classifier's classes in label order) by name; without names they
    must be exactly as many as the classifier's classes, or their sorted ranks would be
    silently wrong labels (a folder holding 5 of 10 classes makes "cat" label 2)."""
    from_folders = getattr(data, "labels_from_folders", False)
    if names is not None:
        if len(names) != num_classes:
            raise UserError(
                f"--class-names lists {len(names)} classes but the classifier has {num_classes}."
            )
        if from_folders:
            folded = {n.casefold(): i for i, n in enumerate(names)}
            unknown = [c for c in data.classes if c.casefold() not in folded]
            if unknown:
                raise UserError(
                    f"class subfolder(s) {', '.join(unknown[:5])} are not among --class-names "
                    f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})."
                )
            ranks = np.array([folded[c.casefold()] for c in data.classes], dtype=np.int64)
            data.labels = ranks[data.labels]
            data.labels_from_folders = False
        elif len(data.labels) and int(data.labels.max()) >= len(names):
            raise UserError(f"the data has label {int(data.labels.max())} beyond --class-names.")
        data.classes = list(names)
        return
    if from_folders and len(data.classes) != num_classes:
        raise UserError(
            f"the data has {len(data.classes)} class subfolders but the classifier has "
            f"{num_classes} classes, so the folders' sorted order cannot be its labels; give "
            "the classifier's classes in label order with --class-names (e.g. cifar10), and "
            "the subfolders are matched to them by name."
        )
