"""AlexNet of the reference: conv 5x5 (128) -> pool -> conv 5x5 (192) -> pool -> conv 3x3
(256, 192, 192) -> pool -> dense, every convolution followed by ReLU, 2x2 max pools
(1,872,202 parameters on 32x32x3 images and 10 classes). 1-channel images get 2 more pixels
of padding in the first layer. Name: ``alexnet``."""

from __future__ import annotations

import flax.linen as nn

import mct_jax.models.flax_module as flax_module
import mct_jax.models.layers as layers
import mct_jax.models.modules as modules
import mct_jax.models.registry as registry

# (channels, kernel size, max pool after)
LAYERS = ((128, 5, True), (192, 5, True), (256, 3, False), (192, 3, False), (192, 3, True))


class AlexNet(nn.Module):
    num_classes: int = 10
    conv: str | None = None   # the convolution's form (layers.convolve)

    @nn.compact
    def __call__(self, x):
        for i, (out, size, pool) in enumerate(LAYERS):
            pad = size // 2 + (2 if i == 0 and x.shape[-1] == 1 else 0)
            x = layers.relu(modules.Conv(out, size, padding=pad, form=self.conv,
                                         name=f'conv{i}')(x))
            if pool:
                x = layers.max_pool(x)
        return modules.Dense(self.num_classes, name='fc')(layers.flatten(x))


def _build(shape, classes, width, depth, conv):
    return flax_module.from_flax(AlexNet(classes, conv), shape)


registry.register('alexnet', _build)
