"""Vectorised training augmentation on uint8 NHWC batches: random crop (zero padding)
and horizontal flip, then conversion to float32 NCHW in [0, 1].

Done on whole batches with one gather, because per-image Python transforms would cost
more than the forward pass of a small CIFAR network on this CPU.
"""

from __future__ import annotations

import torch


def to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]; float input is kept as is."""
    x = images.permute(0, 3, 1, 2)
    x = x.float().div_(255.0) if images.dtype == torch.uint8 else x.float()
    return x.contiguous()


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random `pad`-padded crops and left-right flips of a (N, H, W, C) batch, same dtype."""
    n, h, w, _ = images.shape
    out = images
    if pad > 0:
        padded = torch.nn.functional.pad(out, (0, 0, pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]
        out = padded[torch.arange(n)[:, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(2), out)
    return out
