"""Dataset sources and the training batch loader."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PickleExploit
from PIL import Image

from dsmooth.data.datasets import (
    CIFAR10_CLASSES,
    BatchLoader,
    ImageDataset,
    cifar10_folder,
    download,
    load_cifar_batches,
    load_dataset,
    load_image_folder,
    read_cifar_pickle,
)
from dsmooth.errors import UserError

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray, **extra) -> Path:
    np.savez(path, images=images, labels=labels, **extra)
    return path


def random_images(n: int, seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------- npz


def test_npz_parts_join_in_order(tmp_path):
    a, b = random_images(5, 0), random_images(3, 1)
    save_npz(tmp_path / "set_train_part1.npz", a, np.arange(5))
    save_npz(tmp_path / "set_train_part2.npz", b, np.arange(5, 8))
    save_npz(tmp_path / "set_test.npz", random_images(2, 2), np.array([0, 1]))
    for spec in [
        f"{tmp_path / 'set_train_part1.npz'},{tmp_path / 'set_train_part2.npz'}",
        [tmp_path / "set_train_part1.npz", tmp_path / "set_train_part2.npz"],
    ]:
        joined = load_dataset(spec)
        assert np.array_equal(joined.images, np.concatenate([a, b]))
        assert np.array_equal(joined.labels, np.arange(8))
    folder_train = load_dataset(tmp_path, split="train")
    assert np.array_equal(folder_train.labels, np.arange(8))
    assert len(load_dataset(tmp_path, split="test")) == 2
    with pytest.raises(UserError, match="split"):
        load_dataset(tmp_path, split="validation")


def test_npz_prefixed_arrays_and_errors(tmp_path):
    x = random_images(4, 0)
    path = tmp_path / "subsets.npz"
    np.savez(path, test_first4_images=x, test_first4_labels=np.arange(4))
    got = load_dataset(f"{path}:test_first4")
    assert np.array_equal(got.images, x)
    with pytest.raises(UserError, match="test_first4"):
        load_dataset(path)  # no plain 'images': the message names the prefixes
    with pytest.raises(UserError, match="not found"):
        load_dataset(tmp_path / "missing.npz")
    save_npz(tmp_path / "bad.npz", x, np.arange(3))
    with pytest.raises(UserError, match="4 images but 3 labels"):
        load_dataset(tmp_path / "bad.npz")
    save_npz(tmp_path / "small.npz", random_images(2, 0, size=4), np.arange(2))
    with pytest.raises(UserError, match="different shapes"):
        load_dataset([save_npz(tmp_path / "ok.npz", x, np.arange(4)), tmp_path / "small.npz"])


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="../shared CIFAR-10 not available")
def test_shared_lossless_subset_loads_with_official_labels():
    data = load_dataset(f"{SHARED_CIFAR / 'cifar10_lossless_subsets.npz'}:test_first100")
    assert data.images.shape == (100, 32, 32, 3)
    assert data.images.dtype == np.uint8
    assert data.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


# ------------------------------------------------------------------- CIFAR batches


def write_cifar_batches(folder: Path, per_batch: int = 4) -> dict[str, np.ndarray]:
    """A miniature cifar-10-batches-py in the official layout (pickled dicts, bytes keys,
    rows of 3072 = 3 planes of 32x32). Returns the HWC images per split."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": [], "test": []}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        chw = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        batch = {
            b"batch_label": name.encode(),
            b"labels": [(i + j) % 10 for j in range(per_batch)],
            b"data": chw.reshape(per_batch, 3072),
            b"filenames": [f"{name}_{j}.png".encode() for j in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        images["test" if name == "test_batch" else "train"].append(chw.transpose(0, 2, 3, 1))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}, protocol=2))
    return {k: np.concatenate(v) for k, v in images.items()}


def test_cifar_batches_folder(tmp_path):
    expected = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    train = load_cifar_batches(tmp_path / "cifar-10-batches-py", "train")
    assert train.images.shape == (20, 32, 32, 3)
    assert train.classes == CIFAR10_CLASSES
    assert np.array_equal(train.images, expected["train"])  # planes -> HWC
    assert train.labels[:4].tolist() == [0, 1, 2, 3]
    assert train.labels[4] == 1
    test = load_dataset(tmp_path, split="test")  # the parent folder is found too
    assert np.array_equal(test.images, expected["test"])


