"""The differentiable student rollout and the trajectory-matching loss (METHOD.md section 4).

A student starts at an expert's parameters theta_start, takes N SGD steps on synthetic
minibatches, and is compared with the expert's parameters theta_target M epochs later:

    loss = ||theta_N - theta_target||^2 / ||theta_start - theta_target||^2      (all leaves)

The N steps are one ``lax.scan``; ``jax.grad`` of the loss with respect to the synthetic
images and the student learning rate is the exact meta-gradient, computed by one of two
methods (:func:`meta_loss`): forward-over-reverse through a custom VJP (the default, the
fastest) or reverse-over-reverse through the scan, optionally with each step
rematerialised (``remat=True``).

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


def residual_bytes(grad_and_residuals: Callable, theta: PyTree, images, labels) -> int:
    """Bytes one student step stores for the backward pass when residuals are kept: the
    residuals of ``grad_and_residuals(theta, images, labels)`` for this minibatch and the
    student gradient. Computed from shapes only; nothing runs."""
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    grads, _, res = jax.eval_shape(grad_and_residuals, *jax.tree.map(spec, (theta, images,
                                                                            labels)))
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves((grads, res)))


def residual_plan(stored_hvp, theta: PyTree, images, labels, num_steps: int,
                  remat: bool = False, residual_budget: float | None = None):
    """``(store, bytes)``: whether the forward method stores the residuals of the N steps
    (see :func:`rollout`), and how many bytes they take on this device for this minibatch
    shape. From shapes only; nothing runs."""
    if stored_hvp is None:
        return False, 0
    need = num_steps * residual_bytes(stored_hvp[0], theta, images, labels)
    return not remat and (residual_budget is None or need <= residual_budget), need


def matching_loss(theta_n: PyTree, theta_start: PyTree, theta_target: PyTree):
    """Normalised parameter matching loss (METHOD.md section 4, step 3)."""
    num = sum(jnp.sum(jnp.square(a - b)) for a, b in
              zip(jax.tree.leaves(theta_n), jax.tree.leaves(theta_target)))
    den = sum(jnp.sum(jnp.square(a - b)) for a, b in
              zip(jax.tree.leaves(theta_start), jax.tree.leaves(theta_target)))
    return num / den


METHODS = ('forward', 'reverse')


def tree_vdot(a: PyTree, b: PyTree):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def rollout(apply_fn: Callable, theta_start: PyTree, images, labels, lr, key, num_steps: int,
            batch_size: int, use_dsa: bool = True, remat: bool = False,
            axis_name: str | None = None, num_shards: int = 1, unroll: int | bool = 1,
            loss_grad: Callable | None = None, method: str = 'forward',
            stored_hvp: tuple[Callable, Callable] | None = None,
            residual_budget: float | None = None):
    """N student SGD steps ``theta <- theta - lr * grad CE(theta; augmented minibatch)``.

    Args:
      apply_fn: ``apply(params, x) -> logits``.
      theta_start: start parameters.
      images: [n, H, W, C] synthetic images; labels: [n] int.
      lr: scalar student learning rate (learned).
      key: PRNG key; step t augments with ``fold_in(key, t)``.
      num_steps: N (static).
      batch_size: images per step (static); divisible by ``num_shards``.
      remat: rematerialise each step in the backward pass: ``method='reverse'`` through
        ``jax.checkpoint``; ``method='forward'`` by not storing residuals (see
        ``stored_hvp``).
      axis_name, num_shards: inside ``pmap``: the device axis and its size; each device
        takes its 1/num_shards of every minibatch. The augmentation is drawn for the whole
        minibatch and then sliced, so the result does not depend on the device count.
      unroll: ``lax.scan``'s unroll factor (``True``: fully unrolled, e.g. so that XLA's
        cost analysis counts every step).
      loss_grad: the student gradient ``loss_grad(params, x, labels, input_grad)`` (e.g. the
        ConvNet's hand-written :func:`mct_jax.models.loss_grad`); default: ``jax.grad`` of
        the cross-entropy of ``apply_fn``. Used by ``method='forward'``.
      method: how ``jax.grad`` of a function of the result differentiates the rollout, see
        :func:`meta_loss`. Both give the same derivative.
      stored_hvp: ``method='forward'``: the student gradient that also returns residuals and
        the Hessian-vector product that uses them (``Model.stored_hvp``); the forward pass
        then stores each step's residuals so that the backward pass need not recompute the
        student's forward and backward passes (unless ``remat``).
      residual_budget: bytes the stored residuals of the N steps may take on this device
        (:func:`residual_bytes`); beyond it each step is recomputed. None: no limit.
    Returns:
      theta_N.
    """
    if method not in METHODS:
        raise ValueError(f'Unknown meta-gradient method {method!r}; choose one of {METHODS}.')
    k_idx, k_aug = jax.random.split(key)
    idx = step_indices(k_idx, images.shape[0], batch_size, num_steps)
    local = idx.shape[1] // num_shards
    steps = jnp.arange(num_steps)

    def minibatch(images, labels, k_aug, t, step_idx):
        """This device's share of step t's (augmented) minibatch."""
        xb, yb = images[step_idx], labels[step_idx]
        if use_dsa:
            xb = augment.dsa(jax.random.fold_in(k_aug, t), xb)
        if num_shards > 1:
            shard = lax.axis_index(axis_name)
            xb = lax.dynamic_slice_in_dim(xb, shard * local, local)
            yb = lax.dynamic_slice_in_dim(yb, shard * local, local)
        return xb, yb

    def sgd(theta, grads, lr):
        return jax.tree.map(lambda p, g: p - lr * g, theta, grads)

    # Reverse differentiates through the student gradient itself, so it must be autodiff's
    # (of apply_fn's im2col convolution); forward only ever takes its forward-mode derivative.
    if method == 'reverse' or loss_grad is None:
        loss_grad = train.autodiff_loss_grad(apply_fn)

    def student_grad(theta, xb, yb, input_grad):
        grads, grad_x, _ = loss_grad(theta, xb, yb, input_grad)
        if axis_name is not None:
            grads = lax.pmean(grads, axis_name)
        return grads, grad_x

    if method == 'reverse':
        def step(theta, inputs):
            xb, yb = minibatch(images, labels, k_aug, *inputs)
            return sgd(theta, student_grad(theta, xb, yb, False)[0], lr), None

        if remat:
            step = jax.checkpoint(step)
        theta, _ = lax.scan(step, theta_start, (steps, idx), unroll=unroll)
        return theta

    store, _ = residual_plan(stored_hvp, theta_start,
                             jax.ShapeDtypeStruct((local,) + images.shape[1:], images.dtype),
                             jax.ShapeDtypeStruct((local,), labels.dtype), num_steps, remat,
                             residual_budget)
    if store:
        grad_and_residuals, hvp = stored_hvp

    # Everything the rollout depends on is an argument (nothing traced is closed over), so
    # that it composes with vmap and pmap.
    def run_steps(theta, images, lr, labels, k_aug, idx):
        def step(theta, inputs):
            xb, yb = minibatch(images, labels, k_aug, *inputs)
            if store:
                grads, _, res = grad_and_residuals(theta, xb, yb)
                if axis_name is not None:
                    grads = lax.pmean(grads, axis_name)
                return sgd(theta, grads, lr), (theta, grads, res)
            return sgd(theta, student_grad(theta, xb, yb, False)[0], lr), theta
        return lax.scan(step, theta, (steps, idx), unroll=unroll)

    @jax.custom_vjp
    def run(theta, images, lr, labels, k_aug, idx):
        return run_steps(theta, images, lr, labels, k_aug, idx)[0]

    def run_fwd(theta, images, lr, labels, k_aug, idx):
        theta_n, thetas = run_steps(theta, images, lr, labels, k_aug, idx)
        return theta_n, (thetas, images, lr, labels, k_aug, idx)

    def run_bwd(residuals, ct):
        # Step t maps theta_t to theta_t - lr g_t(theta_t, x_t) with x_t the augmented batch
        # drawn from the images. Its transpose, for the cotangent v of theta_{t+1}:
        #   theta_t: v - lr H_tt v;   images: -lr A_t^T H_xt v;   lr: -<g_t, v>,
        # where H_tt v and H_xt v (the Hessian of the student loss applied to v, in its
        # theta and x rows) are the forward-mode derivative of (g_t, grad_x) along v (jax.jvp,
        # or the hand-written ``hvp`` from the step's stored residuals), and A_t^T pulls a
        # batch gradient back through the augmentation and the indexing.
        thetas, images, lr, labels, k_aug, idx = residuals

        def step(carry, inputs):
            v, ct_images, ct_lr = carry
            saved, t, step_idx = inputs
            xb, pull_back, yb = jax.vjp(lambda im: minibatch(im, labels, k_aug, t, step_idx),
                                        images, has_aux=True)
            if store:
                theta, g, res = saved
                hv, hv_x = hvp(theta, res, xb, yb, v, True)
                if axis_name is not None:
                    hv = lax.pmean(hv, axis_name)
            else:
                (g, _), (hv, hv_x) = jax.jvp(lambda p: student_grad(p, xb, yb, True),
                                            (saved,), (v,))
            ct_images = ct_images + pull_back(-lr * hv_x)[0]
            ct_lr = ct_lr - tree_vdot(g, v).astype(ct_lr.dtype)
            return (sgd(v, hv, lr), ct_images, ct_lr), None

        init = (ct, jnp.zeros_like(images), jnp.zeros_like(lr))
        (v, ct_images, ct_lr), _ = lax.scan(step, init, (thetas, steps, idx), reverse=True,
                                            unroll=unroll)
        return v, ct_images, ct_lr, None, None, None

    run.defvjp(run_fwd, run_bwd)
    return run(theta_start, images, jnp.asarray(lr, images.dtype), labels, k_aug, idx)


def meta_loss(images, lr, apply_fn, labels, theta_start, theta_target, key, num_steps: int,
              batch_size: int, use_dsa: bool = True, remat: bool = False,
              axis_name: str | None = None, num_shards: int = 1, unroll: int | bool = 1,
              loss_grad: Callable | None = None, method: str = 'forward',
              stored_hvp: tuple[Callable, Callable] | None = None,
              residual_budget: float | None = None):
    """Matching loss of a rollout, as a function of (images, lr) for ``jax.grad``.

    ``method`` chooses how the meta-gradient is computed (the same derivative either way):

    - ``'forward'`` (default): the rollout has a custom VJP. Its forward pass keeps each
      step's parameters; its backward pass walks the steps in reverse and gets each step's
      Hessian-vector products in forward mode. With ``stored_hvp`` (the ConvNet's
      hand-written pair), the forward pass also keeps each step's residuals (the student
      backward pass's cotangents and the norms' statistics, about a third of a
      first-block feature map per image) and the backward pass computes the tangents from
      them and the forward convolutions, as long as the N steps' residuals fit
      ``residual_budget``.
      Otherwise, or with ``remat``, it recomputes each step (``jax.jvp`` of the student
      gradient ``loss_grad``) and memory does not grow with N. With the ConvNet's
      hand-written gradient every derivative is a fast forward-form kernel.
    - ``'reverse'``: ``jax.grad`` straight through the ``lax.scan`` (reverse over reverse,
      as the reference PyTorch code does with ``create_graph=True``), with ``remat``
      optionally rematerialising each step. Uses ``apply_fn``'s im2col convolution.
    """
    theta_n = rollout(apply_fn, theta_start, images, labels, lr, key, num_steps, batch_size,
                      use_dsa, remat, axis_name, num_shards, unroll, loss_grad, method,
                      stored_hvp, residual_budget)
    return matching_loss(theta_n, theta_start, theta_target)
