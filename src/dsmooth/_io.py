"""Files that are always either the old version or the new one, whole.

A crash, a full disk or a kill between `open` and the last `write` must never leave a
half-written log, checkpoint, record or plot behind: every writer here writes a temporary
file beside the target, flushes it to disk, renames it over the target (atomic on POSIX
within a folder) and flushes the folder, so the rename itself survives a power cut.
A folder of files that belong together (a checkpoint: weights and config) is written the
same way as a whole: a temporary folder beside it, swapped in by one rename.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
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


@contextmanager
def replacing_folder(path: str | os.PathLike, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary folder to fill; when the block ends normally it takes `path`'s
    place in one step, holding also the files of the old folder it did not rewrite
    (hard links: a model card or a training state stay) and the old folder's mode. When
    the block raises, it is removed and `path` is left as it was. Readers see the old
    folder or the new one.

    A symlinked `path` is replaced where it points. A folder that cannot be swapped (a
    mount point, or one whose parent is not writable) gets the new files one by one
    instead, each whole, the names in `last` after the others, in that order.
    """
    path = Path(os.path.realpath(path))
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and (os.path.ismount(path) or not os.access(parent, os.W_OK)):
        with _file_by_file(path, last) as tmp:
            yield tmp
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        if path.is_dir():
            _carry_over(path, tmp)
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        else:
            os.chmod(tmp, 0o777 & ~_umask())
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _fsync(file)
        sync_folder(tmp)
        _swap_in(tmp, path)
        sync_folder(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap: the old folder


@contextmanager
def _file_by_file(path: Path, last: Sequence[str]) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=".", suffix=".tmp", dir=path))
    try:
        yield tmp
        names = sorted(f.name for f in tmp.iterdir() if f.name not in last)
        for name in [*names, *(n for n in last if (tmp / n).exists())]:
            commit(tmp / name, path / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _carry_over(old: Path, new: Path) -> None:
    """Entries of `old` that `new` lacks, linked (or copied) into `new`."""
    for entry in old.iterdir():
        target = new / entry.name
        ours = entry.name.startswith(".") and entry.name.endswith(".tmp")  # a temporary
        if ours or target.exists() or target.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target, follow_symlinks=False)


def _link_or_copy(src, dst, *, follow_symlinks: bool = True) -> None:
    if os.path.islink(src) and not follow_symlinks:
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


def _swap_in(new: Path, path: Path) -> None:
    """Put folder `new` at `path`; an old folder there ends up at `new`'s name.

    Linux exchanges the two names atomically (renameat2 with RENAME_EXCHANGE). Elsewhere
    the old folder is first renamed aside, so a crash between the two renames leaves it
    beside `path` as `.<name>.*.old`, whole, rather than a mix of old and new files.
    """
    if not path.exists():
        os.rename(new, path)
        return
    if _exchange(new, path):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rmdir(aside)
    os.rename(path, aside)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(aside, path)
        raise
    os.rename(aside, new)  # removed by the caller with the temporary folder


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` atomically; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (
        errno.ENOSYS,
        errno.EINVAL,
        errno.ENOTSUP,
        errno.EOPNOTSUPP,
        errno.EPERM,
        errno.EXDEV,
    ):
        return False
    raise OSError(code, os.strerror(code), str(b))
