"""The evaluation architectures' layer mathematics, as PyTorch defines them, in NHWC.

Pure functions on arrays; :mod:`mct_jax.models.modules` wraps them as Flax layers holding
their parameters. The reference networks (MTT's ``networks.py``, which the field's
cross-architecture tables use) are PyTorch modules with PyTorch's default initialisation,
reproduced here: :func:`uniform_init`, :func:`convolve` (``torch.nn.Conv2d``),
:func:`batch_norm` (``torch.nn.BatchNorm2d``), :func:`max_pool` and :func:`avg_pool`.

The convolution has two forms with the same values: ``'lax'``
(``lax.conv_general_dilated``) and ``'im2col'`` (the kernel's windows side by side and one
matrix product, whose derivatives are matrix products, pads and slices). Which one a
backend runs by default is :data:`CONV_FORM_BY_BACKEND`, chosen from ``benchmarks/bench_conv.py``'s
measurements (docs/benchmarks.md, "The evaluation architectures' convolution").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from mct_jax.models.conv_net import instance_norm, patches  # noqa: F401 (re-exported)

NORM_EPS = 1e-5
BATCH_NORM_MOMENTUM = 0.1   # PyTorch's: running = (1 - m) running + m batch
NORMS = ('instancenorm', 'batchnorm', 'none')
CONV_FORM_CHOICES = ('im2col', 'lax')
# The convolution's form per backend (jax.default_backend()); any other backend runs 'lax'.
CONV_FORM_BY_BACKEND = {'cpu': 'im2col'}


def uniform_init(fan_in: int):
    """PyTorch's default initialiser of convolutions and dense layers, as a Flax
    initialiser: U[-1/sqrt(fan_in), 1/sqrt(fan_in)] for weights and biases alike."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def conv_form(backend: str | None = None) -> str:
    """The convolution form ``backend`` (default: JAX's default backend) runs:
    :data:`CONV_FORM_BY_BACKEND`, else ``'lax'``."""
    return CONV_FORM_BY_BACKEND.get(backend or jax.default_backend(), 'lax')


def convolve(x, w, stride: int = 1, padding: int = 1, form: str | None = None):
    """Cross-correlation with zero padding on every side, as ``torch.nn.Conv2d`` (no bias).

    Args:
      x: [B, H, W, C_in].
      w: [kh, kw, C_in, C_out].
      form: ``'im2col'`` or ``'lax'``; None: :func:`conv_form`.
    Returns:
      [B, H', W', C_out].
    """
    form = form or conv_form()
    if form == 'im2col':
        kh, kw, _, c_out = w.shape
        cols = patches(x, kh, kw, stride, padding)
        return jnp.einsum('bhwk,ko->bhwo', cols, w.reshape(-1, c_out))
    if form == 'lax':
        return lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    raise ValueError(f'Unknown convolution form {form!r}; choose one of {CONV_FORM_CHOICES}.')


def batch_norm(scale, bias, stats: dict, x, train: bool):
    """``torch.nn.BatchNorm2d`` (eps 1e-5, momentum 0.1): ``(y, stats)``, ``stats`` being
    ``{'mean': [C], 'var': [C]}``.

    Training normalises with the batch's mean and biased variance over (B, H, W) and moves
    the running statistics towards the batch's mean and *unbiased* variance; inference
    normalises with the running statistics and returns them unchanged.
    """
    if train:
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        n = x.size // x.shape[-1]
        m = BATCH_NORM_MOMENTUM
        stats = {'mean': (1 - m) * stats['mean'] + m * lax.stop_gradient(mean),
                 'var': (1 - m) * stats['var'] + m * lax.stop_gradient(var) * n / max(n - 1, 1)}
    else:
        mean, var = stats['mean'], stats['var']
    y = (x - mean) * lax.rsqrt(var + NORM_EPS)
    return y * scale + bias, stats


def max_pool(x, size: int = 2):
    """``size x size`` max pooling, stride ``size``, odd remainders dropped (floor mode)."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, size, size, 1), (1, size, size, 1),
                             'VALID')


def avg_pool(x, size: int = 2):
    """``size x size`` average pooling, stride ``size``, odd remainders dropped."""
    s = lax.reduce_window(x, 0.0, lax.add, (1, size, size, 1), (1, size, size, 1), 'VALID')
    return s / (size * size)


def relu(x):
    return jnp.maximum(x, 0)


def flatten(x):
    """[B, ...] -> [B, features], in (H, W, C) order (PyTorch flattens (C, H, W))."""
    return x.reshape(x.shape[0], -1)
