"""The ConvNet of the trajectory-matching literature as pure ``init``/``apply`` functions.

``ConvNet(width=128, depth=3, norm=instancenorm, act=relu, pool=avgpool)``: each block is
conv 3x3 (stride 1, padding 1, bias) -> instance norm (affine) -> activation -> 2x2 pooling;
then flatten -> dense. Parameters are a nested dict pytree::

    {'conv0': {'w': [3, 3, C_in, width], 'b': [width]},
     'norm0': {'scale': [width], 'bias': [width]},
     ...
     'dense': {'w': [features, num_classes], 'b': [num_classes]}}

Initialisation follows PyTorch's defaults, which the reference learning rates were tuned for:
weights and biases uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)], norm scale 1 and shift 0.

The convolution is :func:`conv3x3`, written as im2col: nine shifted slices of the
zero-padded input concatenated along channels, then one matrix product with the kernel.
Trajectory matching differentiates *through* SGD steps, i.e. takes second-order derivatives
of the convolution. With ``lax.conv_general_dilated`` those lower to convolution forms
(batch-as-feature "backprop-filter" convolutions) that XLA:CPU runs on a very slow path; a
``custom_vjp`` convolution with an im2col weight gradient helps but still spends most of its
time in convolutions. In the im2col form every derivative of every order is a matrix
product, a pad or a slice, which are fast kernels on every backend. Measured on the 2-core
CPU (width 32, 100 images, N = 2 student steps, one meta-gradient): 2.65 s with the
custom-VJP convolution, 0.37 s with im2col; first-order training speed is the same (0.16 s
per batch of 256). It is checked against ``lax.conv_general_dilated`` in value, gradient and
meta-gradient (float64) in ``tests/test_models.py``. :func:`apply` uses it, so autodiff of
any order works (``--meta_grad=reverse`` relies on that).

:func:`loss_grad` is the faster route that training and the default meta-gradient take:
the cross-entropy gradient back-propagated by hand with native convolutions for the
forward pass and the input gradients, and matrix products for the weight gradients. Only
first-order and forward-mode derivatives of it are ever taken, and those keep every
operation in a fast form (1.2-1.4x faster training, 1.5-2x faster meta-gradients than the
im2col route on the 2-core CPU; see the README's benchmarks). :func:`loss_hvp` is that
forward-mode derivative (a Hessian-vector product) written by hand as well, from residuals
that :func:`loss_grad_and_residuals` keeps, so that the meta-gradient's backward pass need
not run the student's forward and backward passes again.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Params = dict[str, Any]

NORMS = ('instancenorm', 'none')
LEAKY_SLOPE = 0.01


def relu(z):
    """max(z, 0), written as z times its mask (z > 0): the same values and derivative as
    ``jax.nn.relu`` for every finite z (negative inputs give -0.0); -inf, which only a
    diverged run reaches, gives NaN, which the run's non-finite checks report.

    As ``maximum(z, 0)`` it shares the broadcast zero with the derivative's ``z > 0``, and
    XLA:CPU then writes out that zero as a full feature map for the pooling fusion that
    reads it (two of the first block's 32x32 maps per student step). Written as a product,
    the meta-gradient took 0.92x / 0.96x / 0.91x the time at width 32 / 64 / 128 (N 10,
    ipc 10, one process, same results to every printed digit).
    """
    return z * (z > 0).astype(z.dtype)


ACTIVATIONS = {'relu': relu, 'leakyrelu': lambda x: jax.nn.leaky_relu(x, LEAKY_SLOPE),
               'sigmoid': jax.nn.sigmoid}
POOLS = ('avgpool', 'maxpool', 'none')
INSTANCE_NORM_EPS = 1e-5


# ----------------------------------------------------------------------------- convolution

def _patches(x):
    """im2col for a 3x3 'SAME' window: [B, H, W, C] -> [B, H, W, 9 * C], (dy, dx, c) order.

    Built from slices of the zero-padded input, so its derivatives are pads and slices.
    """
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate(
        [xp[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], axis=-1)


def conv3x3(x, w):
    """3x3, stride 1, 'SAME' convolution as an im2col matrix product (used by :func:`apply`).

    Args:
      x: [B, H, W, C_in] images.
      w: [3, 3, C_in, C_out] kernel (cross-correlation, as in PyTorch and ``lax``).
    Returns:
      [B, H, W, C_out].
    """
    return jnp.einsum('bhwk,ko->bhwo', _patches(x), w.reshape(-1, w.shape[-1]))


_DIMS = ('NHWC', 'HWIO', 'NHWC')
# Inputs with at most this many channels are convolved as im2col: for the 3-channel image
# layer the single 27-wide matrix product beat the native convolution 2x (forward) and 1.6x
# (input gradient) on the 2-core CPU; with 32 or more channels the native one was 3-7x faster.
IM2COL_MAX_CHANNELS = 4


def conv3x3_native(x, w):
    """The same convolution through ``lax.conv_general_dilated`` (fast first-order kernels).

    Used by :func:`loss_grad`, which differentiates by hand so that every derivative is a
    forward-form convolution; only its forward-mode derivatives are taken (see there).
    """
    if x.shape[-1] <= IM2COL_MAX_CHANNELS:
        return conv3x3(x, w)
    return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=_DIMS)


def _conv3x3_input_grad(dy, w, input_channels):
    """Gradient of :func:`conv3x3_native` with respect to its input, for cotangent dy.

    A forward convolution with the kernel flipped in space and its channel axes swapped
    (the transposed convolution of a stride-1, padding-1 window), or, for few channels,
    the im2col matrix product followed by the overlap-add of the nine shifted windows.
    """
    if input_channels > IM2COL_MAX_CHANNELS:
        return lax.conv_general_dilated(dy, jnp.swapaxes(w[::-1, ::-1], 2, 3), (1, 1), 'SAME',
                                        dimension_numbers=_DIMS)
    b, h, wd, _ = dy.shape
    dp = jnp.einsum('bhwo,ko->bhwk', dy, w.reshape(-1, w.shape[-1]))
    out = jnp.zeros((b, h + 2, wd + 2, input_channels), dy.dtype)
    for k in range(9):
        dy_, dx_ = divmod(k, 3)
        out = out.at[:, dy_:dy_ + h, dx_:dx_ + wd, :].add(
            dp[..., k * input_channels:(k + 1) * input_channels])
    return out[:, 1:h + 1, 1:wd + 1, :]


def _conv3x3_weight_grad(x, dy):
    """Gradient of the convolution with respect to its [3, 3, C_in, C_out] kernel.

    One matrix product per window offset (i, j), contracting over batch and space:
    ``dW[i, j] = x^T @ shift(dy)``, where ``shift`` takes the window of the zero-padded dy at
    offset (2 - i, 2 - j) (the same sums as ``shift(x)^T @ dy`` with x's window at (i, j)).
    Shifting dy rather than x lets the product read x in one transposed layout for all nine
    offsets and the windows as plain row copies; on the 2-core CPU the meta-gradient ran
    5-10 % faster that way (widths 32-128) than with x shifted, which in turn beat im2col by
    10 %. (XLA:CPU's own weight-gradient convolution runs on a slow path inside these
    programs.) For few input channels: one im2col product.
    """
    b, h, w, c = x.shape
    if c <= IM2COL_MAX_CHANNELS:
        return jnp.einsum('bhwk,bhwo->ko', _patches(x), dy).reshape(3, 3, c, dy.shape[-1])
    dp = jnp.pad(dy, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [jnp.einsum('bhwc,bhwo->co', x, dp[:, 2 - i:2 - i + h, 2 - j:2 - j + w])
            for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, c, dy.shape[-1])


def instance_norm(x, scale, bias, eps=INSTANCE_NORM_EPS):
    """Per-sample, per-channel normalisation over H and W (biased variance), then affine.

    x: [B, H, W, C]; scale, bias: [C]. Equals PyTorch's ``GroupNorm(C, C)`` used by the
    reference ConvNet for ``instancenorm``.
    """
    xhat, _, _ = _normalize(x, eps)
    return xhat * scale + bias


def _normalize(x, eps=INSTANCE_NORM_EPS):
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

def _check(norm, act, pool):
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
    _check(norm, 'relu', pool)
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
    _check('none', act, pool)
    f = ACTIVATIONS[act]
    depth = sum(1 for k in params if k.startswith('conv'))
    for i in range(depth):
        x = conv3x3(x, params[f'conv{i}']['w']) + params[f'conv{i}']['b']
        if f'norm{i}' in params:
            x = instance_norm(x, params[f'norm{i}']['scale'], params[f'norm{i}']['bias'])
        x = pool2x2(f(x), pool)
    x = x.reshape(x.shape[0], -1)
    return x @ params['dense']['w'] + params['dense']['b']


_ACT_GRADS = {  # derivative of each activation given its input z and output a
    'relu': lambda z, a: (z > 0).astype(z.dtype),              # as jax.nn.relu (0 at 0)
    'leakyrelu': lambda z, a: jnp.where(z >= 0, 1.0, LEAKY_SLOPE).astype(z.dtype),
    'sigmoid': lambda z, a: a * (1 - a),
}
_ACT_GRADS2 = {  # second derivative given z and a; None where it is zero (almost everywhere)
    'relu': None,
    'leakyrelu': None,
    'sigmoid': lambda z, a: a * (1 - a) * (1 - 2 * a),
}


def loss_grad(params: Params, x, labels, act='relu', pool='avgpool', input_grad=False):
    """Gradient of the mean cross-entropy of :func:`apply`, back-propagated by hand.

    The same value as ``jax.grad(lambda p, x: cross_entropy(apply(p, x), labels))`` (checked
    in float64 in ``tests/test_models.py``), but written only with forward-form operations:
    native convolutions for the forward pass and the input gradients (the latter with the
    flipped kernel), matrix products for the weight gradients, broadcasts and
    reductions for the norm and pooling. Trajectory matching takes a derivative of this
    gradient; taken in forward mode (``jax.jvp``, see :mod:`mct_jax.rollout`) it stays
    within the same fast operations, whereas reverse-mode derivatives of autodiff's own
    convolution gradients lower to convolution forms that XLA:CPU runs very slowly.

    Args:
      params: from :func:`init`.
      x: [B, H, W, C] images; labels: [B] integer classes.
      input_grad: also return the gradient with respect to ``x``.
    Returns:
      ``(grads, grad_x, logits)``: a pytree like ``params``, [B, H, W, C] or None, and the
      [B, num_classes] logits of the forward pass.
    """
    grads, grad_x, logits, _ = _loss_grad(params, x, labels, act, pool, input_grad)
    return grads, grad_x, logits


def _loss_grad(params, x, labels, act, pool, input_grad):
    """:func:`loss_grad`, plus the residuals :func:`loss_hvp` needs (see there)."""
    _check('none', act, pool)
    f, df = ACTIVATIONS[act], _ACT_GRADS[act]
    depth = sum(1 for k in params if k.startswith('conv'))
    saved = []
    h = x
    for i in range(depth):
        z = conv3x3_native(h, params[f'conv{i}']['w'])
        norm = None
        if f'norm{i}' in params:
            # The conv bias is a per-channel constant, which the norm's mean removes: it has
            # no effect on the output and its gradient is exactly zero (see below).
            norm = xhat, r, _ = _normalize(z)
            z = xhat * params[f'norm{i}']['scale'] + params[f'norm{i}']['bias']
        else:
            z = z + params[f'conv{i}']['b']
        a = f(z)
        saved.append((h, z, a, norm))
        h = pool2x2(a, pool)
    feats = h.reshape(h.shape[0], -1)
    logits = feats @ params['dense']['w'] + params['dense']['b']
    d_logits = (jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1],
                                                        dtype=logits.dtype)) / x.shape[0]
    grads = {'dense': {'w': feats.T @ d_logits, 'b': d_logits.sum(0)}}
    dh = (d_logits @ params['dense']['w'].T).reshape(h.shape)
    res = {'logits': logits, 'feats': feats}
    for i in reversed(range(depth)):
        h_in, z, a, norm = saved[i]
        layer = res[f'layer{i}'] = {'dh': dh}
        dz = _pool2x2_grad(dh, a, pool) * df(z, a)
        if norm is not None:
            # Per-sample, per-channel sums over H and W, shared by the norm's parameter
            # gradients and the input gradient r * scale * (dz - mean(dz) - xhat mean(dz xhat)).
            xhat, r, mean = norm
            s1 = jnp.sum(dz, axis=(1, 2), keepdims=True)
            s2 = jnp.sum(dz * xhat, axis=(1, 2), keepdims=True)
            layer.update(mean=mean, r=r, s1=s1, s2=s2)
            grads[f'norm{i}'] = {'scale': jnp.sum(s2, axis=(0, 1, 2)),
                                 'bias': jnp.sum(s1, axis=(0, 1, 2))}
            hw = dz.shape[1] * dz.shape[2]
            dz = (r * params[f'norm{i}']['scale']) * (dz - s1 / hw - xhat * (s2 / hw))
            # The sum of that over H and W vanishes (xhat has mean 0): the conv bias's
            # gradient is exactly zero; autodiff would return rounding noise.
            d_bias = jnp.zeros_like(params[f'conv{i}']['b'])
        else:
            d_bias = jnp.sum(dz, axis=(0, 1, 2))
        grads[f'conv{i}'] = {'w': _conv3x3_weight_grad(h_in, dz), 'b': d_bias}
        if i > 0 or input_grad:
            dh = _conv3x3_input_grad(dz, params[f'conv{i}']['w'], h_in.shape[-1])
    return grads, (dh if input_grad else None), logits, res


def loss_grad_and_residuals(params: Params, x, labels, act='relu', pool='avgpool'):
    """:func:`loss_grad` (without the input gradient), and what :func:`loss_hvp` needs.

    Returns:
      ``(grads, logits, residuals)``. The residuals are, per layer, the cotangent of the
      layer's pooled output and, with a norm, its per-sample mean, 1/sqrt(var + eps) and the
      two per-sample sums of the backward pass; and the logits and flattened features:
      about one pooled first-block feature map per image. :func:`loss_hvp` recomputes the
      layer inputs and conv outputs from the images (one convolution per layer). Storing
      those as well took 3x the memory and was no faster: 1.02x / 1.00x / 1.10x the time at
      width 32 / 64 / 128 (N 20, ipc 10, on the 2-core CPU), as reading them back costs
      about what recomputing them does.
    """
    grads, _, logits, res = _loss_grad(params, x, labels, act, pool, False)
    return grads, logits, res


def loss_hvp(params: Params, residuals, x, labels, v: Params, act='relu', pool='avgpool',
             input_grad=False):
    """Hessian-vector product of the mean cross-entropy, from stored residuals.

    The forward-mode derivative of :func:`loss_grad` along ``v`` (the same value as
    ``jax.jvp(lambda p: loss_grad(p, x, labels, ...)[:2], (params,), (v,))[1]``, checked in
    float64 in ``tests/test_models.py``), written by hand so that the primal backward pass
    is not recomputed: its cotangents and the norms' statistics come from ``residuals`` of
    :func:`loss_grad_and_residuals` at the same ``params`` and ``x``; of the primal forward
    pass only the convolutions are run again. What remains is the tangent of every
    operation: for a convolution ``conv(h, w)`` it is ``conv(h', w) + conv(h, w')``, again
    native convolutions and weight-gradient matrix products.

    Returns:
      ``(hv, hv_x)``: a pytree like ``params`` and, with ``input_grad``, the [B, H, W, C]
      derivative of the input gradient (else None).
    """
    _check('none', act, pool)
    f, df, ddf = ACTIVATIONS[act], _ACT_GRADS[act], _ACT_GRADS2[act]
    depth = sum(1 for k in params if k.startswith('conv'))
    # Tangent of the forward pass.
    fwd = []
    h, ht = x, None
    for i in range(depth):
        w, layer = params[f'conv{i}']['w'], residuals[f'layer{i}']
        if i > 0:
            h = pool2x2(a, pool)  # this layer's input, from the previous layer's activation
        c = conv3x3_native(h, w)
        ct = conv3x3_native(h, v[f'conv{i}']['w'])
        if ht is not None:
            ct = ct + conv3x3_native(ht, w)
        if f'norm{i}' in params:
            scale, r = params[f'norm{i}']['scale'], layer['r']
            xhat = (c - layer['mean']) * r
            m1 = jnp.mean(ct, axis=(1, 2), keepdims=True)
            m2 = jnp.mean(ct * xhat, axis=(1, 2), keepdims=True)
            xhat_t = r * (ct - m1 - xhat * m2)
            z = xhat * scale + params[f'norm{i}']['bias']
            zt = xhat_t * scale + xhat * v[f'norm{i}']['scale'] + v[f'norm{i}']['bias']
            norm = xhat, xhat_t, -r * r * m2
        else:
            z, zt, norm = c + params[f'conv{i}']['b'], ct + v[f'conv{i}']['b'], None
        a = f(z)
        fp = df(z, a)
        fwd.append((h, ht, z, zt, a, fp, norm))
        ht = _pool2x2_jvp(a, fp * zt, pool)
    feats, logits = residuals['feats'], residuals['logits']
    feats_t = ht.reshape(ht.shape[0], -1)
    logits_t = feats_t @ params['dense']['w'] + feats @ v['dense']['w'] + v['dense']['b']
    p = jax.nn.softmax(logits)
    n = x.shape[0]
    d_logits = (p - jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)) / n
    d_logits_t = p * (logits_t - jnp.sum(p * logits_t, axis=-1, keepdims=True)) / n
    hv = {'dense': {'w': feats_t.T @ d_logits + feats.T @ d_logits_t, 'b': d_logits_t.sum(0)}}
    dht = (d_logits_t @ params['dense']['w'].T + d_logits @ v['dense']['w'].T
           ).reshape(ht.shape)
    hv_x = None
    # Tangent of the backward pass.
    for i in reversed(range(depth)):
        h, ht, z, zt, a, fp, norm = fwd[i]
        layer = residuals[f'layer{i}']
        w, wt = params[f'conv{i}']['w'], v[f'conv{i}']['w']
        da = _pool2x2_grad(layer['dh'], a, pool)
        dz = da * fp
        dzt = _pool2x2_grad(dht, a, pool) * fp
        if ddf is not None:
            dzt = dzt + da * ddf(z, a) * zt
        if norm is not None:
            xhat, xhat_t, r_t = norm
            r, s1, s2 = layer['r'], layer['s1'], layer['s2']
            scale, scale_t = params[f'norm{i}']['scale'], v[f'norm{i}']['scale']
            s1t = jnp.sum(dzt, axis=(1, 2), keepdims=True)
            s2t = jnp.sum(dzt * xhat + dz * xhat_t, axis=(1, 2), keepdims=True)
            hv[f'norm{i}'] = {'scale': jnp.sum(s2t, axis=(0, 1, 2)),
                              'bias': jnp.sum(s1t, axis=(0, 1, 2))}
            hw = dz.shape[1] * dz.shape[2]
            u = dz - s1 / hw - xhat * (s2 / hw)
            ut = dzt - s1t / hw - xhat_t * (s2 / hw) - xhat * (s2t / hw)
            dc = (r * scale) * u
            dct = (r_t * scale + r * scale_t) * u + (r * scale) * ut
            bias_t = jnp.zeros_like(params[f'conv{i}']['b'])
        else:
            dc, dct = dz, dzt
            bias_t = jnp.sum(dzt, axis=(0, 1, 2))
        wgrad_t = _conv3x3_weight_grad(h, dct)
        if ht is not None:
            wgrad_t = wgrad_t + _conv3x3_weight_grad(ht, dc)
        hv[f'conv{i}'] = {'w': wgrad_t, 'b': bias_t}
        if i > 0 or input_grad:
            c_in = h.shape[-1]
            dht = _conv3x3_input_grad(dct, w, c_in) + _conv3x3_input_grad(dc, wt, c_in)
    if input_grad:
        hv_x = dht
    return hv, hv_x


def _pool2x2_jvp(x, xt, kind):
    """Derivative of :func:`pool2x2` at x along xt (max pooling: split among tied maxima)."""
    if kind != 'maxpool':
        return pool2x2(xt, kind)
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    share = _max_share(x)
    win = xt[:, :h2 * 2, :w2 * 2, :].reshape(b, h2, 2, w2, 2, c)
    return jnp.sum(win * share, axis=(2, 4))


def _max_share(x):
    """Per 2x2 window of x: 1 / (number of maxima) at each maximum, else 0."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    win = x[:, :h2 * 2, :w2 * 2, :].reshape(b, h2, 2, w2, 2, c)
    hit = (win == win.max(axis=(2, 4), keepdims=True)).astype(x.dtype)
    return hit / hit.sum(axis=(2, 4), keepdims=True)


def _pool2x2_grad(dy, x, kind):
    """Gradient of :func:`pool2x2` with respect to its input x, for cotangent dy."""
    if kind == 'none':
        return dy
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    if kind == 'avgpool':
        share = jnp.full((1, 1, 2, 1, 2, 1), 0.25, dy.dtype)
    else:  # as jnp.max: split equally among the maxima of each window
        share = _max_share(x).astype(dy.dtype)
    dx = (dy[:, :, None, :, None, :] * share).reshape(b, h2 * 2, w2 * 2, c)
    if (h2 * 2, w2 * 2) != (h, w):
        dx = jnp.pad(dx, ((0, 0), (0, h - h2 * 2), (0, w - w2 * 2), (0, 0)))
    return dx


class Model(NamedTuple):
    """The architecture choices bound: ``init``, ``apply``, the hand-written gradient and
    Hessian-vector product."""
    init: Callable[..., Params]   # init(key) -> params
    apply: Callable[..., Any]     # apply(params, x) -> logits
    # loss_grad(params, x, labels, input_grad=False) -> (grads, grad_x or None, logits)
    loss_grad: Callable[..., Any] | None = None
    # (grad_and_residuals(params, x, labels) -> (grads, logits, residuals),
    #  hvp(params, residuals, x, labels, v, input_grad) -> (hv, hv_x or None))
    stored_hvp: tuple[Callable[..., Any], Callable[..., Any]] | None = None


def convnet(input_shape, num_classes, width=128, depth=3, norm='instancenorm', act='relu',
            pool='avgpool') -> Model:
    """Binds the architecture: ``m = convnet(...); p = m.init(key); logits = m.apply(p, x)``."""
    _check(norm, act, pool)
    return Model(
        init=lambda key: init(key, input_shape, num_classes, width, depth, norm, pool),
        apply=lambda params, x: apply(params, x, act, pool),
        loss_grad=lambda params, x, labels, input_grad=False: loss_grad(
            params, x, labels, act, pool, input_grad),
        stored_hvp=(lambda params, x, labels: loss_grad_and_residuals(params, x, labels, act,
                                                                     pool),
                    lambda params, residuals, x, labels, v, input_grad=False: loss_hvp(
                        params, residuals, x, labels, v, act, pool, input_grad)))


def num_params(params: Params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))
