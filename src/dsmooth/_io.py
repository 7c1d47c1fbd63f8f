"""Files that are always either the old version or the new one, whole.

A crash, a full disk or a kill between `open` and the last `write` must never leave a
half-written log, checkpoint, record or plot behind: every writer here writes a temporary
file beside the target, flushes it to disk, renames it over the target (atomic on POSIX
within a folder) and flushes the folder, so the rename itself survives a power cut.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_beside(path: str | os.PathLike, keep_suffix: bool = False) -> Path:
    """A hidden, process-unique name in `path`'s folder; `keep_suffix` ends it with
    `path`'s own suffix, for writers that choose the format by it (Keras, ONNX)."""
    path = Path(path)
    tail = f".tmp{path.suffix}" if keep_suffix else ".tmp"
    return path.with_name(f".{path.stem if keep_suffix else path.name}.{os.getpid()}{tail}")


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make the finished file `tmp` durable, then the content of `path`."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_folder(Path(path).parent)


def sync_folder(folder: str | os.PathLike) -> None:
    """fsync a folder, so that a rename in it is on disk (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends normally it replaces `path`
    (`commit`), and when it raises, it is removed and `path` is left as it was."""
    tmp = temporary_beside(path, keep_suffix)
    try:
        yield tmp
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, content, **dump_options) -> None:
    """`content` as JSON (`json.dump` options, e.g. indent) plus a final newline."""
    write_text(path, json.dumps(content, **dump_options) + "\n")
