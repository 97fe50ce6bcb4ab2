"""The ConvNet's cross-entropy gradient and Hessian-vector product, written by hand.

:func:`loss_grad` is the gradient of the mean cross-entropy of
:func:`mct_jax.models.conv_net.apply` back-propagated by hand with forward-form operations
only: native convolutions for the forward pass and the input gradients (the latter with the
flipped kernel), matrix products for the weight gradients, broadcasts and reductions for the
norm and pooling. Trajectory matching takes a derivative of this gradient; taken in forward
mode (see :mod:`mct_jax.rollout`) it stays within the same fast operations, whereas
reverse-mode derivatives of autodiff's own convolution gradients lower to convolution forms
that some backends (XLA:CPU) run very slowly.

:func:`loss_hvp` is that forward-mode derivative (a Hessian-vector product) written by hand
as well, from the residuals :func:`loss_grad_and_residuals` keeps, so that the
meta-gradient's backward pass need not run the student's forward and backward passes again.

Both are checked in float64 against autodiff (``tests/test_models.py``); measurements of the
choices made here are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mct_jax.models.conv_net import (ACTIVATIONS, LEAKY_SLOPE, Params, check_choices, normalize,
                                    im2col, conv3x3, pool2x2)

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def targets(labels, num_classes: int, dtype):
    """[B, K] target probabilities: one-hot rows for integer labels [B], the rows themselves
    for soft labels (probabilities [B, K])."""
    if labels.ndim == 2:
        return labels.astype(dtype)
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


# Inputs with at most this many channels (the image layer) are convolved as one im2col
# matrix product, faster there than a native convolution (docs/benchmarks.md).
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
    Shifting dy rather than x reads x in one transposed layout for all nine offsets. The
    three rows of offsets run one after the other (``lax.map``), so that three shifted
    copies of dy exist at a time rather than nine. For few input channels: one im2col
    product.
    """
    b, h, w, c = x.shape
    if c <= IM2COL_MAX_CHANNELS:
        return jnp.einsum('bhwk,bhwo->ko', im2col(x), dy).reshape(3, 3, c, dy.shape[-1])
    dp = jnp.pad(dy, ((0, 0), (1, 1), (1, 1), (0, 0)))

    def row(i):
        rows = lax.dynamic_slice_in_dim(dp, 2 - i, h, axis=1)
        return jnp.stack([jnp.einsum('bhwc,bhwo->co', x, rows[:, :, 2 - j:2 - j + w])
                          for j in range(3)])
    return lax.map(row, jnp.arange(3)).reshape(3, 3, c, dy.shape[-1])


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
    """Gradient of the mean cross-entropy of :func:`~mct_jax.models.conv_net.apply`.

    The same value as ``jax.grad(lambda p, x: cross_entropy(apply(p, x), labels))``, from
    forward-form operations only (see the module docstring).

    Args:
      params: from :func:`init`.
      x: [B, H, W, C] images; labels: [B] integer classes, or [B, K] target
        probabilities (soft labels: the gradient of the soft-target cross-entropy).
      input_grad: also return the gradient with respect to ``x``.
    Returns:
      ``(grads, grad_x, logits)``: a pytree like ``params``, [B, H, W, C] or None, and the
      [B, num_classes] logits of the forward pass.
    """
    grads, grad_x, logits, _ = _loss_grad(params, x, labels, act, pool, input_grad)
    return grads, grad_x, logits


def _loss_grad(params, x, labels, act, pool, input_grad):
    """:func:`loss_grad`, plus the residuals :func:`loss_hvp` needs (see there)."""
    check_choices('none', act, pool)
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
            norm = xhat, r, _ = normalize(z)
            z = xhat * params[f'norm{i}']['scale'] + params[f'norm{i}']['bias']
        else:
            z = z + params[f'conv{i}']['b']
        a = f(z)
        saved.append((h, z, a, norm))
        h = pool2x2(a, pool)
    feats = h.reshape(h.shape[0], -1)
    logits = feats @ params['dense']['w'] + params['dense']['b']
    d_logits = (jax.nn.softmax(logits) - targets(labels, logits.shape[-1], logits.dtype)
                ) / x.shape[0]
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
      layer inputs and conv outputs from the images (one convolution per layer), which costs
      about what storing and reading them back would.
    """
    grads, _, logits, res = _loss_grad(params, x, labels, act, pool, False)
    return grads, logits, res


def loss_hvp(params: Params, residuals, x, labels, v: Params, act='relu', pool='avgpool',
             input_grad=False, logits_tangent=False):
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
      derivative of the input gradient (else None); with ``logits_tangent`` also the
      [B, num_classes] derivative of the logits along ``v`` (what the meta-gradient with
      respect to soft labels needs).
    """
    check_choices('none', act, pool)
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
    d_logits = (p - targets(labels, logits.shape[-1], logits.dtype)) / n
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
    if logits_tangent:
        return hv, hv_x, logits_t
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


