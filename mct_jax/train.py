"""Training a network on real or synthetic images: losses, SGD steps and epochs, accuracy.

Shared by expert training (plain SGD on real data) and evaluation (SGD with momentum and
weight decay on a synthetic set). A model's hand-written gradient (``Model.loss_grad``) is
used where it has one. Images may be raw pixels (integer dtype) with their
``Preprocessing`` (:mod:`mct_jax.data.preprocess`), which turns each batch into network
inputs inside the program, or network inputs already (float).

An epoch is planned by :func:`epoch_plan` (its shuffle and augmentation keys) and run as
:func:`run_batches` over its batches: :func:`sgd_epoch` gathers them inside the program from
images on the device; expert training hands them over from the host a group at a time
(:mod:`mct_jax.expert`). Both compute the same parameters.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mct_jax import augment
from mct_jax.data import preprocess

ApplyFn = Callable[[Any, jax.Array], jax.Array]

# Images per forward pass when predicting: half the training batch, so that testing needs
# less memory than a training step; by backend where measured otherwise (the measurements:
# docs/benchmarks.md#gradient-passes).
PREDICT_BATCH = 128
PREDICT_BATCH_BY_BACKEND = {'cpu': 16}


def predict_batch(backend: str | None = None) -> int:
    """Images per forward pass when predicting on ``backend`` (default: JAX's)."""
    return PREDICT_BATCH_BY_BACKEND.get(backend or jax.default_backend(), PREDICT_BATCH)


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


# Images per gradient pass (:func:`microbatched`) when a caller does not choose, by backend,
# from docs/benchmarks.md#gradient-passes: on XLA:CPU, passes of 16 images need a
# seventeenth of the temporaries of one 256-image pass and run faster (the feature maps of
# a pass stay in cache). Backends not listed take the whole batch in one pass, as the
# reference does.
MICROBATCH_BY_BACKEND = {'cpu': 16}


def default_microbatch(backend: str | None = None) -> int:
    """Images per gradient pass for ``backend`` (default: JAX's): 0 means the whole batch."""
    return MICROBATCH_BY_BACKEND.get(backend or jax.default_backend(), 0)


def microbatched(loss_grad, size: int):
    """``loss_grad`` (the interface of :func:`autodiff_loss_grad`) over passes of ``size``
    images, combined into the gradient of the whole batch's mean loss.

    The cross-entropy is a mean of per-image terms and the networks that use this have no
    batch statistics, so the batch gradient is the size-weighted mean of the passes'
    gradients: the same value up to rounding, with the temporaries of one pass. A batch
    of B images runs B // size passes as one ``lax.scan`` and the remaining B % size images
    as one more pass. ``size`` 0, or at least the batch, is one pass; so is a call that
    asks for the input gradient, whose rows would otherwise need stitching back together.
    """
    def grad_fn(params, x, labels, input_grad=False):
        b = x.shape[0]
        if not size or size >= b or input_grad:
            return loss_grad(params, x, labels, input_grad=input_grad)
        full, rest = divmod(b, size)
        head = full * size

        def one(total, xy):
            grads, _, logits = loss_grad(params, xy[0], xy[1])
            return jax.tree.map(jnp.add, total, grads), logits
        zeros = jax.tree.map(jnp.zeros_like, params)
        chunks = (x[:head].reshape((full, size) + x.shape[1:]),
                  labels[:head].reshape((full, size) + labels.shape[1:]))
        total, logits = jax.lax.scan(one, zeros, chunks)
        total = jax.tree.map(lambda t: t * (size / b), total)
        logits = logits.reshape((head,) + logits.shape[2:])
        if rest:
            grads, _, last = loss_grad(params, x[head:], labels[head:])
            total = jax.tree.map(lambda t, g: t + g * (rest / b), total, grads)
            logits = jnp.concatenate([logits, last])
        return total, None, logits
    return grad_fn


def batch_indices(key, n: int, batch_size: int):
    """One epoch's shuffled minibatches, as PyTorch's shuffling DataLoader makes them.

    Returns ``(full, rest)``: [n // batch_size, batch_size] indices of the full batches and
    the [n % batch_size] indices of the last, smaller batch (possibly empty).
    """
    perm = jax.random.permutation(key, n)
    num_full = n // batch_size
    return perm[:num_full * batch_size].reshape(num_full, batch_size), perm[num_full * batch_size:]


def epoch_plan(key, n: int, batch_size: int):
    """An epoch over ``n`` images: ``(full, rest, keys)``, the :func:`batch_indices` of the
    shuffle drawn from ``key`` and one augmentation key per batch ([len(full) + 1] keys, the
    last for the smaller batch ``rest``). Traceable."""
    k_perm, k_aug = jax.random.split(key)
    full, rest = batch_indices(k_perm, n, min(batch_size, n))
    return full, rest, jax.random.split(k_aug, full.shape[0] + 1)


def sgd_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, loss_grad=None,
             microbatch: int = 0):
    """``step(carry, xb, yb) -> carry`` of minibatch SGD with ``tx``; ``carry`` is
    ``(params, opt_state, num_correct)``, counting correct predictions on the training
    batches as the reference reports training accuracy. ``microbatch``: images per
    gradient pass (:func:`microbatched`; 0: the whole batch)."""
    grad_fn = microbatched(loss_grad or autodiff_loss_grad(apply_fn), microbatch)

    def step(carry, xb, yb):
        params, opt_state, correct = carry
        grads, _, logits = grad_fn(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        hits = jnp.sum(jnp.argmax(logits, -1) == classes(yb), dtype=correct.dtype)
        return params, opt_state, correct + hits
    return step


def sgd_carry(params, tx: optax.GradientTransformation):
    """The initial ``carry`` of :func:`sgd_step`."""
    return params, tx.init(params), jnp.zeros((), jnp.int32)


def _batch(step, carry, xb, yb, key, prep, use_dsa: bool):
    """One step on one batch: network inputs of ``xb``, augmented when ``use_dsa``."""
    xb = preprocess.apply(prep, xb)
    if use_dsa:
        xb = augment.dsa(key, xb)
    return step(carry, xb, yb)


def run_batches(step, carry, xs, ys, keys, prep=None, use_dsa: bool = True):
    """Runs ``step`` over batches stacked on a leading axis (``xs`` [K, B, H, W, C], ``ys``
    [K, B], ``keys`` [K]) as one ``lax.scan``. Traceable."""
    def body(carry, inputs):
        xb, yb, k = inputs
        return _batch(step, carry, xb, yb, k, prep, use_dsa), None
    return jax.lax.scan(body, carry, (xs, ys, keys))[0]


def sgd_epoch(apply_fn: ApplyFn, params, opt_state, tx: optax.GradientTransformation,
              x, y, key, batch_size: int, use_dsa: bool = True, loss_grad=None, prep=None,
              microbatch: int = 0):
    """One epoch of minibatch SGD over (x, y), DSA on every batch.

    Traceable (call it inside ``jit``/``vmap``); the full batches run as one ``lax.scan``
    and a last smaller batch, if any, as one more step, so every image is seen once.
    ``loss_grad`` (e.g. ``Model.loss_grad``, the ConvNet's hand-written gradient) replaces
    ``jax.grad`` of the cross-entropy of ``apply_fn``: the same gradient, faster kernels.
    ``prep`` preprocesses raw (integer) images batch by batch; ``microbatch``: images per
    gradient pass (:func:`microbatched`).

    Returns:
      (params, opt_state, num_correct): ``num_correct`` counts correct predictions on the
      augmented training batches, as the reference reports training accuracy.
    """
    return _epoch(sgd_step(apply_fn, tx, loss_grad, microbatch),
                  (params, opt_state, jnp.zeros((), jnp.int32)), x, y, key, batch_size,
                  use_dsa, prep)


def sgd_epoch_with_stats(apply_stats, params, stats, opt_state,
                         tx: optax.GradientTransformation, x, y, key, batch_size: int,
                         use_dsa: bool = True, prep=None):
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
                  batch_size, use_dsa, prep)


