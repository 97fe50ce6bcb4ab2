"""ZCA whitening as the reference fits it: ``kornia.enhance.ZCAWhitening(eps=0.1)``.

The covariance is accumulated chunk by chunk straight from the raw (uint8) images, so the
float32 (or float64) copy of the whole split never exists; only the D x D matrices do (D =
H * W * C: 75 MB each in float64 for CIFAR, 1.2 GB for Tiny ImageNet).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mct_jax.data.catalog import DataError

# Rows per chunk: bounds the temporaries of fitting and applying to chunk * D floats.
ROWS_PER_CHUNK = 4096
# Above this many features the D x D float64 matrices no longer fit a workstation
# (128 x 128 x 3 = 49,152 features would need 19 GB each); the reference whitens only the
# 32 px datasets.
MAX_FEATURES = 64 * 64 * 3


class ZCA(NamedTuple):
    """A fitted ZCA whitening over flattened HWC features (D = H * W * C).

    ``transform = U diag(1 / sqrt(S + eps)) U^T`` and ``inverse = U diag(sqrt(S + eps)) U^T``
    where ``U diag(S) U^T`` is the training covariance.
    """
    mean: np.ndarray       # [D] float32, per-feature training mean
    transform: np.ndarray  # [D, D] float32, whitening matrix (symmetric)
    inverse: np.ndarray    # [D, D] float32, its inverse (symmetric)


def fit_zca(x, eps: float = 0.1, to_unit=None) -> ZCA:
    """Fits ZCA whitening as ``kornia.enhance.ZCAWhitening(eps)`` (the reference's) does.

    Per-feature mean over samples, unbiased covariance ``C = Xc^T Xc / (N - 1)``, its
    eigendecomposition ``C = U diag(S) U^T`` in float64, then
    ``transform = U diag((S + eps)^-1/2) U^T`` and ``inverse = U diag((S + eps)^1/2) U^T``.
    Whitened training data therefore has covariance ``U diag(S / (S + eps)) U^T``: identity
    on high-variance directions, damped on the low-variance ones. kornia flattens CHW, we
    flatten HWC; the two transforms differ only by a permutation of features, so whitened
    images are the same.

    Args:
      x: [N, H, W, C] training images, N >= 2: values in [0, 1], or raw pixels that
        ``to_unit`` maps to [0, 1] (any array with row slicing: in memory or memory-mapped).
      eps: regularisation added to the eigenvalues, > 0.
      to_unit: maps a chunk of rows of ``x`` to float32 values in [0, 1]; None for images
        already in [0, 1].

    Returns:
      ZCA with mean [D], transform and inverse [D, D], float32.
    """
    if len(x.shape) != 4:
        raise DataError(f'fit_zca expects images [N, H, W, C], got shape {x.shape}.')
    n, d = x.shape[0], int(np.prod(x.shape[1:]))
    if n < 2:
        raise DataError(f'fit_zca needs at least 2 images for a covariance, got {n}; '
                        'use more training images per class.')
    if not eps > 0:
        raise DataError(f'ZCA eps must be > 0, got {eps}.')
    if d > MAX_FEATURES:
        raise DataError(f'ZCA of {x.shape[1]}x{x.shape[2]}x{x.shape[3]} images needs {d}x{d} '
                        f'matrices ({8 * d * d / 1e9:.0f} GB each in float64); drop --zca '
                        '(the reference whitens only the 32x32 datasets).')
    to_unit = to_unit or (lambda rows: np.asarray(rows, np.float32))
    chunks = range(0, n, ROWS_PER_CHUNK)
    rows = lambda start: to_unit(x[start:start + ROWS_PER_CHUNK]).reshape(-1, d)
    total = np.zeros(d, np.float64)
    for start in chunks:
        total += rows(start).sum(axis=0, dtype=np.float64)
    mean = total / n
    cov = np.zeros((d, d), np.float64)
    for start in chunks:
        centred = rows(start).astype(np.float64) - mean
        cov += centred.T @ centred
    cov /= n - 1
    s, u = np.linalg.eigh(cov)
    del cov
    # Round-off makes the zero eigenvalues of a rank-deficient covariance (N <= D) slightly
    # negative; the reference's SVD returns them as >= 0.
    s = np.maximum(s, 0.0)
    transform = ((u * (1.0 / np.sqrt(s + eps))) @ u.T).astype(np.float32)
    inverse = ((u * np.sqrt(s + eps)) @ u.T).astype(np.float32)
    return ZCA(mean.astype(np.float32), transform, inverse)


def _flat_matmul(x, matrix, shift_in, shift_out):
    """``(x.reshape(N, D) - shift_in) @ matrix + shift_out`` in row chunks, float32 out."""
    x = np.asarray(x)
    d = matrix.shape[0]
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != d:
        raise DataError(f'ZCA was fitted on {d} features per image, but images of shape '
                        f'{x.shape[1:]} were given; use images of the shape it was fitted on.')
    flat = x.reshape(x.shape[0], d)
    out = np.empty(flat.shape, np.float32)
    for start in range(0, flat.shape[0], ROWS_PER_CHUNK):
        rows = flat[start:start + ROWS_PER_CHUNK].astype(np.float32)
        if shift_in is not None:
            rows -= shift_in
        np.matmul(rows, matrix, out=out[start:start + len(rows)])
        if shift_out is not None:
            out[start:start + len(rows)] += shift_out
    return out.reshape(x.shape)


def apply_zca(zca: ZCA, x) -> np.ndarray:
    """Whitens [N, H, W, C] images in [0, 1]: ``(x - mean) @ transform`` on flattened
    features; float32 out."""
    return _flat_matmul(x, zca.transform, zca.mean, None)


def invert_zca(zca: ZCA, x) -> np.ndarray:
    """Undoes :func:`apply_zca`: ``x @ inverse + mean``; float32 images in the raw [0, 1]
    scale (not clipped)."""
    return _flat_matmul(x, zca.inverse, None, zca.mean)
