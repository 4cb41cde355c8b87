"""Counter-based uniforms: a fixed value in (0, 1) per (a, b) pair and salt, without a table or
a generator's state, so it does not depend on how the rows are cut or ordered (user buckets,
chunks)."""
from __future__ import annotations

import numpy as np


def pair_uniform(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of the pair ``(a, b)`` mixed with ``salt``, as float64 in (0, 1)."""
    salt_mix = np.uint64((int(salt) * 0x632BE59BD9B4E019) % (1 << 64))
    x = (np.asarray(a).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ \
        (np.asarray(b).astype(np.uint64) + salt_mix)
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
