"""The ConvNet of the trajectory-matching literature as pure ``init``/``apply`` functions.

``ConvNet(width=128, depth=3, norm=instancenorm, act=relu, pool=avgpool)`` (docs/method.md
section 1): each block is conv 3x3 (stride 1, padding 1, bias) -> instance norm (affine) ->
activation -> 2x2 pooling; then flatten -> dense. Parameters are a nested dict pytree::

    {'conv0': {'w': [3, 3, C_in, width], 'b': [width]},
     'norm0': {'scale': [width], 'bias': [width]},
     ...
     'dense': {'w': [features, num_classes], 'b': [num_classes]}}

Initialisation follows PyTorch's defaults, which the reference learning rates were tuned for:
weights and biases uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)], norm scale 1 and shift 0.

:func:`apply` convolves as im2col (:func:`conv3x3`), so that autodiff of any order through
it stays on matrix products, pads and slices (``--meta_grad=reverse`` differentiates through
it twice). The faster hand-written gradient that training and the default meta-gradient use
is in :mod:`mct_jax.models.conv_net_grad`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Params = dict[str, Any]

NORMS = ('instancenorm', 'none')
LEAKY_SLOPE = 0.01


def relu(z):
    """max(z, 0) as z times its mask (z > 0): ``jax.nn.relu``'s values and derivative for
    every finite z, in a form that shares no broadcast zero with its derivative, which lets
    XLA fuse the two (see ``docs/benchmarks.md``)."""
    return z * (z > 0).astype(z.dtype)


ACTIVATIONS = {'relu': relu, 'leakyrelu': lambda x: jax.nn.leaky_relu(x, LEAKY_SLOPE),
               'sigmoid': jax.nn.sigmoid}


POOLS = ('avgpool', 'maxpool', 'none')


INSTANCE_NORM_EPS = 1e-5


# ----------------------------------------------------------------------------- layers

def patches(x, kh: int, kw: int, stride: int = 1, padding: int = 1):
    """The kernel's strided windows of the zero-padded input, side by side:
    [B, H, W, C] -> [B, H', W', kh * kw * C] in (dy, dx, c) order, so that a convolution is
    one matrix product with the kernel reshaped to [kh * kw * C, C_out].

    Built from slices of the padded input, so its derivatives are pads and slices.
    """
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h = (x.shape[1] + 2 * padding - kh) // stride + 1
    w = (x.shape[2] + 2 * padding - kw) // stride + 1
    return jnp.concatenate(
        [xp[:, dy:dy + stride * (h - 1) + 1:stride, dx:dx + stride * (w - 1) + 1:stride]
         for dy in range(kh) for dx in range(kw)], axis=-1)


def im2col(x):
    """im2col for a 3x3 'SAME' window: [B, H, W, C] -> [B, H, W, 9 * C], (dy, dx, c) order."""
    return patches(x, 3, 3)


def conv3x3(x, w):
    """3x3, stride 1, 'SAME' convolution as an im2col matrix product (used by :func:`apply`).

    Args:
      x: [B, H, W, C_in] images.
      w: [3, 3, C_in, C_out] kernel (cross-correlation, as in PyTorch and ``lax``).
    Returns:
      [B, H, W, C_out].
    """
    return jnp.einsum('bhwk,ko->bhwo', im2col(x), w.reshape(-1, w.shape[-1]))


def instance_norm(x, scale, bias, eps=INSTANCE_NORM_EPS):
    """Per-sample, per-channel normalisation over H and W (biased variance), then affine.

    x: [B, H, W, C]; scale, bias: [C]. Equals PyTorch's ``GroupNorm(C, C)`` used by the
    reference ConvNet for ``instancenorm``.
    """
    xhat, _, _ = normalize(x, eps)
    return xhat * scale + bias


def normalize(x, eps=INSTANCE_NORM_EPS):
    """(x - mean) / sqrt(var + eps) over H and W, the 1 / sqrt(var + eps) it used, and the
    mean."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    r = lax.rsqrt(var + eps)
    return (x - mean) * r, r, mean


