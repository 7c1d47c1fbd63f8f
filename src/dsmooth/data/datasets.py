"""Datasets for training and evaluation, all ending as uint8 (N, H, W, C) + int64 labels.

Sources (`load_dataset(spec, split)`):
- `.npz` files with `images` + `labels`; several joined in order (`a.npz,b.npz`, or a
  folder holding `*<split>*.npz`, e.g. the train set shipped as part1 + part2); a file
  with prefixed arrays picks them with `file.npz:PREFIX` (`PREFIX_images`, `PREFIX_labels`);
- the official `cifar-10-batches-py` folder (Python pickles: read by an unpickler that
  only rebuilds numpy arrays and builtin containers, so a tampered file cannot run code);
- `cifar10`: the official archive downloaded once into the cache (`DSMOOTH_CACHE`, default
  `~/.cache/dsmooth`), with a timeout and an MD5 check;
- an image folder with one subfolder per class (sorted names are the labels), resized
  (shorter side) and centre-cropped to `size` when given.

`BatchLoader` serves shuffled batches as float [0, 1] NCHW, optionally with the standard
CIFAR augmentation of dsmooth.data.transforms (the one the training commands use).
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

from dsmooth.data.images import CIFAR10_CLASSES, ImageSet, check_images, load_folder
from dsmooth.data.transforms import random_crop_flip, to_float_nchw
from dsmooth.errors import UserError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
SPLITS = ("train", "test")


# ----------------------------------------------------------------------------- npz files


def load_npz_files(paths: Sequence[str | os.PathLike], prefix: str | None = None) -> ImageSet:
    """One ImageSet from .npz files concatenated in the given order."""
    images, labels = [], []
    for path in paths:
        x, y = _read_npz(Path(path), prefix)
        images.append(x)
        labels.append(y)
    if not images:
        raise UserError("no .npz files given.")
    shapes = {x.shape[1:] for x in images}
    if len(shapes) > 1:
        raise UserError(f"the .npz files hold images of different shapes {sorted(shapes)}.")
    dtypes = {x.dtype for x in images}
    if len(dtypes) > 1:
        images = [x.astype(np.float32) / 255 if x.dtype == np.uint8 else x for x in images]
    return ImageSet(np.concatenate(images), np.concatenate(labels))


def _read_npz(path: Path, prefix: str | None) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"data file not found: {path}.")
    keys = ("images", "labels") if not prefix else (f"{prefix}_images", f"{prefix}_labels")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:
        raise UserError(f"cannot read {path} as a .npz archive ({e}).") from None
    with archive:
        if not all(k in archive for k in keys):
            groups = sorted(k[: -len("_images")] for k in archive.files if k.endswith("_images"))
            hint = f"; pick one with {path.name}:PREFIX ({', '.join(groups)})" if groups else ""
            raise UserError(f"{path} has no arrays {keys[0]!r} and {keys[1]!r}{hint}.")
        images = check_images(archive[keys[0]], str(path))
        labels = np.asarray(archive[keys[1]]).astype(np.int64).reshape(-1)
    if len(images) != len(labels):
        raise UserError(f"{path}: {len(images)} images but {len(labels)} labels.")
    if len(labels) and labels.min() < 0:
        raise UserError(f"{path}: labels must be non-negative.")
    return images, labels


# --------------------------------------------------------------- cifar-10-batches-py pickles


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds only dicts/lists/bytes/str/numbers and numpy arrays; anything else (the
    callables a malicious pickle needs, like os.system) is refused."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("_codecs", "encode"),  # bytes as written by Python 3 at protocol 2; inert
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            if module == "_codecs":
                return codecs.encode
            return _reconstruct if name == "_reconstruct" else getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_cifar_pickle(path: Path) -> dict:
    """One batch file of `cifar-10-batches-py` (a Python 2 pickle) as a dict with str keys."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"cannot read CIFAR batch {path} ({e}).") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR batch (a dict).")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_cifar_batches(folder: str | os.PathLike, split: str = "test") -> ImageSet:
    """CIFAR-10 from the official `cifar-10-batches-py` folder (train: data_batch_1..5)."""
    folder = Path(folder)
    _check_split(split)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        if not (folder / name).is_file():
            raise UserError(f"{folder} is missing the CIFAR batch file {name}.")
        batch = read_cifar_pickle(folder / name)
        data = np.asarray(batch.get("data"))
        y = np.asarray(batch.get("labels"), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise UserError(f"{folder / name}: 'data' must be uint8 (N, 3072).")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y)
    return ImageSet(
        np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), CIFAR10_CLASSES
    )


