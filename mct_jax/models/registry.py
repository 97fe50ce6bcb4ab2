"""Architectures by name. Each module of :mod:`mct_jax.models.architectures` registers the
names it defines, with the spellings the field uses for them (MTT's ``get_network``,
DD-Ranking); :func:`mct_jax.models.get` builds one by name."""

from __future__ import annotations

from typing import Callable

from mct_jax.models.model import Model

# name -> build(input_shape, num_classes, width, depth, conv) -> Model
_BUILDERS: dict[str, Callable[..., Model]] = {}
# the field's spelling, lower-cased without '_' or '-' -> name
ALIASES: dict[str, str] = {}


def register(name: str, build: Callable[..., Model], aliases=()) -> None:
    """Makes ``build(input_shape, num_classes, width, depth, conv) -> Model`` the
    architecture ``name``, also reachable as each of ``aliases``. ``width`` and ``depth``
    are the ConvNet family's (others ignore them); ``conv`` is the convolution's form
    (:func:`mct_jax.models.layers.convolve`; None: the backend's)."""
    if name in _BUILDERS:
        raise ValueError(f'Architecture {name!r} is registered twice.')
    _BUILDERS[name] = build
    ALIASES.update({a: name for a in aliases})


def names() -> tuple[str, ...]:
    """Registered names, in the order they were registered."""
    return tuple(_BUILDERS)


def canonical_name(name: str) -> str:
    """``name`` lower-cased with the field's spellings mapped to ours (``ResNet18BN`` ->
    ``resnet18_bn``); raises ``ValueError`` naming the choices for an unknown one."""
    key = name.strip().lower().replace('-', '_')
    key = ALIASES.get(key.replace('_', ''), ALIASES.get(key, key))
    if key not in _BUILDERS:
        raise ValueError(f'Unknown architecture {name!r}; choose from {", ".join(_BUILDERS)}.')
    return key


def build(name: str, input_shape, num_classes: int, width: int, depth: int,
          conv: str | None = None) -> Model:
    """The architecture ``name`` (or the field's spelling of it) for these images."""
    return _BUILDERS[canonical_name(name)](tuple(input_shape), num_classes, width, depth, conv)
