"""Gaussian noise that depends only on (seed, image index, stage, sample number).

Samples are drawn in fixed blocks, each from its own counter-based generator keyed by the
full (seed, index, stage, block), so the noise an image sees does not depend on the batch
size, on sharding, or on how many workers ran, and no two blocks of a run share noise.

Noise version 2 (dsmooth 0.2). Noise is drawn in float64 and then rounded to float32, so
its tails are those of a true Gaussian. Version 1 drew float32 normals from torch's CPU
generator, which builds them from 24-bit uniforms: its largest possible draw was 5.77
sigma, and a 3x224x224 image has about a 1e-3 chance that true noise exceeds that
somewhere. That generator also kept only 32 bits of its seed, so distinct blocks could
share noise. On the CPU a block is numpy's Philox-4x64 with a 128-bit key hashed from
(seed, index, stage) and the block number in its counter; on CUDA, torch's Philox
seeded with 64 bits hashed from all four coordinates. Every sample differs from
version 1, so logs record `NOISE_VERSION`.
"""

from __future__ import annotations

import numpy as np
import torch

#: Changes whenever the noise an image sees changes; recorded with every result log.
NOISE_VERSION = 2

#: Samples per independently keyed block. Changing it changes every result.
BLOCK = 256

#: Stage numbers keep selection (n0) and estimation (n) samples independent.
STAGE_SELECT = 0
STAGE_ESTIMATE = 1
STAGE_PREDICT = 2

#: Stages SEQUENTIAL_FIRST_STAGE + r (r < SEQUENTIAL_MAX_ROUNDS) are reserved for round r of
#: sequential certification (dsmooth.certify.sequential), so no round reuses another's noise.
SEQUENTIAL_FIRST_STAGE = 1000
SEQUENTIAL_MAX_ROUNDS = 1000


def sequential_stage(round_no: int) -> int:
    """The noise stage of sequential round `round_no` (fresh samples in every round)."""
    if not 0 <= round_no < SEQUENTIAL_MAX_ROUNDS:
        raise ValueError(f"sequential round {round_no} outside [0, {SEQUENTIAL_MAX_ROUNDS})")
    return SEQUENTIAL_FIRST_STAGE + round_no


def block_seed(seed: int, index: int, stage: int, block: int) -> int:
    """A 64-bit seed hashed from the four coordinates (SeedSequence), for generators that
    take one integer (torch's CUDA Philox, evaluation draws)."""
    state = np.random.SeedSequence([seed, index, stage, block]).generate_state(2, np.uint64)
    return int((int(state[0]) ^ (int(state[1]) << 1)) & ((1 << 63) - 1))


def philox_key(seed: int, index: int, stage: int) -> np.ndarray:
    """The 128-bit Philox key of one (seed, index, stage) stream."""
    return np.random.SeedSequence([seed, index, stage]).generate_state(2, np.uint64)


def gaussian_block(
    key: np.ndarray, block: int, shape: tuple[int, ...], sigma: float
) -> torch.Tensor:
    """Block `block` of a stream: N(0, sigma^2) of `shape`, drawn in float64, as float32."""
    bits = np.random.Philox(key=key, counter=np.array([0, block, 0, 0], dtype=np.uint64))
    draws = np.random.Generator(bits).standard_normal(shape)
    draws *= sigma
    return torch.from_numpy(draws.astype(np.float32))


def normal(
    shape: tuple[int, ...], sigma: float, *, seed: int, index: int, stage: int, block: int = 0
) -> torch.Tensor:
    """One CPU block of noise of any shape (evaluation draws, visualisation)."""
    return gaussian_block(philox_key(seed, index, stage), block, tuple(shape), sigma)


class BlockStream:
    """Samples of `shape` for one (seed, index, stage), taken in order from keyed blocks
    of BLOCK samples, whatever sizes they are taken in. Subclasses make each block."""

    def __init__(
        self,
        shape: tuple[int, ...],
        sigma: float,
        *,
        seed: int,
        index: int,
        stage: int,
        device: torch.device | str = "cpu",
    ):
        self.shape = tuple(shape)
        self.sigma = float(sigma)
        self.seed, self.index, self.stage = int(seed), int(index), int(stage)
        self.device = torch.device(device)
        self._key = philox_key(self.seed, self.index, self.stage)
        self._block_no = 0
        self._buffer: torch.Tensor | None = None
        self._offset = 0

    def _next_block(self) -> torch.Tensor:
        raise NotImplementedError

    def take(self, m: int) -> torch.Tensor:
        """The next m samples, shape (m, *shape)."""
        parts = []
        while m > 0:
            if self._buffer is None or self._offset >= BLOCK:
                self._buffer, self._offset = self._next_block(), 0
                self._block_no += 1
            k = min(m, BLOCK - self._offset)
            parts.append(self._buffer[self._offset : self._offset + k])
            self._offset += k
            m -= k
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class NoiseStream(BlockStream):
    """Yields N(0, sigma^2) noise of `shape` for one (seed, index, stage), in order."""

    def _next_block(self) -> torch.Tensor:
        block_no = self._block_no
        if self.device.type == "cpu":
            return gaussian_block(self._key, block_no, (BLOCK, *self.shape), self.sigma)
        generator = torch.Generator(self.device)
        generator.manual_seed(block_seed(self.seed, self.index, self.stage, block_no))
        draws = torch.randn(
            (BLOCK, *self.shape), generator=generator, device=self.device, dtype=torch.float64
        )
        return draws.mul_(self.sigma).to(torch.float32)