def _epoch(step, carry, x, y, key, batch_size: int, use_dsa: bool, prep=None):
    """Runs ``step(carry, xb, yb) -> carry`` over one epoch of (x, y) on the device: the
    :func:`epoch_plan`'s full batches as one ``lax.scan``, a smaller last batch after it."""
    full, rest, keys = epoch_plan(key, x.shape[0], batch_size)

    def batch(carry, inputs):
        idx, k = inputs
        return _batch(step, carry, x[idx], y[idx], k, prep, use_dsa), None

    carry, _ = jax.lax.scan(batch, carry, (full, keys[:-1]))
    if rest.shape[0]:
        carry, _ = batch(carry, (rest, keys[-1]))
    return carry


def predict_correct(apply_fn: ApplyFn, params, x, y, batch_size: int | None = None, prep=None):
    """Number of correctly classified images, evaluated in fixed-size chunks (traceable).

    The last chunk is padded and masked so only one program is compiled; ``prep``
    preprocesses raw (integer) images chunk by chunk. ``batch_size``: images per chunk
    (default :func:`predict_batch`).
    """
    n = x.shape[0]
    b = min(batch_size or predict_batch(), n)
    num_chunks = -(-n // b)
    pad = num_chunks * b - n
    xp = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    yp = jnp.pad(y, (0, pad), constant_values=-1)  # -1 never matches a prediction

    def chunk(correct, i):
        xb = preprocess.apply(prep, jax.lax.dynamic_slice_in_dim(xp, i * b, b))
        yb = jax.lax.dynamic_slice_in_dim(yp, i * b, b)
        return correct + jnp.sum(jnp.argmax(apply_fn(params, xb), -1) == yb), None

    correct, _ = jax.lax.scan(chunk, jnp.zeros((), jnp.int32), jnp.arange(num_chunks))
    return correct


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=('batch_size',))
def accuracy(apply_fn: ApplyFn, params, x, y, batch_size: int | None = None, prep=None):
    """Top-1 accuracy in [0, 1] of one network on (x, y) (raw images through ``prep``)."""
    return predict_correct(apply_fn, params, x, y, batch_size, prep) / x.shape[0]
