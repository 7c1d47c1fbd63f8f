"""Fast paths for training: bf16 autocast and channels_last.

bf16 is only fast on CPUs with AMX (or AVX512-BF16); elsewhere PyTorch emulates it and
it is tens of times slower than fp32 (measured: an AMD EPYC without AVX-512 ran a bf16
matmul ~60x slower). `auto` therefore picks bf16 only when the hardware has it: on a CPU
with those units, on a CUDA GPU where `torch.cuda.is_bf16_supported()` (Ampere and
later); `pipeline.host.native_bf16` is the one detector.
"""

from __future__ import annotations

import contextlib

import torch

from dsmooth.errors import UserError
from dsmooth.pipeline.host import native_bf16

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for a requested precision on `device`. auto: bf16 where it is
    native, i.e. on CPUs with AMX or AVX512-BF16 and on CUDA GPUs for which
    `torch.cuda.is_bf16_supported()`; fp32 elsewhere (CPUs without them, older GPUs)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """A context running the forward pass in bf16 where `precision` says so, as autocast of
    `device`'s type (cpu or cuda); otherwise nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def threads(n: int | None):
    """Use `n` torch CPU threads inside the block (None: leave as is), then restore.

    On a loaded machine fewer threads can be much faster: measured here with ~7 busy
    processes on 2 cores, ResNet-110 training ran ~12 img/s on 1 thread and ~6 on 2."""
    before = torch.get_num_threads()
    if n:
        if n < 1:
            raise UserError(f"threads must be at least 1, got {n}.")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format