def py2_pickle_of_batch(chw: np.ndarray, labels: list[int]) -> bytes:
    """The opcodes Python 2's cPickle (protocol 2) writes for an official batch: py2 `str`
    as BINSTRING and numpy arrays via numpy.core.multiarray._reconstruct."""
    P = pickle

    def s(b: bytes) -> bytes:
        return P.BINSTRING + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return P.BININT + struct.pack("<i", v)

    dtype = P.GLOBAL + b"numpy\ndtype\n" + s(b"u1") + i(0) + i(1) + P.TUPLE3 + P.REDUCE
    dtype += P.MARK + i(3) + s(b"|") + P.NONE * 3 + i(-1) + i(-1) + i(0) + P.TUPLE + P.BUILD
    array = P.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n" + P.GLOBAL + b"numpy\nndarray\n"
    array += i(0) + P.TUPLE1 + s(b"b") + P.TUPLE3 + P.REDUCE
    shape = i(chw.shape[0]) + i(3072) + P.TUPLE2
    array += P.MARK + i(1) + shape + dtype + P.NEWFALSE + s(chw.tobytes()) + P.TUPLE + P.BUILD
    label_list = P.EMPTY_LIST + P.MARK + b"".join(i(v) for v in labels) + P.APPENDS
    body = P.MARK + s(b"batch_label") + s(b"testing batch 1 of 1")
    body += s(b"data") + array + s(b"labels") + label_list
    return P.PROTO + b"\x02" + P.EMPTY_DICT + body + P.SETITEMS + P.STOP


def test_python2_pickled_batch_reads_like_the_official_files(tmp_path):
    chw = np.random.default_rng(5).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder)
    (folder / "test_batch").write_bytes(py2_pickle_of_batch(chw, [7, 8, 9]))
    raw = read_cifar_pickle(folder / "test_batch")
    assert raw["batch_label"] == b"testing batch 1 of 1"
    test = load_cifar_batches(folder, "test")
    assert np.array_equal(test.images, chw.transpose(0, 2, 3, 1))
    assert test.labels.tolist() == [7, 8, 9]


def test_cifar_pickles_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder)
    marker = tmp_path / "pwned"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": PickleExploit(os.mkdir, str(marker)), b"labels": []}, f, protocol=2)
    with pytest.raises(UserError, match=r"refusing to load (posix|os)\.mkdir"):
        read_cifar_pickle(folder / "test_batch")
    with pytest.raises(UserError):
        load_cifar_batches(folder, "test")
    assert not marker.exists()


# -------------------------------------------------------------------------- download


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 serving tmp_path / 'www'."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *_args, **_kwargs: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def make_archive(tmp_path: Path, www: Path) -> tuple[Path, str, dict]:
    expected = write_cifar_batches(tmp_path / "src" / "cifar-10-batches-py")
    archive = www / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest(), expected


def test_cifar10_download_into_cache_over_http(tmp_path, http_server, monkeypatch):
    www, base = http_server
    archive, md5, expected = make_archive(tmp_path, www)
    cache = tmp_path / "cache"
    folder = cifar10_folder(f"{base}/{archive.name}", md5, root=cache)
    assert folder == cache / "cifar-10-batches-py"
    assert np.array_equal(load_cifar_batches(folder, "test").images, expected["test"])
    assert not list(cache.glob("*.tar.gz*"))  # the archive and partial files are gone
    archive.unlink()  # cached: no second download
    assert cifar10_folder(f"{base}/{archive.name}", md5, root=cache) == folder
    monkeypatch.setenv("DSMOOTH_CACHE", str(tmp_path / "cache-env"))
    (tmp_path / "cache-env" / "cifar10").mkdir(parents=True)
    (cache / "cifar-10-batches-py").rename(
        tmp_path / "cache-env" / "cifar10" / "cifar-10-batches-py"
    )
    assert np.array_equal(load_dataset("cifar10", "train").images, expected["train"])


