"""MLP of the reference: dense 128 -> ReLU -> dense 128 -> ReLU -> dense on the flattened
image (411,146 parameters on 32x32x3 images and 10 classes). Name: ``mlp``."""

from __future__ import annotations

import flax.linen as nn

import mct_jax.models.flax_module as flax_module
import mct_jax.models.layers as layers
import mct_jax.models.modules as modules
import mct_jax.models.registry as registry


class MLP(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = layers.relu(modules.Dense(128, name='fc1')(layers.flatten(x)))
        x = layers.relu(modules.Dense(128, name='fc2')(x))
        return modules.Dense(self.num_classes, name='fc3')(x)


def _build(shape, classes, width, depth, conv):
    return flax_module.from_flax(MLP(classes), shape)


registry.register('mlp', _build)
