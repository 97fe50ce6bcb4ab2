"""LeNet of the reference: conv 5x5 (6) -> ReLU -> 2x2 max pool -> conv 5x5 (16) -> ReLU ->
2x2 max pool -> dense 120 -> dense 84 -> dense (62,006 parameters on 32x32x3 images and 10
classes). 1-channel images get 2 pixels of padding in the first layer, so that 28x28 MNIST
is treated as 32x32. Name: ``lenet``."""

from __future__ import annotations

import flax.linen as nn

import mct_jax.models.flax_module as flax_module
import mct_jax.models.layers as layers
import mct_jax.models.modules as modules
import mct_jax.models.registry as registry


class LeNet(nn.Module):
    num_classes: int = 10
    conv: str | None = None   # the convolution's form (layers.convolve)

    @nn.compact
    def __call__(self, x):
        pad = 2 if x.shape[-1] == 1 else 0
        x = layers.max_pool(layers.relu(
            modules.Conv(6, 5, padding=pad, form=self.conv, name='conv1')(x)))
        x = layers.max_pool(layers.relu(
            modules.Conv(16, 5, padding=0, form=self.conv, name='conv2')(x)))
        x = layers.relu(modules.Dense(120, name='fc1')(layers.flatten(x)))
        x = layers.relu(modules.Dense(84, name='fc2')(x))
        return modules.Dense(self.num_classes, name='fc3')(x)


def _build(shape, classes, width, depth, conv):
    return flax_module.from_flax(LeNet(classes, conv), shape)


registry.register('lenet', _build)
