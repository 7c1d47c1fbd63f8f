"""Image transforms shared by certification data and training: one resize-and-crop, one
random crop + flip, one uint8 -> float [0, 1] conversion, so both sides see the same pixels."""

from __future__ import annotations

import torch

from dsmooth.errors import UserError


def resize_center_crop(image, size: int, resize: int | None = None):
    """Shorter side to `resize` (bilinear, antialiased), then the centre size x size crop."""
    from PIL import Image

    if size < 1:
        raise UserError(f"image size must be positive, got {size}.")
    resize = resize or round(size * 8 / 7)
    if resize < size:
        raise UserError(f"resize ({resize}) must be at least the crop size ({size}).")
    w, h = image.size
    scale = resize / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


# Training augmentation, vectorised over uint8 NHWC batches: one gather per batch, since
# per-image Python transforms would cost more than a small CIFAR network's forward pass.


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
