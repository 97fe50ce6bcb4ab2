"""The ConvNet of trajectory matching as a ``flax.linen`` module, the twin of
:mod:`mct_jax.models.conv_net`.

The library trains the pure ``init``/``apply`` ConvNet, whose hand-written derivatives
(:mod:`mct_jax.models.conv_net_grad`) make distillation fast. This module is the same
network written the way Flax users write theirs: a starting point for a network of your
own (``--model=package.module:Name``, docs/usage.md), and a check that the two styles
agree. For the same parameters it gives the same logits (tested in float64,
``tests/test_flax_models.py``); :func:`to_flax` and :func:`from_flax_params` move
parameters between the two layouts::

    {'conv0': {'w', 'b'}, 'norm0': {'scale', 'bias'}, ..., 'dense': {'w', 'b'}}    # conv_net
    {'conv0': {'kernel', 'bias'}, 'norm0': {'scale', 'bias'}, ..., 'dense': {'kernel', 'bias'}}

Initialisation draws from the same distributions as :func:`mct_jax.models.conv_net.init`
(PyTorch's defaults: uniform in +-1/sqrt(fan_in) for weights and biases, norm scale 1 and
shift 0), though not the same numbers from a key. The convolution is Flax's (``lax``), not
the im2col form the pure ConvNet uses.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

from mct_jax.models import conv_net


def _uniform(fan_in: int):
    """PyTorch's default initialiser of a layer with ``fan_in`` inputs."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound)


class ConvNet(nn.Module):
    """conv 3x3 -> instance norm -> activation -> 2x2 pooling, ``depth`` times, then a dense
    layer (docs/method.md section 1); the choices are :mod:`mct_jax.models.conv_net`'s."""
    num_classes: int = 10
    width: int = 128
    depth: int = 3
    norm: str = 'instancenorm'
    act: str = 'relu'
    pool: str = 'avgpool'

    @nn.compact
    def __call__(self, x):
        conv_net.check_choices(self.norm, self.act, self.pool)
        for i in range(self.depth):
            fan_in = 9 * x.shape[-1]
            x = nn.Conv(self.width, (3, 3), padding=1, kernel_init=_uniform(fan_in),
                        bias_init=_uniform(fan_in), name=f'conv{i}')(x)
            if self.norm == 'instancenorm':
                x = nn.InstanceNorm(epsilon=conv_net.INSTANCE_NORM_EPS,
                                    use_fast_variance=False, name=f'norm{i}')(x)
            x = conv_net.ACTIVATIONS[self.act](x)
            if self.pool == 'avgpool':
                x = nn.avg_pool(x, (2, 2), (2, 2))
            elif self.pool == 'maxpool':
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, kernel_init=_uniform(x.shape[-1]),
                        bias_init=_uniform(x.shape[-1]), name='dense')(x)


def to_flax(params: conv_net.Params) -> dict:
    """:func:`mct_jax.models.conv_net.init`'s parameters in :class:`ConvNet`'s layout."""
    return {name: ({'kernel': p['w'], 'bias': p['b']} if 'w' in p else dict(p))
            for name, p in params.items()}


def from_flax_params(params: dict) -> conv_net.Params:
    """:class:`ConvNet`'s parameters in :func:`mct_jax.models.conv_net.apply`'s layout."""
    return {name: ({'w': p['kernel'], 'b': p['bias']} if 'kernel' in p else dict(p))
            for name, p in params.items()}
