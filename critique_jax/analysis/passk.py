"""pass@k: the unbiased estimator of Chen et al. (2021) from n samples with c correct."""

from __future__ import annotations

import numpy as np


def pass_at_k(n: int | np.ndarray, c: int | np.ndarray, k: int) -> np.ndarray:
    """``1 - C(n - c, k) / C(n, k)`` per problem (float64), computed as a stable product.

    n: samples per problem, c: correct samples (0 <= c <= n), k <= n.
    """
    n, c = np.broadcast_arrays(np.asarray(n, np.int64), np.asarray(c, np.int64))
    if k < 1 or np.any(k > n):
        raise ValueError(f"pass@k: k={k} must be in [1, n] (n={n.min() if n.size else n})")
    if np.any((c < 0) | (c > n)):
        raise ValueError("pass@k: correct counts must lie in [0, n]")
    out = np.ones(n.shape, np.float64)
    for idx in np.ndindex(n.shape):
        ni, ci = int(n[idx]), int(c[idx])
        if ni - ci >= k:
            # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
            out[idx] = 1.0 - np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1))
    return out
