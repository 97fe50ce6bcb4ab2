"""Training a network on real or synthetic images: losses, jitted SGD epochs, accuracy.

Shared by expert training (plain SGD on real data) and evaluation (SGD with momentum and
weight decay on a synthetic set). A model's hand-written gradient (``Model.loss_grad``) is
used where it has one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mct_jax import augment

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy; logits [B, K], integer labels [B] or target
    probabilities [B, K] (soft labels)."""
    if labels.ndim == 2:
        return optax.softmax_cross_entropy(logits, labels).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classes(labels):
    """The class of each example: integer labels as they are, soft labels' most probable."""
    return jnp.argmax(labels, -1) if labels.ndim == 2 else labels


def autodiff_loss_grad(apply_fn: ApplyFn):
    """``loss_grad(params, x, labels, input_grad) -> (grads, grad_x or None, logits)`` by
    ``jax.grad`` of the cross-entropy of ``apply_fn``: the interface of
    :func:`mct_jax.models.loss_grad`, for models without a hand-written gradient."""
    def loss_grad(params, x, labels, input_grad=False):
        def ce(p, x):
            logits = apply_fn(p, x)
            return cross_entropy(logits, labels), logits
        if input_grad:
            (grads, grad_x), logits = jax.grad(ce, argnums=(0, 1), has_aux=True)(params, x)
            return grads, grad_x, logits
        grads, logits = jax.grad(ce, has_aux=True)(params, x)
        return grads, None, logits
    return loss_grad


def batch_indices(key, n: int, batch_size: int):
    """One epoch's shuffled minibatches, as PyTorch's shuffling DataLoader makes them.

    Returns ``(full, rest)``: [n // batch_size, batch_size] indices of the full batches and
    the [n % batch_size] indices of the last, smaller batch (possibly empty).
    """
    perm = jax.random.permutation(key, n)
    num_full = n // batch_size
    return perm[:num_full * batch_size].reshape(num_full, batch_size), perm[num_full * batch_size:]


def sgd_epoch(apply_fn: ApplyFn, params, opt_state, tx: optax.GradientTransformation,
              x, y, key, batch_size: int, use_dsa: bool = True, loss_grad=None):
    """One epoch of minibatch SGD over (x, y), DSA on every batch.

    Traceable (call it inside ``jit``/``vmap``); the full batches run as one ``lax.scan``
    and a last smaller batch, if any, as one more step, so every image is seen once.
    ``loss_grad`` (e.g. ``Model.loss_grad``, the ConvNet's hand-written gradient) replaces
    ``jax.grad`` of the cross-entropy of ``apply_fn``: the same gradient, faster kernels.

    Returns:
      (params, opt_state, num_correct): ``num_correct`` counts correct predictions on the
      augmented training batches, as the reference reports training accuracy.
    """
    grad_fn = loss_grad or autodiff_loss_grad(apply_fn)

    def step(carry, xb, yb):
        params, opt_state, correct = carry
        grads, _, logits = grad_fn(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        hits = jnp.sum(jnp.argmax(logits, -1) == classes(yb), dtype=correct.dtype)
        return params, opt_state, correct + hits
    return _epoch(step, (params, opt_state, jnp.zeros((), jnp.int32)), x, y, key, batch_size,
                  use_dsa)


def sgd_epoch_with_stats(apply_stats, params, stats, opt_state,
                         tx: optax.GradientTransformation, x, y, key, batch_size: int,
                         use_dsa: bool = True):
    """:func:`sgd_epoch` for a model with batch norm: ``apply_stats(params, stats, x,
    train=True) -> (logits, stats)`` normalises each batch with its own statistics and
    updates the running ones. Returns ``(params, stats, opt_state, num_correct)``."""
    def loss(params, stats, xb, yb):
        logits, stats = apply_stats(params, stats, xb, True)
        return cross_entropy(logits, yb), (logits, stats)

    def step(carry, xb, yb):
        params, stats, opt_state, correct = carry
        grads, (logits, stats) = jax.grad(loss, has_aux=True)(params, stats, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        hits = jnp.sum(jnp.argmax(logits, -1) == classes(yb), dtype=correct.dtype)
        return params, stats, opt_state, correct + hits
    return _epoch(step, (params, stats, opt_state, jnp.zeros((), jnp.int32)), x, y, key,
                  batch_size, use_dsa)


def _epoch(step, carry, x, y, key, batch_size: int, use_dsa: bool):
    """Runs ``step(carry, xb, yb) -> carry`` over one epoch's shuffled (and augmented)
    minibatches: the full batches as one ``lax.scan``, a smaller last batch after it."""
    n = x.shape[0]
    k_perm, k_aug = jax.random.split(key)
    full, rest = batch_indices(k_perm, n, min(batch_size, n))

    def batch(carry, inputs):
        idx, k = inputs
        xb, yb = x[idx], y[idx]
        if use_dsa:
            xb = augment.dsa(k, xb)
        return step(carry, xb, yb), None

    keys = jax.random.split(k_aug, full.shape[0] + 1)
    carry, _ = jax.lax.scan(batch, carry, (full, keys[:-1]))
    if rest.shape[0]:
        carry, _ = batch(carry, (rest, keys[-1]))
    return carry


def predict_correct(apply_fn: ApplyFn, params, x, y, batch_size: int = 1000):
    """Number of correctly classified images, evaluated in fixed-size chunks (traceable).

    The last chunk is padded and masked so only one program is compiled.
    """
    n = x.shape[0]
    b = min(batch_size, n)
    num_chunks = -(-n // b)
    pad = num_chunks * b - n
    xp = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    yp = jnp.pad(y, (0, pad), constant_values=-1)  # -1 never matches a prediction

    def chunk(correct, i):
        xb = jax.lax.dynamic_slice_in_dim(xp, i * b, b)
        yb = jax.lax.dynamic_slice_in_dim(yp, i * b, b)
        return correct + jnp.sum(jnp.argmax(apply_fn(params, xb), -1) == yb), None

    correct, _ = jax.lax.scan(chunk, jnp.zeros((), jnp.int32), jnp.arange(num_chunks))
    return correct


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=('batch_size',))
def accuracy(apply_fn: ApplyFn, params, x, y, batch_size: int = 1000):
    """Top-1 accuracy in [0, 1] of one network on (x, y)."""
    return predict_correct(apply_fn, params, x, y, batch_size) / x.shape[0]
