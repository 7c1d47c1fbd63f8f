"""CPU fast paths for training: bf16 autocast and channels_last.

bf16 is only fast on CPUs with AMX (or AVX512-BF16); elsewhere PyTorch emulates it and
it is tens of times slower than fp32 (measured: an AMD EPYC without AVX-512 ran a bf16
matmul ~60x slower). `auto` therefore picks bf16 only when the hardware has it.
"""

from __future__ import annotations

import contextlib

import torch

from dsmooth.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_is_fast() -> bool:
    """True when this CPU has native bf16 matrix units (AMX tiles or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if bf16_is_fast() else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """A context running the forward pass in bf16 where `precision` says so."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format