def test_download_checks_md5_and_leaves_nothing(tmp_path, http_server):
    www, base = http_server
    (www / "f.bin").write_bytes(b"payload")
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(UserError, match="corrupt"):
        download(f"{base}/f.bin", dest, md5="0" * 32)
    assert not dest.exists()
    assert not list(dest.parent.iterdir())
    with pytest.raises(UserError, match="cannot download"):
        download(f"{base}/missing.bin", dest)
    assert download(f"{base}/f.bin", dest, hashlib.md5(b"payload").hexdigest()).read_bytes()
    src = tmp_path / "local.bin"
    src.write_bytes(b"local")
    assert download(src.as_uri(), tmp_path / "copy.bin").read_bytes() == b"local"


def test_download_times_out_on_a_silent_server(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections but never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x"
        with pytest.raises(UserError, match="cannot download"):
            download(url, tmp_path / "x", timeout=0.5)
    finally:
        silent.close()


# ----------------------------------------------------------------------- image folders


def test_image_folder_resize_and_center_crop(tmp_path):
    for cls, sizes in {"b_dogs": [(40, 30), (64, 64)], "a_cats": [(30, 50)]}.items():
        (tmp_path / cls).mkdir()
        for i, (w, h) in enumerate(sizes):
            im = np.zeros((h, w, 3), np.uint8)
            r = min(w, h) // 5
            im[h // 2 - r : h // 2 + r, w // 2 - r : w // 2 + r] = 255  # a centred square
            Image.fromarray(im).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "a_cats" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="--size"):
        load_image_folder(tmp_path)
    data = load_dataset(tmp_path, size=16)
    assert data.classes == ["a_cats", "b_dogs"]
    assert data.labels.tolist() == [0, 1, 1]
    assert data.images.shape == (3, 16, 16, 3)
    for im in data.images:  # the centre survives the crop, the corners are background
        assert im[7:9, 7:9].min() > 200
        assert im[0, 0].max() < 30
    x, y = ImageDataset(data)[2]
    assert x.shape == (3, 16, 16)
    assert x.dtype == torch.float32
    assert y == 1


# --------------------------------------------------------------------- batches, augment


def test_batch_loader_epochs_cover_the_data():
    from dsmooth.data.images import ImageSet

    data = ImageSet(random_images(10, 0), np.arange(10))
    loader = BatchLoader(data, batch_size=4, shuffle=True, seed=1)
    assert len(loader) == 3
    epoch1 = list(loader)
    labels = torch.cat([y for _, y in epoch1])
    assert sorted(labels.tolist()) == list(range(10))
    x, y = epoch1[0]
    assert x.shape == (4, 3, 8, 8)
    assert x.dtype == torch.float32
    assert torch.equal(x, data.batch(y.numpy()))  # no augmentation: exact pixels
    epoch2 = torch.cat([y for _, y in loader])
    assert not torch.equal(labels, epoch2)  # a new order each epoch
    loader.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in loader]), labels)  # reproducible
    dropped = BatchLoader(data, batch_size=4, drop_last=True, augment=True)
    batches = list(dropped)
    assert len(dropped) == 2
    assert [len(y) for _, y in batches] == [4, 4]
    xa = batches[0][0]
    assert xa.min() >= 0
    assert xa.max() <= 1
    assert xa.shape == (4, 3, 8, 8)
    cl = next(iter(BatchLoader(data, 4, channels_last=True, augment=True)))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(UserError):
        BatchLoader(data, batch_size=0)


def test_certification_data_accepts_the_extended_specs(tmp_path):
    from dsmooth.data.load import load_images

    x = random_images(4, 0)
    np.savez(tmp_path / "s.npz", test_first4_images=x, test_first4_labels=np.arange(4))
    assert np.array_equal(load_images(f"{tmp_path / 's.npz'}:test_first4").images, x)
    (tmp_path / "parts").mkdir()
    save_npz(tmp_path / "parts" / "d_test.npz", x, np.arange(4))
    assert np.array_equal(load_images(tmp_path / "parts").labels, np.arange(4))
    with pytest.raises(UserError, match="data not found"):
        load_images(tmp_path / "missing.npz")
