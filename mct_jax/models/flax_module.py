"""A Flax module as a :class:`~mct_jax.models.Model`: bring your own network.

    import flax.linen as nn
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(32, (3, 3))(x)))
            return nn.Dense(10)(x.mean(axis=(1, 2)))

    model = models.from_flax(Net(), (32, 32, 3))

The module maps ``[B, H, W, C]`` images to ``[B, num_classes]`` logits and is deterministic
(no dropout). Its parameters are the ``params`` collection, drawn from the key as
``module.init`` draws them. A module with a ``batch_stats`` collection (``nn.BatchNorm``) is
a model with running statistics, as the reference evaluation's batch-norm networks are:
training normalises with the batch's statistics and updates the running ones, inference
uses the running ones; the module's ``train`` argument (``train_arg``) says which. Any
other variable collection is refused, naming it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import jax
import jax.numpy as jnp

from mct_jax.models.model import Model


def from_flax(module, input_shape, *, train_arg: str = 'train') -> Model:
    """``module`` (a ``flax.linen.Module``) as a :class:`Model` for ``input_shape`` images
    (``(H, W, C)``).

    Raises:
      ValueError: the module holds variables other than ``params`` and ``batch_stats``, or
        has batch statistics but no ``train_arg`` argument to switch them.
    """
    x0 = jnp.zeros((1, *input_shape), jnp.float32)
    takes_train = train_arg in inspect.signature(module.__call__).parameters
    mode = (lambda train: {train_arg: train}) if takes_train else (lambda train: {})
    shapes = jax.eval_shape(lambda key: module.init(key, x0, **mode(False)),
                            jax.random.key(0))
    name = type(module).__name__
    other = sorted(set(shapes) - {'params', 'batch_stats'})
    if other:
        raise ValueError(f'{name} holds the variable collections {other}; a model keeps only '
                         "'params' and 'batch_stats' (a deterministic network, no dropout).")

    def init(key):
        return module.init(key, x0, **mode(False))['params']

    if 'batch_stats' not in shapes:
        return Model(init=init,
                     apply=lambda params, x: module.apply({'params': params}, x, **mode(False)))
    if not takes_train:
        raise ValueError(f'{name} has batch statistics but no {train_arg!r} argument to switch '
                         'between batch and running statistics; add one (or pass train_arg=).')
    def init_stats():
        # Where the module starts them (nn.BatchNorm: mean 0, variance 1), whatever the key;
        # inside a traced function the forward pass init runs is dead code, removed.
        return module.init(jax.random.key(0), x0, **mode(False))['batch_stats']

    def apply_stats(params, stats, x, train):
        variables = {'params': params, 'batch_stats': stats}
        if not train:
            return module.apply(variables, x, **mode(False)), stats
        logits, updated = module.apply(variables, x, mutable=['batch_stats'], **mode(True))
        return logits, updated['batch_stats']

    return Model(init=init,
                 apply=lambda params, x: apply_stats(params, init_stats(), x, True)[0],
                 init_stats=init_stats, apply_stats=apply_stats)


def check_outputs(model: Model, input_shape, num_classes: int, name: str) -> None:
    """Raises ``ValueError`` unless ``model`` maps a batch of ``input_shape`` images to one
    logit per class; on shapes only, nothing is computed."""
    params = jax.eval_shape(model.init, jax.random.key(0))
    out = jax.eval_shape(model.apply, params,
                         jax.ShapeDtypeStruct((2, *input_shape), jnp.float32))
    if getattr(out, 'shape', None) != (2, num_classes):
        got = getattr(out, 'shape', type(out).__name__)
        raise ValueError(f'{name} maps a batch of 2 {tuple(input_shape)} images to {got}, not '
                         f'(2, {num_classes}), one logit per class; give it {num_classes} '
                         'outputs (a num_classes field is filled in).')


def from_path(path: str, num_classes: int):
    """The Flax module ``package.module:Name`` names: a ``flax.linen.Module`` class, built
    with ``num_classes=`` when it has that field (else with no arguments), or an instance.

    Raises:
      ValueError: the path does not import, names nothing, or names no Flax module; the
        message says which and how to fix it.
    """
    import flax.linen as nn
    where, _, name = path.partition(':')
    if not where or not name:
        raise ValueError(f'{path!r} is not package.module:Name (e.g. my_nets.wide:WideNet).')
    try:
        found = importlib.import_module(where)
    except ImportError as e:
        raise ValueError(f'{path!r}: cannot import {where!r} ({e}); install it or put it on '
                         'PYTHONPATH.') from None
    try:
        for part in name.split('.'):
            found = getattr(found, part)
    except AttributeError:
        raise ValueError(f'{path!r}: {where} has no {name!r}.') from None
    if isinstance(found, type) and issubclass(found, nn.Module):
        fields = {f.name for f in dataclasses.fields(found)}
        return found(num_classes=num_classes) if 'num_classes' in fields else found()
    if isinstance(found, nn.Module):
        return found
    raise ValueError(f'{path!r} is a {type(found).__name__}, not a flax.linen.Module class or '
                     'instance.')