def pool2x2(x, kind='avgpool'):
    """2x2, stride 2 pooling; odd trailing rows/columns are dropped (PyTorch's floor mode).

    Written as a reshape and a reduction so that its derivatives are broadcasts rather than
    strided window operations.
    """
    if kind == 'none':
        return x
    b, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
    return x.mean(axis=(2, 4)) if kind == 'avgpool' else x.max(axis=(2, 4))


def _uniform(key, shape, fan_in, dtype):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


# ----------------------------------------------------------------------------- the network

def check_choices(norm, act, pool):
    """Raises ``ValueError`` naming the valid choices for an unknown norm, activation or
    pooling."""
    if norm not in NORMS:
        raise ValueError(f'Unknown norm {norm!r}; choose one of {NORMS}.')
    if act not in ACTIVATIONS:
        raise ValueError(f'Unknown activation {act!r}; choose one of {tuple(ACTIVATIONS)}.')
    if pool not in POOLS:
        raise ValueError(f'Unknown pooling {pool!r}; choose one of {POOLS}.')


def init(key, input_shape, num_classes, width=128, depth=3, norm='instancenorm',
         pool='avgpool', dtype=jnp.float32) -> Params:
    """Draws fresh ConvNet parameters.

    Args:
      key: PRNG key.
      input_shape: (H, W, C) of one image.
      num_classes: size of the output layer.
      width: channels of every conv block.
      depth: number of conv blocks (3 for 32 px, 4 for 64 px Tiny ImageNet, 5 for 128 px).
      norm: 'instancenorm' or 'none'.
      pool: 'avgpool', 'maxpool' or 'none' (decides the flattened feature size).
    Returns:
      The parameter dict described in the module docstring.
    """
    check_choices(norm, 'relu', pool)
    h, w, c = input_shape
    if depth < 1 or width < 1:
        raise ValueError(f'ConvNet needs depth >= 1 and width >= 1, got depth={depth}, '
                         f'width={width}.')
    params = {}
    keys = jax.random.split(key, 2 * depth + 2)
    for i in range(depth):
        fan_in = 9 * c
        params[f'conv{i}'] = {'w': _uniform(keys[2 * i], (3, 3, c, width), fan_in, dtype),
                              'b': _uniform(keys[2 * i + 1], (width,), fan_in, dtype)}
        if norm == 'instancenorm':
            params[f'norm{i}'] = {'scale': jnp.ones((width,), dtype),
                                  'bias': jnp.zeros((width,), dtype)}
        c = width
        if pool != 'none':
            if h < 2 or w < 2:
                raise ValueError(f'Input {input_shape} is too small for depth {depth}: '
                                 f'block {i} would pool a {h}x{w} map; use a smaller depth.')
            h, w = h // 2, w // 2
    features = h * w * c
    params['dense'] = {'w': _uniform(keys[-2], (features, num_classes), features, dtype),
                       'b': _uniform(keys[-1], (num_classes,), features, dtype)}
    return params


def apply(params: Params, x, act='relu', pool='avgpool'):
    """ConvNet forward pass.

    Depth and normalisation are read from the parameter dict, so only the activation and
    pooling (static choices with no parameters) are arguments.

    Args:
      params: from :func:`init`.
      x: [B, H, W, C] images.
    Returns:
      [B, num_classes] logits.
    """
    check_choices('none', act, pool)
    f = ACTIVATIONS[act]
    depth = sum(1 for k in params if k.startswith('conv'))
    for i in range(depth):
        x = conv3x3(x, params[f'conv{i}']['w']) + params[f'conv{i}']['b']
        if f'norm{i}' in params:
            x = instance_norm(x, params[f'norm{i}']['scale'], params[f'norm{i}']['bias'])
        x = pool2x2(f(x), pool)
    x = x.reshape(x.shape[0], -1)
    return x @ params['dense']['w'] + params['dense']['b']
