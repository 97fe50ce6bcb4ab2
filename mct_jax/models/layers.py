"""Layers of the evaluation architectures as small pure functions over dict pytrees.

The reference networks (MTT's ``networks.py``, which the field's cross-architecture tables
use) are PyTorch modules with PyTorch's default initialisation; these functions reproduce
them in NHWC. Parameters: a convolution is ``{'w': [kh, kw, C_in, C_out], 'b': [C_out]}``
(no ``'b'`` without bias), a dense layer ``{'w': [in, out], 'b': [out]}``, a norm
``{'scale': [C], 'bias': [C]}``. Batch norms also keep running statistics, which are not
parameters: ``{'mean': [C], 'var': [C]}`` in a separate ``stats`` pytree (see
:mod:`mct_jax.models`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from mct_jax.models.conv_net import instance_norm, patches

NORM_EPS = 1e-5
BATCH_NORM_MOMENTUM = 0.1   # PyTorch's: running = (1 - m) running + m batch
NORMS = ('instancenorm', 'batchnorm', 'none')


def uniform(key, shape, fan_in, dtype=jnp.float32):
    """PyTorch's default initialisation of convolutions and dense layers:
    U[-1/sqrt(fan_in), 1/sqrt(fan_in)] for weights and biases alike."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def conv_init(key, kernel: int, c_in: int, c_out: int, bias: bool = True,
              dtype=jnp.float32) -> dict:
    """A ``kernel x kernel`` convolution's parameters (fan_in = kernel^2 * c_in)."""
    kw, kb = jax.random.split(key)
    fan_in = kernel * kernel * c_in
    p = {'w': uniform(kw, (kernel, kernel, c_in, c_out), fan_in, dtype)}
    if bias:
        p['b'] = uniform(kb, (c_out,), fan_in, dtype)
    return p


def conv(p: dict, x, stride: int = 1, padding: int = 1):
    """Cross-correlation with zero padding on every side, as ``torch.nn.Conv2d``.

    x: [B, H, W, C_in] -> [B, H', W', C_out]. Written as im2col
    (:func:`~mct_jax.models.conv_net.patches`, as the ConvNet's ``conv3x3``) and one matrix
    product: its derivatives are matrix products, pads and slices, which XLA:CPU runs faster
    than ``lax.conv_general_dilated``'s for most of the reference networks (the measurements
    are in docs/benchmarks.md).
    """
    kh, kw, _, c_out = p['w'].shape
    cols = patches(x, kh, kw, stride, padding)
    y = jnp.einsum('bhwk,ko->bhwo', cols, p['w'].reshape(-1, c_out))
    return y + p['b'] if 'b' in p else y


def dense_init(key, n_in: int, n_out: int, dtype=jnp.float32) -> dict:
    kw, kb = jax.random.split(key)
    return {'w': uniform(kw, (n_in, n_out), n_in, dtype), 'b': uniform(kb, (n_out,), n_in, dtype)}


def dense(p: dict, x):
    return x @ p['w'] + p['b']


def norm_init(kind: str, channels: int, dtype=jnp.float32):
    """``(params, stats)`` of a norm: affine scale 1 and shift 0; a batch norm also has
    running mean 0 and variance 1. ``(None, None)`` for ``'none'``."""
    if kind == 'none':
        return None, None
    p = {'scale': jnp.ones((channels,), dtype), 'bias': jnp.zeros((channels,), dtype)}
    if kind == 'batchnorm':
        return p, {'mean': jnp.zeros((channels,), dtype), 'var': jnp.ones((channels,), dtype)}
    if kind == 'instancenorm':
        return p, None
    raise ValueError(f'Unknown norm {kind!r}; choose one of {NORMS}.')


def batch_norm(p: dict, stats: dict, x, train: bool):
    """``torch.nn.BatchNorm2d`` (eps 1e-5, momentum 0.1): ``(y, stats)``.

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
    return y * p['scale'] + p['bias'], stats


def norm(kind: str, p, stats, x, train: bool):
    """Applies a norm of ``kind`` (see :data:`NORMS`): ``(y, stats)``. The instance norm is
    PyTorch's ``GroupNorm(C, C)``, the reference's 'instancenorm'."""
    if kind == 'none':
        return x, stats
    if kind == 'instancenorm':
        return instance_norm(x, p['scale'], p['bias'], NORM_EPS), stats
    return batch_norm(p, stats, x, train)


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
