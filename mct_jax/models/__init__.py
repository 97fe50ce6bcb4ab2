"""Networks as pure ``init``/``apply`` pairs behind one interface, :class:`Model`.

A :class:`Model` binds an architecture's static choices (image shape, classes, width...):
``params = model.init(key)``, ``logits = model.apply(params, x)``. Everything else in the
library (expert training, the student rollout, evaluation) sees only this interface.
Optional fields carry faster hand-written derivatives where a model has them; without them
autodiff is used, with the same result.

The ConvNet of trajectory matching is :func:`convnet` (definition in
:mod:`mct_jax.models.conv_net`, its hand-written gradient and Hessian-vector product in
:mod:`mct_jax.models.conv_net_grad`). A new architecture is a module with ``init`` and
``apply`` plus a line in :func:`from_config`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from mct_jax.models import conv_net, conv_net_grad
from mct_jax.models.conv_net import ACTIVATIONS, NORMS, POOLS, Params  # noqa: F401


class Model(NamedTuple):
    """An architecture with its static choices bound.

    ``init(key) -> params`` draws fresh parameters; ``apply(params, x) -> logits`` maps
    [B, H, W, C] images to [B, num_classes] logits. The optional fields are faster
    derivatives of the mean cross-entropy, used when present:

    * ``loss_grad(params, x, labels, input_grad=False) -> (grads, grad_x or None, logits)``;
    * ``stored_hvp``: ``(grad_and_residuals(params, x, labels) -> (grads, logits,
      residuals), hvp(params, residuals, x, labels, v, input_grad) -> (hv, hv_x or None))``,
      the gradient that also keeps what its Hessian-vector product needs.
    """
    init: Callable[..., Params]
    apply: Callable[..., Any]
    loss_grad: Callable[..., Any] | None = None
    stored_hvp: tuple[Callable[..., Any], Callable[..., Any]] | None = None


def convnet(input_shape, num_classes, width=128, depth=3, norm='instancenorm', act='relu',
            pool='avgpool') -> Model:
    """The ConvNet, METHOD.md section 1: ``m = convnet((32, 32, 3), 10); p = m.init(key)``.

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
                    lambda params, residuals, x, labels, v, input_grad=False:
                        conv_net_grad.loss_hvp(params, residuals, x, labels, v, act, pool,
                                               input_grad)))


def from_config(config: dict) -> Model:
    """The model an expert folder's or a distilled set's settings describe (the keys
    ``image_shape``, ``num_classes``, ``width``, ``depth``, ``norm``, ``act``, ``pool``)."""
    return convnet(tuple(config['image_shape']), config['num_classes'], config['width'],
                   config['depth'], config['norm'], config.get('act', 'relu'),
                   config.get('pool', 'avgpool'))


def num_params(params: Params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))
