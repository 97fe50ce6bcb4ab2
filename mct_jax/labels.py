"""Labels of a synthetic set: hard classes, an expert's soft labels, or learned soft labels.

* ``hard``: one class per image (MTT, MCT's default).
* ``teacher``: fixed probabilities ``softmax(f(x; theta) / T)`` from one expert's parameters
  theta at a chosen epoch on the initial images (the MCT release's and TESLA's soft labels;
  they recompute them each iteration from the current images and expert, ours are fixed
  once, so that a run's targets do not move under it).
* ``learned``: DATM's scheme (Guo et al., 2024). The labels are logits, part of the
  synthetic set and learned with their own optimiser; the student fits
  ``softmax(label_logits)`` (:func:`targets`). They start as the mean
  logits of the experts that classify the image correctly, and the images are drawn only
  among those one expert classifies correctly (:func:`correct_subset`).

Everything here is a pure function of parameters and images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mct_jax import train
from mct_jax.data import arrays, preprocess, splits

KINDS = ('hard', 'teacher', 'learned')


def targets(syn: dict, labels):
    """What the student fits: ``softmax(syn['label_logits'])`` when the set learns its labels,
    else ``labels`` ([n] integer classes, or [n, K] fixed probabilities)."""
    if 'label_logits' in syn:
        return jax.nn.softmax(syn['label_logits'], axis=-1)
    return labels


def logits(apply_fn, params, images, batch_size: int = train.PREDICT_BATCH, prep=None):
    """[n, K] logits of ``apply_fn(params, .)`` on ``images``, in fixed-size chunks; raw
    (integer) images, in memory or not (:mod:`mct_jax.data.arrays`), are read and
    preprocessed (``prep``) a chunk at a time."""
    out = [apply_fn(params, preprocess.apply(prep, jnp.asarray(images[i:i + batch_size])))
           for i in range(0, images.shape[0], batch_size)]
    return jnp.concatenate(out)


def teacher(apply_fn, params, images, temperature: float = 1.0):
    """Fixed soft labels: ``softmax(logits / temperature)``, [n, K] probabilities."""
    return jax.nn.softmax(logits(apply_fn, params, images) / temperature, axis=-1)


def correct_subset(key, apply_fn, params, x, y, num_classes: int, ipc: int, prep=None):
    """``ipc`` random training images of each class that the network classifies correctly:
    (network inputs [num_classes * ipc, ...], labels), classes in order. Raw images ``x``
    are preprocessed with ``prep``.

    Raises ``ValueError`` naming the class when it has fewer than ``ipc`` such images.
    """
    y = np.asarray(y)
    pred = np.asarray(jnp.argmax(logits(apply_fn, params, x, prep=prep), -1))
    correct = pred == y
    for c in range(num_classes):
        n = int(np.sum(correct & (y == c)))
        if n < ipc:
            raise ValueError(f'The labelling expert classifies only {n} training images '
                             f'of class {c} correctly, fewer than --ipc={ipc}; lower --ipc, '
                             'use more training images or a later --label_epoch.')
    idx = splits.random_per_class_indices(key, y, num_classes, ipc, candidates=correct)
    return (preprocess.apply_host(prep, arrays.take(x, idx)),
            y[idx].astype(np.int32))


def learned_init(apply_fn, expert_params: list, images, labels):
    """Initial label logits [n, K]: for each image, the mean logits of the experts that
    classify it correctly (of all experts where none does)."""
    stack = jnp.stack([logits(apply_fn, p, images) for p in expert_params])   # [E, n, K]
    correct = (jnp.argmax(stack, -1) == jnp.asarray(labels)[None]).astype(stack.dtype)
    correct = jnp.where(correct.sum(0, keepdims=True) > 0, correct, 1.0)
    return (stack * correct[..., None]).sum(0) / correct.sum(0)[..., None]
