"""The ConvNet of trajectory matching (docs/method.md section 1): conv 3x3 -> norm ->
activation -> 2x2 pooling, ``depth`` times, then a dense layer.

Two forms of one network:

* :func:`convnet`, the pure ``init``/``apply`` pair of :mod:`mct_jax.models.conv_net` with
  its hand-written gradient and Hessian-vector product (:mod:`mct_jax.models.conv_net_grad`),
  which make expert training and distillation fast. It is ``convnet`` (instance norm) and
  ``convnet_nn`` (no norm).
* :class:`ConvNet`, the same network as a ``flax.linen`` module, with batch norm as a third
  choice: ``convnet_bn``, and the starting point for a network of your own
  (``--model=package.module:Name``, docs/usage.md). With the same parameters (the same
  pytree, ``{'conv0': {'w', 'b'}, 'norm0': {'scale', 'bias'}, ..., 'dense': {'w', 'b'}}``) it
  gives :func:`mct_jax.models.conv_net.apply`'s logits (``tests/test_flax_models.py``).

Names: ``convnet``, ``convnet_nn`` (the field's ConvNetNN), ``convnet_bn`` (ConvNetBN).
"""

from __future__ import annotations

import flax.linen as nn

import mct_jax.models.conv_net as conv_net
import mct_jax.models.conv_net_grad as conv_net_grad
import mct_jax.models.flax_module as flax_module
import mct_jax.models.modules as modules
import mct_jax.models.registry as registry
from mct_jax.models.model import Model


def convnet(input_shape, num_classes, width=128, depth=3, norm='instancenorm', act='relu',
            pool='avgpool') -> Model:
    """The pure ConvNet: ``m = convnet((32, 32, 3), 10); p = m.init(key)``.

    Args:
      input_shape: (H, W, C) of one image.
      num_classes: outputs.
      width, depth, norm, act, pool: see :func:`mct_jax.models.conv_net.init`.
    """
    conv_net.check_choices(norm, act, pool)
    return Model(
        init=lambda key: conv_net.init(key, input_shape, num_classes, width, depth, norm, pool),
        apply=lambda params, x: conv_net.apply(params, x, act, pool),
        loss_grad=lambda params, x, labels, input_grad=False: conv_net_grad.loss_grad(
            params, x, labels, act, pool, input_grad),
        stored_hvp=(lambda params, x, labels: conv_net_grad.loss_grad_and_residuals(
                        params, x, labels, act, pool),
                    lambda params, residuals, x, labels, v, input_grad=False,
                    logits_tangent=False: conv_net_grad.loss_hvp(
                        params, residuals, x, labels, v, act, pool, input_grad,
                        logits_tangent)))


class ConvNet(nn.Module):
    """The ConvNet as a Flax module; ``norm`` is ``'instancenorm'``, ``'batchnorm'`` or
    ``'none'``, ``act`` and ``pool`` as in :mod:`mct_jax.models.conv_net`, ``conv`` the
    convolution's form (:func:`mct_jax.models.layers.convolve`)."""
    num_classes: int = 10
    width: int = 128
    depth: int = 3
    norm: str = 'instancenorm'
    act: str = 'relu'
    pool: str = 'avgpool'
    conv: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv_net.check_choices('none', self.act, self.pool)
        for i in range(self.depth):
            x = modules.Conv(self.width, 3, form=self.conv, name=f'conv{i}')(x)
            x = modules.norm(self.norm, f'norm{i}', x, train)
            x = conv_net.pool2x2(conv_net.ACTIVATIONS[self.act](x), self.pool)
        return modules.Dense(self.num_classes, name='dense')(x.reshape(x.shape[0], -1))


# The pure ConvNet convolves as im2col whatever ``conv`` says: its hand-written derivatives
# are written for that form.
registry.register('convnet', lambda shape, classes, width, depth, conv: convnet(
    shape, classes, width, depth, 'instancenorm'))
registry.register('convnet_nn', lambda shape, classes, width, depth, conv: convnet(
    shape, classes, width, depth, 'none'), aliases=('convnetnn',))
registry.register('convnet_bn', lambda shape, classes, width, depth, conv: flax_module.from_flax(
    ConvNet(classes, width, depth, 'batchnorm', conv=conv), shape), aliases=('convnetbn',))
