"""Flax layers with PyTorch's definitions, the building blocks of the architectures in
:mod:`mct_jax.models.architectures`.

Each holds its parameters under the names the rest of the library uses: a convolution
``{'w': [kh, kw, C_in, C_out], 'b': [C_out]}`` (no ``'b'`` without bias), a dense layer
``{'w': [in, out], 'b': [out]}``, a norm ``{'scale': [C], 'bias': [C]}``, and a batch norm's
running statistics ``{'mean': [C], 'var': [C]}`` in the ``batch_stats`` collection.
Initialisation is PyTorch's default (:func:`mct_jax.models.layers.uniform_init`; norms scale
1, shift 0, running mean 0, variance 1). The mathematics is :mod:`mct_jax.models.layers`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

import mct_jax.models.layers as layers


class Conv(nn.Module):
    """``torch.nn.Conv2d(C_in, features, kernel_size, stride, padding, bias=use_bias)``;
    ``form``: the convolution's form (:func:`mct_jax.models.layers.convolve`), None for the
    backend's."""
    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = True
    form: str | None = None

    @nn.compact
    def __call__(self, x):
        k, c_in = self.kernel_size, x.shape[-1]
        init = layers.uniform_init(k * k * c_in)
        w = self.param('w', init, (k, k, c_in, self.features))
        y = layers.convolve(x, w, self.stride, self.padding, self.form)
        return y + self.param('b', init, (self.features,)) if self.use_bias else y


class Dense(nn.Module):
    """``torch.nn.Linear(in, features)`` on [B, in]."""
    features: int

    @nn.compact
    def __call__(self, x):
        init = layers.uniform_init(x.shape[-1])
        w = self.param('w', init, (x.shape[-1], self.features))
        return x @ w + self.param('b', init, (self.features,))


class Norm(nn.Module):
    """A norm of ``kind`` (:data:`mct_jax.models.layers.NORMS`) with an affine scale and
    shift: ``'instancenorm'`` is PyTorch's ``GroupNorm(C, C)`` (the reference's),
    ``'batchnorm'`` its ``BatchNorm2d``, which normalises with the batch and updates its
    running statistics when ``train``, and uses them otherwise. Build none for ``'none'``
    (:func:`norm`)."""
    kind: str

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
        if self.kind == 'instancenorm':
            return layers.instance_norm(x, scale, bias, layers.NORM_EPS)
        if self.kind != 'batchnorm':
            raise ValueError(f'Unknown norm {self.kind!r}; choose one of {layers.NORMS}.')
        mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
        var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
        y, stats = layers.batch_norm(scale, bias, {'mean': mean.value, 'var': var.value}, x,
                                     train)
        if train and not self.is_initializing():
            mean.value, var.value = stats['mean'], stats['var']
        return y


def norm(kind: str, name: str, x, train: bool):
    """``x`` through a :class:`Norm` of ``kind`` named ``name`` (a submodule of the module
    being defined), or unchanged for ``'none'``."""
    if kind == 'none':
        return x
    if kind not in layers.NORMS:
        raise ValueError(f'Unknown norm {kind!r}; choose one of {layers.NORMS}.')
    return Norm(kind, name=name)(x, train)
