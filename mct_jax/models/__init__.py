"""Networks as pure ``init``/``apply`` pairs behind one interface, :class:`Model`.

A :class:`Model` binds an architecture's static choices (image shape, classes, width...):
``params = model.init(key)``, ``logits = model.apply(params, x)``. Everything else in the
library (expert training, the student rollout, evaluation) sees only this interface.
Optional fields carry faster hand-written derivatives where a model has them; without them
autodiff is used, with the same result.

The ConvNet of trajectory matching is :func:`convnet` (definition in
:mod:`mct_jax.models.conv_net`, its hand-written gradient and Hessian-vector product in
:mod:`mct_jax.models.conv_net_grad`). :func:`get` builds it and the field's other
evaluation architectures by name (:data:`ARCHITECTURES`, definitions in
:mod:`mct_jax.models.reference`). A new architecture is a module with ``init`` and
``apply`` plus its entry in :func:`get`. A user's ``flax.linen`` module becomes a model
with :func:`from_flax` (:mod:`mct_jax.models.flax_module`), or by import path with
:func:`from_module_path`.

Batch norm keeps running statistics, which are not parameters: such a model also has
``init_stats`` and ``apply_stats`` (training normalises with batch statistics and updates
them, inference uses them); its plain ``apply`` is the training-mode forward pass.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from mct_jax.models import conv_net, conv_net_grad, flax_module, reference
from mct_jax.models.conv_net import ACTIVATIONS, NORMS, POOLS, Params  # noqa: F401
from mct_jax.models.model import Model


def convnet(input_shape, num_classes, width=128, depth=3, norm='instancenorm', act='relu',
            pool='avgpool') -> Model:
    """The ConvNet, docs/method.md section 1: ``m = convnet((32, 32, 3), 10); p = m.init(key)``.

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


# name: (init, apply) of mct_jax.models.reference, with their fixed options
_REFERENCE = {
    'convnet_bn': (functools.partial(reference.convnet_init, norm='batchnorm'),
                   functools.partial(reference.convnet_apply, norm='batchnorm')),
    'mlp': (reference.mlp_init, reference.mlp_apply),
    'lenet': (reference.lenet_init, reference.lenet_apply),
    'alexnet': (reference.alexnet_init, reference.alexnet_apply),
    'vgg11': (reference.vgg11_init, reference.vgg11_apply),
    'vgg11_bn': (functools.partial(reference.vgg11_init, norm='batchnorm'),
                 functools.partial(reference.vgg11_apply, norm='batchnorm')),
    'resnet18': (reference.resnet18_init, reference.resnet18_apply),
    'resnet18_bn': (functools.partial(reference.resnet18_init, norm='batchnorm'),
                    functools.partial(reference.resnet18_apply, norm='batchnorm')),
    'resnet18_ap': (functools.partial(reference.resnet18_init, pool_shortcuts=True),
                    functools.partial(reference.resnet18_apply, pool_shortcuts=True)),
    'resnet18_bn_ap': (functools.partial(reference.resnet18_init, norm='batchnorm',
                                         pool_shortcuts=True),
                       functools.partial(reference.resnet18_apply, norm='batchnorm',
                                         pool_shortcuts=True)),
}
# Names as the field writes them (MTT's get_network, DD-Ranking) -> ours.
ALIASES = {'convnetbn': 'convnet_bn', 'convnetnn': 'convnet_nn', 'vgg11bn': 'vgg11_bn',
           'resnet18bn': 'resnet18_bn', 'resnet18bn_ap': 'resnet18_bn_ap'}
ARCHITECTURES = ('convnet', 'convnet_nn') + tuple(_REFERENCE)


def default_depth(input_shape) -> int:
    """The ConvNet depth the literature uses for an image size: 3 up to 32x32, 4 at 64x64
    (ConvNetD4, Tiny ImageNet), 5 at 128x128."""
    return max(3, int(math.log2(min(input_shape[:2]))) - 2)


def canonical_name(name: str) -> str:
    """``name`` lower-cased with the field's spellings mapped to ours (``ResNet18BN`` ->
    ``resnet18_bn``); raises ``ValueError`` naming the choices for an unknown one."""
    key = name.strip().lower().replace('-', '_')
    key = ALIASES.get(key.replace('_', ''), ALIASES.get(key, key))
    if key not in ARCHITECTURES:
        raise ValueError(f'Unknown architecture {name!r}; choose from '
                         f'{", ".join(ARCHITECTURES)}.')
    return key


def get(name: str, input_shape, num_classes: int, width: int = 128,
        depth: int | None = None) -> Model:
    """An architecture by name (:data:`ARCHITECTURES`, or the field's spelling of one).

    ``width`` and ``depth`` apply to the ConvNet family (``convnet``: instance norm,
    ``convnet_bn``: batch norm, ``convnet_nn``: no norm); ``depth`` defaults to
    :func:`default_depth`. The others are the reference definitions.
    """
    key = canonical_name(name)
    depth = depth or default_depth(input_shape)
    if key in ('convnet', 'convnet_nn'):
        return convnet(tuple(input_shape), num_classes, width, depth,
                       'instancenorm' if key == 'convnet' else 'none')
    init, apply = _REFERENCE[key]
    if key == 'convnet_bn':
        init = functools.partial(init, width=width, depth=depth)
    return _bind(init, apply, tuple(input_shape), num_classes)


def _bind(init, apply, input_shape, num_classes) -> Model:
    """A :class:`Model` from a reference ``(init, apply)`` pair (see
    :mod:`mct_jax.models.reference`)."""
    make = lambda key: init(key, input_shape, num_classes)
    shapes = jax.eval_shape(make, jax.random.key(0))[1]
    if not jax.tree.leaves(shapes):
        return Model(init=lambda key: make(key)[0],
                     apply=lambda params, x: apply(params, {}, x, False)[0])

    def init_stats():
        return {layer: {'mean': jnp.zeros(s['mean'].shape, s['mean'].dtype),
                        'var': jnp.ones(s['var'].shape, s['var'].dtype)}
                for layer, s in shapes.items()}
    return Model(init=lambda key: make(key)[0],
                 apply=lambda params, x: apply(params, init_stats(), x, True)[0],
                 init_stats=init_stats, apply_stats=apply)


def from_config(config: dict) -> Model:
    """The model an expert folder's or a distilled set's settings describe: the keys
    ``image_shape``, ``num_classes`` and ``model``, either ``'convnet'`` (the default, with
    ``width``, ``depth``, ``norm``, ``act``, ``pool``) or a Flax module's import path
    (:func:`from_module_path`)."""
    name = config.get('model', 'convnet')
    if name != 'convnet':
        return from_module_path(name, tuple(config['image_shape']), config['num_classes'])
    return convnet(tuple(config['image_shape']), config['num_classes'], config['width'],
                   config['depth'], config['norm'], config.get('act', 'relu'),
                   config.get('pool', 'avgpool'))


from_flax = flax_module.from_flax


def from_module_path(path: str, input_shape, num_classes: int) -> Model:
    """The Flax module ``package.module:Name`` names, as a :class:`Model`
    (:func:`mct_jax.models.flax_module.from_path`)."""
    return flax_module.from_flax(flax_module.from_path(path, num_classes), input_shape)


def num_params(params: Params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))
