"""Sound noise for 8-bit images: Gaussian noise rounded to the 1/255 lattice, sampled exactly.

Float noise is not quite what the theorem assumes: x + d is rounded, and a base classifier
can be built to exploit the rounding so that the usual implementation certifies wrongly
(Voracek and Hein, "Sound Randomized Smoothing in Floating-Point Arithmetic", ICLR 2023).
For an image on the 8-bit lattice, x = m / 255 with integer m, their fix is exact. Let

    h(z) = f(float32(round(255 z)) / 255)    (f after rounding to the lattice).

Since m is an integer, round(255 (x + d)) = m + round(255 d), so h(x + d) = f((m + k) / 255)
with k = round(255 d): an integer whose law is the Gaussian N(0, (255 sigma)^2)
discretised to unit cells, P(k) = Phi((k + 1/2) / s) - Phi((k - 1/2) / s), s = 255 sigma.
This module samples that k by inversion with 128-bit thresholds computed at 192-bit
precision (mpmath), so sampling f((m + k) / 255) *is* sampling h(x + d) for Gaussian d,
and Cohen et al.'s radius holds for the smoothed h, whatever f does with its inputs. The
only departures from the exact law are the thresholds' rounding to 2^-128 and the merging
of the tails beyond +-K (K = 14 s + 1) into +-K; their total variation is below
`total_variation_bound(sigma)` (about 1e-35 per coordinate), so a run of n samples of a
d-pixel image is exact except with probability n * d * 1e-35.

Each block is keyed as the Gaussian noise is (dsmooth.certify.noise): one 64-bit word per
coordinate from Philox-4x64 with the (seed, index, stage) key and counter (0, block, 0, 0).
Only when that word equals a threshold's high word (probability about 2^-50) is the low
word needed; those come, in order, from counter (0, block, 1, 0) of the same key.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from dsmooth.certify.noise import BLOCK, BlockStream
from dsmooth.errors import UserError

#: Intensity levels of an 8-bit image: x = m / LEVELS, m in 0..LEVELS.
LEVELS = 255

#: Tails beyond TAIL_SIGMAS * s are merged into the last cell (Phi(-14) < 1e-44).
TAIL_SIGMAS = 14


#: Top bits of a word that index the bucket table of `Inverse`.
BUCKET_BITS = 16


class Inverse:
    """Inversion of the lattice law from uniform words, with 128-bit thresholds.

    C_j = floor(2^128 Phi((j - K + 1/2) / s)) for j < 2K, and k = -K + #{j : C_j <= U}
    for U uniform on [0, 2^128), so P(k) = (C_{k+K} - C_{k+K-1}) / 2^128. The thresholds
    are computed at 192-bit precision. A table over the top BUCKET_BITS bits of U's high
    word gives the count directly for almost every word; only words in a bucket holding
    two or more thresholds, or equal to a threshold's high word, take the exact slow path.
    """

    def __init__(self, sigma: float):
        import mpmath

        ctx = mpmath.mp.clone()
        ctx.prec = 192
        s = ctx.mpf(float(sigma)) * LEVELS  # exact: the scale of the sigma in the radius
        self.sigma = float(sigma)
        self.half = half = math.ceil(TAIL_SIGMAS * LEVELS * float(sigma)) + 1
        scale, mask = ctx.mpf(2) ** 128, (1 << 64) - 1
        cut = [0] * (2 * half)
        for j in range(half):  # Phi is symmetric: C_{2K-1-j} = 2^128 - ceil(2^128 Phi_j)
            value = ctx.ncdf((ctx.mpf(j - half) + ctx.mpf(1) / 2) / s) * scale
            cut[j] = int(ctx.floor(value))
            cut[2 * half - 1 - j] = (1 << 128) - int(ctx.ceil(value))
        self.hi = np.array([c >> 64 for c in cut], dtype=np.uint64)
        self.lo = np.array([c & mask for c in cut], dtype=np.uint64)
        shift = np.uint64(64 - BUCKET_BITS)
        starts = np.arange(1 << BUCKET_BITS, dtype=np.uint64) << shift
        below = np.searchsorted(self.hi, starts, side="left")  # thresholds before a bucket
        inside = np.diff(np.append(below, len(self.hi)))
        self._table = np.where(inside <= 1, below, -1).astype(np.int32)
        self._padded = np.append(self.hi, np.uint64(mask))  # the "next threshold" of the end
        self._shift = shift

    def total_variation_bound(self) -> float:
        """An upper bound on the total variation between the law of k sampled here and the
        discretised Gaussian: each threshold is within 2^-127 of 2^128 Phi (rounding and
        the 192-bit evaluation), and the tails beyond +-K are merged into +-K."""
        tail = math.erfc((self.half + 0.5) / (LEVELS * self.sigma) / math.sqrt(2))
        return (4 * self.half + 2) * 2.0**-127 + tail

    def offsets(self, words: np.ndarray, low_words) -> np.ndarray:
        """Offsets k from uniform 64-bit `words`; `low_words(count)` returns the next
        uniform low words, asked only for words that tie a threshold's high word."""
        flat = words.reshape(-1)
        count = self._table[flat >> self._shift].astype(np.int64)
        slow = count < 0
        np.maximum(count, 0, out=count)
        following = self._padded[count]
        slow |= following == flat
        count += following < flat
        if slow.any():
            where = np.flatnonzero(slow)
            count[where] = self._exact(flat[where], low_words)
        k = count - self.half
        return k.astype(np.int16 if self.half < 2**15 else np.int32).reshape(words.shape)

    def _exact(self, words: np.ndarray, low_words) -> np.ndarray:
        """#{j : C_j <= U} by binary search on the high words, then the low words on ties."""
        first = np.searchsorted(self.hi, words, side="left")
        last = np.searchsorted(self.hi, words, side="right")
        ties = np.flatnonzero(last > first)
        if len(ties):
            for p, low in zip(ties, low_words(len(ties)), strict=True):
                tied = self.lo[first[p] : last[p]]
                first[p] += int(np.count_nonzero(tied <= low))
        return first


