"""Gaussian noise that depends only on (seed, image index, stage, sample number).

Samples are drawn in fixed blocks, each from its own generator seeded by
(seed, index, stage, block), so the noise an image sees does not depend on the batch
size, on sharding, or on how many workers ran. Noise is always float32.
"""

from __future__ import annotations

import numpy as np
import torch

#: Samples per independently seeded block. Changing it changes every result.
BLOCK = 256

#: Stage numbers keep selection (n0) and estimation (n) samples independent.
STAGE_SELECT = 0
STAGE_ESTIMATE = 1
STAGE_PREDICT = 2

#: Stages SEQUENTIAL_FIRST_STAGE + r (r < SEQUENTIAL_MAX_ROUNDS) are reserved for round r of
#: sequential certification (dsmooth.sequential), so no round reuses another's noise.
SEQUENTIAL_FIRST_STAGE = 1000
SEQUENTIAL_MAX_ROUNDS = 1000


def sequential_stage(round_no: int) -> int:
    """The noise stage of sequential round `round_no` (fresh samples in every round)."""
    if not 0 <= round_no < SEQUENTIAL_MAX_ROUNDS:
        raise ValueError(f"sequential round {round_no} outside [0, {SEQUENTIAL_MAX_ROUNDS})")
    return SEQUENTIAL_FIRST_STAGE + round_no


def block_seed(seed: int, index: int, stage: int, block: int) -> int:
    """A 63-bit generator seed mixed from the four coordinates (SeedSequence hashing)."""
    state = np.random.SeedSequence([seed, index, stage, block]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class NoiseStream:
    """Yields N(0, sigma^2) noise of `shape` for one (seed, index, stage), in order."""

    def __init__(
        self,
        shape: tuple[int, ...],
        sigma: float,
        seed: int,
        index: int,
        stage: int,
        device: torch.device | str = "cpu",
    ):
        self.shape = tuple(shape)
        self.sigma = float(sigma)
        self.seed, self.index, self.stage = int(seed), int(index), int(stage)
        self.device = torch.device(device)
        self._block_no = 0
        self._buffer: torch.Tensor | None = None
        self._offset = 0
        self._generator = torch.Generator(device=self.device)

    def _next_block(self) -> torch.Tensor:
        self._generator.manual_seed(block_seed(self.seed, self.index, self.stage, self._block_no))
        self._block_no += 1
        block = torch.randn(
            (BLOCK, *self.shape),
            generator=self._generator,
            device=self.device,
            dtype=torch.float32,
        )
        return block.mul_(self.sigma)

    def take(self, m: int) -> torch.Tensor:
        """The next m noise samples, shape (m, *shape)."""
        parts = []
        while m > 0:
            if self._buffer is None or self._offset >= BLOCK:
                self._buffer, self._offset = self._next_block(), 0
            k = min(m, BLOCK - self._offset)
            parts.append(self._buffer[self._offset : self._offset + k])
            self._offset += k
            m -= k
        return parts[0] if len(parts) == 1 else torch.cat(parts)
