"""From raw pixels to network inputs, one batch at a time, on the device.

Images stay raw (integer pixels, uint8) everywhere they are stored, on the host or the
device; a batch becomes float32 network input only when a program needs it. The rule the
whole library follows: **integer images are raw pixels, floating-point images are network
inputs** (synthetic images, already preprocessed real ones). :func:`apply` (traceable) and
:func:`apply_host` (NumPy) turn the first into the second and leave the second alone.

The reference preprocessing (the paper's protocol; the MTT code's transforms):

* standardisation: ``(v / white - mean_c) / std_c`` per channel c, ``white`` the raw value
  of full intensity (255 for 8-bit images);
* ZCA whitening: ``(v / white - mu) @ W`` on the flattened HWC image (:mod:`.zca`).

The per-pixel part is a table of ``levels x channels`` float32 values, computed once on the
host with exactly the operations of a float32 NumPy pipeline (``x = raw.astype(float32);
x /= white; x -= mean; x /= std``) and looked up on the device. A lookup reproduces those
values bit for bit, where XLA would compute ``x / c`` as ``x * (1 / c)`` and round
differently. The ZCA product runs at full float32 precision on every backend.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mct_jax.data.zca import ZCA, apply_zca

LEVELS = 256   # the raw values of uint8 pixels


class Preprocessing(NamedTuple):
    """What turns raw pixels into network inputs, as arrays: a pytree that jitted programs
    take as an argument (the ZCA matrix is not baked into their code)."""
    levels: np.ndarray            # [LEVELS, C] float32: the input value of raw level v in
                                  # channel c (standardised, or v / white before ZCA)
    zca_mean: np.ndarray | None = None       # [D] float32
    zca_transform: np.ndarray | None = None  # [D, D] float32


def unit_levels(white: float, channels: int) -> np.ndarray:
    """[LEVELS, C] float32 ``v / white`` (as float32 NumPy divides)."""
    out = np.arange(LEVELS).astype(np.float32)
    out /= np.float32(white)
    return np.repeat(out[:, None], channels, axis=1)


def make(mean, std, white: float, zca: ZCA | None = None) -> Preprocessing:
    """The preprocessing of a dataset: standardisation with ``mean``/``std`` ([C]), or ZCA
    whitening (then without standardisation, as the reference), of raw values in
    ``[0, white]``."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    levels = unit_levels(white, len(mean))
    if zca is not None:
        return Preprocessing(levels, zca.mean, zca.transform)
    levels -= mean
    levels /= std
    return Preprocessing(levels)


def is_raw(x) -> bool:
    """Whether ``x`` holds raw pixels (an integer dtype) rather than network inputs."""
    return np.issubdtype(np.dtype(x.dtype), np.integer)


def apply(prep: Preprocessing | None, x):
    """Network inputs of a batch (traceable): raw [..., H, W, C] integer images through
    ``prep``; floating-point images are returned as they are."""
    if not is_raw(x):
        return x
    if prep is None:
        raise ValueError('raw (integer) images need their Preprocessing to become network '
                         'inputs; pass the dataset\'s preprocessing.')
    channels = x.shape[-1]
    out = jnp.asarray(prep.levels).reshape(-1)[x.astype(jnp.int32) * channels
                                               + jnp.arange(channels)]
    if prep.zca_transform is not None:
        lead = x.shape[:-3]
        flat = out.reshape(lead + (-1,)) - prep.zca_mean
        out = jnp.matmul(flat, prep.zca_transform,
                         precision=jax.lax.Precision.HIGHEST).reshape(x.shape)
    return out


def apply_host(prep: Preprocessing | None, x) -> np.ndarray:
    """:func:`apply` in NumPy, for the few images that initialise a synthetic set or seed a
    baseline; float32 out."""
    x = np.asarray(x)
    if not is_raw(x):
        return x.astype(np.float32, copy=False)
    if prep is None:
        raise ValueError('raw (integer) images need their Preprocessing; pass the '
                         "dataset's preprocessing.")
    levels = np.asarray(prep.levels)
    out = levels[x, np.arange(x.shape[-1])]
    if prep.zca_transform is not None:
        out = apply_zca(ZCA(np.asarray(prep.zca_mean), np.asarray(prep.zca_transform), None),
                        out)
    return out
