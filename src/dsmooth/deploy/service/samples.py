"""The noisy copies of one image, drawn exactly as `Smooth.sample_counts` draws them.

A stream is keyed by (seed, index, stage) and made of fixed blocks (dsmooth.certify.noise), so
taking its samples in chunks of any size gives the same samples as one draw: the server
may split a need across batches and still feed the classifier the offline inputs.
"""

from __future__ import annotations

import hashlib
import hmac

import torch

from dsmooth.certify.noise import NoiseStream
from dsmooth.certify.smooth import check_image


def keyed_seed(secret: bytes, seed: int) -> int:
    """The seed a server with a noise secret really uses for a request's `seed`.

    A smoothing certificate holds for images chosen without knowing the noise. With public
    seeds anyone who knows the base model can search for an image whose fixed noise draws
    over-estimate pA and get a wrong certificate; keyed by a secret, the noise stays
    unpredictable to clients, while the operator, who holds the secret, can still
    reproduce any answer offline with `Smooth(..., seed=keyed_seed(secret, seed))`.
    """
    digest = hmac.new(secret, int(seed).to_bytes(8, "big"), hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big")  # the noise key takes 32-bit seeds


class ImageSamples:
    """Noisy copies x + d of one CHW image for any stage, in stream order.

    `noise` is "gaussian" (float noise added to x) or "lattice" (the Gaussian rounded to
    the 1/255 grid, for 8-bit images; a UserError for any other image).
    """

    def __init__(
        self, x, sigma: float, *, seed: int, index: int, noise: str, device: torch.device | str
    ):
        self.device = torch.device(device)
        self.x = check_image(x).to(self.device)
        self.shape = tuple(self.x.shape)
        self.sigma, self.seed, self.index, self.noise = float(sigma), int(seed), int(index), noise
        self._levels = None
        if noise == "lattice":
            from dsmooth.certify.lattice import to_levels

            self._levels = to_levels(self.x).to(torch.int32)
        self._stage: int | None = None
        self._stream = None
        self.offset = 0

    def take(self, stage: int, offset: int, m: int) -> torch.Tensor:
        """Samples offset .. offset + m - 1 of stage `stage`, shape (m, C, H, W).

        Streams are read forward only: a new stage starts at 0, the same stage continues
        where it stopped; anything else is a scheduling bug.
        """
        if stage != self._stage:
            if offset != 0:
                raise RuntimeError(f"stage {stage} must start at offset 0, not {offset}")
            self._stage, self._stream, self.offset = stage, self._open(stage), 0
        if offset != self.offset:
            raise RuntimeError(f"stage {stage} is at sample {self.offset}, not {offset}")
        self.offset += m
        if self._levels is not None:
            from dsmooth.certify.lattice import from_levels

            return from_levels(self._stream.take(m).to(torch.int32).add_(self._levels))
        return self._stream.take(m).add_(self.x)

    def _open(self, stage: int):
        if self._levels is not None:
            from dsmooth.certify.lattice import LatticeNoiseStream

            return LatticeNoiseStream(
                self.shape, self.sigma, seed=self.seed, index=self.index, stage=stage,
                device=self.device,
            )  # fmt: skip
        return NoiseStream(
            self.shape, self.sigma, seed=self.seed, index=self.index, stage=stage,
            device=self.device,
        )  # fmt: skip
