"""Networks as pure ``init``/``apply`` pairs behind one interface, :class:`Model`.

A :class:`Model` binds an architecture's static choices (image shape, classes, width...):
``params = model.init(key)``, ``logits = model.apply(params, x)``. Everything else in the
library (expert training, the student rollout, evaluation) sees only this interface.
Optional fields carry faster hand-written derivatives where a model has them; without them
autodiff is used, with the same result.

:func:`get` builds an architecture by name (:data:`ARCHITECTURES`, or the field's spelling
of one). Each is one module of :mod:`mct_jax.models.architectures`, which registers its
names (:mod:`mct_jax.models.registry`): the ConvNet of trajectory matching, :func:`convnet`
(definition in :mod:`mct_jax.models.conv_net`, its hand-written gradient and
Hessian-vector product in :mod:`mct_jax.models.conv_net_grad`), and the field's other
evaluation architectures, written as ``flax.linen`` modules from the PyTorch-defined layers
of :mod:`mct_jax.models.modules`. A user's Flax module becomes a model with
:func:`from_flax` (:mod:`mct_jax.models.flax_module`), or by import path with
:func:`from_module_path`.

Batch norm keeps running statistics, which are not parameters: such a model also has
``init_stats`` and ``apply_stats`` (training normalises with batch statistics and updates
them, inference uses them); its plain ``apply`` is the training-mode forward pass.
"""

from __future__ import annotations

import math

import jax

from mct_jax.models import architectures, flax_module, registry  # noqa: F401 (registers)
from mct_jax.models.architectures.convnet import convnet  # noqa: F401
from mct_jax.models.conv_net import ACTIVATIONS, NORMS, POOLS, Params  # noqa: F401
from mct_jax.models.model import Model

ARCHITECTURES = registry.names()
ALIASES = registry.ALIASES
canonical_name = registry.canonical_name
register = registry.register
from_flax = flax_module.from_flax


def default_depth(input_shape) -> int:
    """The ConvNet depth the literature uses for an image size: 3 up to 32x32, 4 at 64x64
    (ConvNetD4, Tiny ImageNet), 5 at 128x128."""
    return max(3, int(math.log2(min(input_shape[:2]))) - 2)


def get(name: str, input_shape, num_classes: int, width: int = 128,
        depth: int | None = None, conv: str | None = None) -> Model:
    """An architecture by name (:data:`ARCHITECTURES`, or the field's spelling of one).

    ``width`` and ``depth`` apply to the ConvNet family (``convnet``: instance norm,
    ``convnet_bn``: batch norm, ``convnet_nn``: no norm); ``depth`` defaults to
    :func:`default_depth`. The others are the reference definitions. ``conv`` chooses the
    convolution's form (``'im2col'`` or ``'lax'``, the same values); None takes the backend's
    (:data:`mct_jax.models.layers.CONV_FORM_BY_BACKEND`). The pure ConvNets always run im2col.
    """
    return registry.build(name, input_shape, num_classes, width,
                          depth or default_depth(input_shape), conv)


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


def from_module_path(path: str, input_shape, num_classes: int) -> Model:
    """The Flax module ``package.module:Name`` names, as a :class:`Model`
    (:func:`mct_jax.models.flax_module.from_path`)."""
    return flax_module.from_flax(flax_module.from_path(path, num_classes), input_shape)


def num_params(params: Params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))
