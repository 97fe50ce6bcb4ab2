"""ResNet-18 of the reference: a 3x3 stem (no max pool), four stages of two basic blocks
(64, 128, 256, 512 channels; the last three start with stride 2 and a 1x1 shortcut), global
average pooling, dense (11,173,962 parameters on 32x32x3 images and 10 classes). The norm is
the reference's instance norm, or batch norm.

The ``_ap`` variants (11,250,762 parameters) replace each stride-2 convolution by a stride-1
one followed by 2x2 average pooling, and the classifier reads the whole flattened last map
instead of its average. At 64x64 (Tiny ImageNet) the stem has stride 2, as in DD-Ranking's
definitions, so the last map is 4x4 as at 32x32.

Names: ``resnet18``, ``resnet18_bn`` (ResNet18BN), ``resnet18_ap`` (ResNet18_AP),
``resnet18_bn_ap`` (ResNet18BN_AP). Parameters are named by stage and block
(``layer2_0_conv1``, ``layer2_0_shortcut_norm``...), as the reference's modules.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

import mct_jax.models.flax_module as flax_module
import mct_jax.models.layers as layers
import mct_jax.models.modules as modules
import mct_jax.models.registry as registry

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))   # (channels, stride of the first block)


class ResNet18(nn.Module):
    num_classes: int = 10
    norm: str = 'instancenorm'
    pool_shortcuts: bool = False   # the _ap variant
    conv: str | None = None        # the convolution's form (layers.convolve)

    def _conv(self, name, x, features, kernel, stride):
        return modules.Conv(features, kernel, stride, kernel // 2, use_bias=False,
                            form=self.conv, name=name)(x)

    def _block(self, name, x, planes, stride, train):
        """A basic block: conv -> norm -> ReLU -> conv -> norm, plus the shortcut."""
        conv_stride = 1 if self.pool_shortcuts else stride
        pool = (lambda y: layers.avg_pool(y, stride)) if self.pool_shortcuts and stride != 1 \
            else (lambda y: y)
        out = self._conv(f'{name}_conv1', x, planes, 3, conv_stride)
        out = pool(layers.relu(modules.norm(self.norm, f'{name}_norm1', out, train)))
        out = modules.norm(self.norm, f'{name}_norm2',
                           self._conv(f'{name}_conv2', out, planes, 3, 1), train)
        if stride != 1 or x.shape[-1] != planes:
            short = pool(self._conv(f'{name}_shortcut', x, planes, 1, conv_stride))
            x = modules.norm(self.norm, f'{name}_shortcut_norm', short, train)
        return layers.relu(out + x)

    @nn.compact
    def __call__(self, x, train: bool = False):
        stem_stride = 2 if min(x.shape[1:3]) >= 64 else 1
        x = self._conv('stem', x, 64, 3, stem_stride)
        x = layers.relu(modules.norm(self.norm, 'stem_norm', x, train))
        for stage, (planes, stride) in enumerate(STAGES):
            for block in range(2):
                x = self._block(f'layer{stage + 1}_{block}', x, planes,
                                stride if block == 0 else 1, train)
        x = layers.flatten(x) if self.pool_shortcuts else jnp.mean(x, axis=(1, 2))
        return modules.Dense(self.num_classes, name='fc')(x)


def _builder(norm, pool_shortcuts):
    return lambda shape, classes, width, depth, conv: flax_module.from_flax(
        ResNet18(classes, norm, pool_shortcuts, conv), shape)


registry.register('resnet18', _builder('instancenorm', False))
registry.register('resnet18_bn', _builder('batchnorm', False), aliases=('resnet18bn',))
registry.register('resnet18_ap', _builder('instancenorm', True))
registry.register('resnet18_bn_ap', _builder('batchnorm', True), aliases=('resnet18bnap',))
