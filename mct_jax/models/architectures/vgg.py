"""VGG11 of the reference: VGG's configuration A (conv 3x3 64, M, 128, M, 256, 256, M, 512,
512, M, 512, 512, M; each convolution followed by a norm and ReLU, M a 2x2 max pool), then
one dense layer on the flattened map (9,231,114 parameters on 32x32x3 images and 10
classes). The norm is the reference's instance norm, or batch norm. 1-channel images get 3
pixels of padding in the first layer. Names: ``vgg11``, ``vgg11_bn`` (VGG11BN)."""

from __future__ import annotations

import flax.linen as nn

import mct_jax.models.flax_module as flax_module
import mct_jax.models.layers as layers
import mct_jax.models.modules as modules
import mct_jax.models.registry as registry

CONFIG_A = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M')


class VGG11(nn.Module):
    num_classes: int = 10
    norm: str = 'instancenorm'
    conv: str | None = None   # the convolution's form (layers.convolve)

    @nn.compact
    def __call__(self, x, train: bool = False):
        i, side = 0, x.shape[1:3]
        for v in CONFIG_A:
            if v == 'M':
                x = layers.max_pool(x)
                continue
            pad = 3 if i == 0 and x.shape[-1] == 1 else 1
            x = modules.Conv(v, 3, padding=pad, form=self.conv, name=f'conv{i}')(x)
            x = layers.relu(modules.norm(self.norm, f'norm{i}', x, train))
            i += 1
        if x.shape[1] < 1 or x.shape[2] < 1:
            raise ValueError(f'VGG11 pools its input 5 times; {side[0]}x{side[1]} images are '
                             'too small (use at least 32x32).')
        return modules.Dense(self.num_classes, name='fc')(layers.flatten(x))


def _builder(norm):
    return lambda shape, classes, width, depth, conv: flax_module.from_flax(
        VGG11(classes, norm, conv), shape)


registry.register('vgg11', _builder('instancenorm'))
registry.register('vgg11_bn', _builder('batchnorm'), aliases=('vgg11bn',))
