"""The differentiable student rollout and the trajectory-matching loss (METHOD.md section 4).

A student starts at an expert's parameters theta_start, takes N SGD steps on synthetic
minibatches, and is compared with the expert's parameters theta_target M epochs later:

    loss = ||theta_N - theta_target||^2 / ||theta_start - theta_target||^2      (all leaves)

The N steps are one ``lax.scan``; ``jax.grad`` of the loss with respect to the synthetic
images and the student learning rate is the exact meta-gradient. ``remat=True`` wraps the
scan body in ``jax.checkpoint``, so the backward pass recomputes each step's activations
instead of storing them: the same gradient with memory that does not grow with the
activations of all N steps.

Several devices: under ``pmap`` with ``axis_name``, each step's minibatch is split across the
devices and the student gradient is averaged with ``lax.pmean``; see
:mod:`mct_jax.parallel` for how the meta-gradients are combined.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from mct_jax import augment, train

PyTree = Any


def step_indices(key, num_images: int, batch_size: int, num_steps: int):
    """[num_steps, batch_size] image indices, one minibatch per student step.

    As in the reference, minibatches are consecutive chunks of random permutations of the
    synthetic set (a stream of permutations, so every chunk is full). When the batch is the
    whole set every step simply uses all images, in order.
    """
    if batch_size >= num_images:
        return jnp.broadcast_to(jnp.arange(num_images), (num_steps, num_images))
    per_perm = -(-num_steps * batch_size // num_images)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_images))(
        jax.random.split(key, per_perm))
    return perms.reshape(-1)[:num_steps * batch_size].reshape(num_steps, batch_size)


def matching_loss(theta_n: PyTree, theta_start: PyTree, theta_target: PyTree):
    """Normalised parameter matching loss (METHOD.md section 4, step 3)."""
    num = sum(jnp.sum(jnp.square(a - b)) for a, b in
              zip(jax.tree.leaves(theta_n), jax.tree.leaves(theta_target)))
    den = sum(jnp.sum(jnp.square(a - b)) for a, b in
              zip(jax.tree.leaves(theta_start), jax.tree.leaves(theta_target)))
    return num / den


def rollout(apply_fn: Callable, theta_start: PyTree, images, labels, lr, key, num_steps: int,
            batch_size: int, use_dsa: bool = True, remat: bool = False,
            axis_name: str | None = None, num_shards: int = 1, unroll: int | bool = 1):
    """N student SGD steps ``theta <- theta - lr * grad CE(theta; augmented minibatch)``.

    Args:
      apply_fn: ``apply(params, x) -> logits``.
      theta_start: start parameters.
      images: [n, H, W, C] synthetic images; labels: [n] int.
      lr: scalar student learning rate (learned).
      key: PRNG key; step t augments with ``fold_in(key, t)``.
      num_steps: N (static).
      batch_size: images per step (static); divisible by ``num_shards``.
      remat: rematerialise each step in the backward pass (``jax.checkpoint``).
      axis_name, num_shards: inside ``pmap``: the device axis and its size; each device
        takes its 1/num_shards of every minibatch. The augmentation is drawn for the whole
        minibatch and then sliced, so the result does not depend on the device count.
      unroll: ``lax.scan``'s unroll factor (``True``: fully unrolled, e.g. so that XLA's
        cost analysis counts every step).
    Returns:
      theta_N.
    """
    k_idx, k_aug = jax.random.split(key)
    idx = step_indices(k_idx, images.shape[0], batch_size, num_steps)
    batch = idx.shape[1]
    local = batch // num_shards
    shard = lax.axis_index(axis_name) if axis_name is not None else 0

    def step(theta, inputs):
        t, step_idx = inputs
        xb, yb = images[step_idx], labels[step_idx]
        if use_dsa:
            xb = augment.dsa(jax.random.fold_in(k_aug, t), xb)
        if num_shards > 1:
            xb = lax.dynamic_slice_in_dim(xb, shard * local, local)
            yb = lax.dynamic_slice_in_dim(yb, shard * local, local)
        grads = jax.grad(lambda p: train.cross_entropy(apply_fn(p, xb), yb))(theta)
        if axis_name is not None:
            grads = lax.pmean(grads, axis_name)
        theta = jax.tree.map(lambda p, g: p - lr * g, theta, grads)
        return theta, None

    if remat:
        step = jax.checkpoint(step)
    theta, _ = lax.scan(step, theta_start, (jnp.arange(num_steps), idx), unroll=unroll)
    return theta


def meta_loss(images, lr, apply_fn, labels, theta_start, theta_target, key, num_steps: int,
              batch_size: int, use_dsa: bool = True, remat: bool = False,
              axis_name: str | None = None, num_shards: int = 1, unroll: int | bool = 1):
    """Matching loss of a rollout, as a function of (images, lr) for ``jax.grad``."""
    theta_n = rollout(apply_fn, theta_start, images, labels, lr, key, num_steps, batch_size,
                      use_dsa, remat, axis_name, num_shards, unroll)
    return matching_loss(theta_n, theta_start, theta_target)