def is_cifar_batches(folder: Path) -> bool:
    return (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file()


# ------------------------------------------------------------------------------ download


def cache_dir() -> Path:
    """Where downloads are kept: $DSMOOTH_CACHE, else ~/.cache/dsmooth."""
    return Path(os.environ.get("DSMOOTH_CACHE") or Path.home() / ".cache" / "dsmooth")


def download(url: str, dest: str | os.PathLike, md5: str | None = None, timeout: float = 30.0):
    """Fetch `url` to `dest` atomically (a partial file never takes its name), checking
    the MD5 when given; a network failure or a wrong checksum is a UserError."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                while chunk := r.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if md5 is not None and digest.hexdigest() != md5:
            raise UserError(
                f"download of {url} is corrupt (MD5 {digest.hexdigest()}, expected {md5})."
            )
        os.replace(tmp, dest)
    except OSError as e:  # URLError, timeouts and HTTP errors are OSErrors
        raise UserError(f"cannot download {url} ({e}); check the connection.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def cifar10_folder(
    url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5, root: Path | None = None
) -> Path:
    """The cached `cifar-10-batches-py` folder, downloading and extracting it once."""
    root = Path(root) if root is not None else cache_dir() / "cifar10"
    folder = root / "cifar-10-batches-py"
    if is_cifar_batches(folder):
        return folder
    archive = download(url, root / "cifar-10-python.tar.gz", md5)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")  # no absolute paths, links or devices
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"cannot extract {archive} ({e}).") from None
        extracted = Path(tmp) / "cifar-10-batches-py"
        if not is_cifar_batches(extracted):
            raise UserError(f"{archive} does not contain cifar-10-batches-py.")
        if not folder.exists():
            shutil.move(str(extracted), str(folder))
    archive.unlink()
    return folder


# -------------------------------------------------------------------------- image folders


def load_image_folder(
    folder: str | os.PathLike, size: int | None = None, resize: int | None = None
) -> ImageSet:
    """An image folder (one subfolder per class). With `size`, each image's shorter side is
    resized to `resize` (default: size * 8/7, i.e. 256 for 224 as in ImageNet practice)
    and the centre `size` x `size` crop is kept; without it all images must share a size."""
    from tqdm import tqdm

    listing = load_folder(Path(folder), size, resize)  # classes, labels; reads one at a time
    n = len(listing)
    images = [listing.array(i) for i in tqdm(range(n), desc="images", unit="img", disable=n < 1000)]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UserError(
            f"{folder}: images have different sizes ({len(shapes)} kinds); give a size "
            "(--size) to resize and crop them."
        )
    return ImageSet(
        np.stack(images), listing.labels, listing.classes, listing.files, labels_from_folders=True
    )


# ------------------------------------------------------------------------------ dispatch


def load_dataset(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    split: str = "test",
    size: int | None = None,
) -> ImageSet:
    """Images and labels from any supported source (see the module doc)."""
    _check_split(split)
    if not isinstance(spec, (str, os.PathLike)):
        return load_npz_files(list(spec))
    text = str(spec)
    path = Path(text)
    if not path.exists():
        return _load_named(text, split)
    if path.is_file():
        if path.suffix != ".npz":
            raise UserError(f"{path}: expected a .npz file, a folder, or cifar10.")
        return load_npz_files([path])
    return _load_folder(path, split, size)


def _load_named(text: str, split: str) -> ImageSet:
    """A spec that names no existing file or folder: cifar10, a comma-separated list of
    .npz files, or FILE.npz:PREFIX."""
    if text.lower() == "cifar10":
        return load_cifar_batches(cifar10_folder(), split)
    if "," in text:
        return load_npz_files([p.strip() for p in text.split(",") if p.strip()])
    if ".npz:" in text:
        file, prefix = text.rsplit(":", 1)
        return load_npz_files([file], prefix)
    raise UserError(f"data not found: {Path(text)}.")


def _load_folder(path: Path, split: str, size: int | None) -> ImageSet:
    """CIFAR-10 batches, the split's .npz files, or class subfolders of images."""
    if is_cifar_batches(path):
        return load_cifar_batches(path, split)
    if is_cifar_batches(path / "cifar-10-batches-py"):
        return load_cifar_batches(path / "cifar-10-batches-py", split)
    npz = sorted(p for p in path.glob("*.npz") if split in p.stem)
    if npz:
        return load_npz_files(npz)
    if any(d.is_dir() for d in path.iterdir()):
        return load_image_folder(path, size)
    raise UserError(
        f"{path} holds no *{split}*.npz files, no cifar-10-batches-py and no class subfolders."
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")


class BatchLoader:
    """Shuffled mini-batches (x float [0, 1] NCHW, y int64) of an ImageSet held in memory.

    `augment` applies dsmooth.data.transforms.random_crop_flip, the one training uses;
    the order and augmentation are reproducible from `seed` and the epoch (`set_epoch`;
    advanced automatically after each pass)."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
    ):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}.")
        images = data.images
        if images.dtype != np.uint8:
            images = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(data.labels, dtype=np.int64)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.drop_last, self.seed, self.channels_last = drop_last, seed, channels_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.labels)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        self.epoch += 1
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            batch = torch.from_numpy(np.take(self.images, idx, axis=0))
            if self.augment:
                batch = random_crop_flip(batch, generator)
            x = to_float_nchw(batch).contiguous(memory_format=fmt)
            yield x, torch.from_numpy(self.labels[idx])


class ImageDataset(torch.utils.data.Dataset):
    """An ImageSet as a torch Dataset of (float [0, 1] CHW image, label), for DataLoader."""

    def __init__(self, data: ImageSet):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data.image(i), int(self.data.labels[i])