@functools.lru_cache(maxsize=8)
def inverse(sigma: float) -> Inverse:
    """The (cached) inversion for one sigma: building it takes about a second."""
    return Inverse(sigma)


def total_variation_bound(sigma: float) -> float:
    return inverse(sigma).total_variation_bound()


def lattice_block(key: np.ndarray, block: int, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Block `block` of a stream: lattice offsets k of `shape`."""
    main = np.random.Philox(key=key, counter=np.array([0, block, 0, 0], dtype=np.uint64))
    words = main.random_raw(int(np.prod(shape))).reshape(shape)
    aux = np.random.Philox(key=key, counter=np.array([0, block, 1, 0], dtype=np.uint64))
    return inverse(sigma).offsets(words, aux.random_raw)


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """The integers m of an image x = m / 255 (int16), or a UserError for an image that is
    not on the 8-bit lattice (lattice noise is exact only there)."""
    m = torch.round(x * LEVELS)
    if not torch.equal(m.div(LEVELS), x):
        raise UserError(
            "lattice noise needs 8-bit images (every pixel m / 255); this image has other "
            "values: use --noise gaussian, or uint8 data."
        )
    return m.to(torch.int16)


def from_levels(levels: torch.Tensor) -> torch.Tensor:
    """(m + k) / 255 in float32: the same arithmetic that turns uint8 data into x."""
    return levels.to(torch.float32).div_(LEVELS)


class LatticeNoiseStream(BlockStream):
    """Yields lattice offsets k for one (seed, index, stage), in order (int16 or int32),
    drawn on the CPU and moved to the stream's device."""

    def _next_block(self) -> torch.Tensor:
        shape = (BLOCK, *self.shape)
        return torch.from_numpy(lattice_block(self._key, self._block_no, shape, self.sigma))

    def take(self, m: int) -> torch.Tensor:
        """The next m offsets, shape (m, *shape), on the stream's device."""
        return super().take(m).to(self.device)
