"""The latent field of the positive controls: one value per (place, time step), uniform on [0, 1]
for every token in both classes, smooth over space and time in one class only.

`uniform_field(points, n_steps, space_len, time_len, smooth, rng)`: with `smooth`, a separable
Gaussian-process field (squared-exponential kernels of length `space_len` over the points and
`time_len` over the steps) mapped through the normal CDF, so a token's value is predictable from
its neighbours; without, independent uniforms. Each token's marginal is exactly uniform either
way, so no statistic of one token tells the classes apart. Used by the fMRI control (places =
parcel centroids, steps = 16-frame patches) and the EEG demo's beta rhythm (places = electrodes,
steps = seconds).

Imports numpy (and scipy inside).
"""

from __future__ import annotations

import numpy as np


def _gaussian_kernel_chol(d: np.ndarray, length: float) -> np.ndarray:
    k = np.exp(-0.5 * (d / length) ** 2) + 1e-6 * np.eye(len(d))
    return np.linalg.cholesky(k)


def uniform_field(
    points: np.ndarray,
    n_steps: int,
    space_len: float,
    time_len: float,
    smooth: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """[len(points), n_steps] values uniform on [0, 1] (see the module docstring)."""
    from scipy.stats import norm

    if not smooth:
        return rng.uniform(size=(len(points), n_steps))
    ds = np.linalg.norm(points[:, None] - points[None], axis=2)
    dt = np.abs(np.subtract.outer(np.arange(n_steps), np.arange(n_steps))).astype(float)
    ls = _gaussian_kernel_chol(ds, space_len)
    lt = _gaussian_kernel_chol(dt, time_len)
    g = ls @ rng.standard_normal((len(points), n_steps)) @ lt.T
    # A separable Gaussian field has unit marginal variance only up to the jitter: rescale each
    # token to exactly N(0, 1), so the uniform mapping is exact.
    g /= np.sqrt((ls**2).sum(1))[:, None] * np.sqrt((lt**2).sum(1))[None, :]
    return norm.cdf(g)
