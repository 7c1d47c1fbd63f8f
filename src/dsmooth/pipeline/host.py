"""What this host has: CPU model and flags, and whether bf16 runs in hardware.

One detector for the engine, the OpenVINO backend, training and the bench, so `auto`
means the same everywhere.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (else what the platform says)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 matmuls run in hardware (AMX or AVX512-BF16 CPUs, bf16 GPUs).

    Elsewhere bf16 is emulated and far slower than fp32 (on an AVX2-only CPU a 4096^2
    bf16 matmul is ~50x slower than fp32), so `auto` must not pick it.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())
    return False
