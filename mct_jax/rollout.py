"""The differentiable student rollout and the trajectory-matching loss (docs/method.md section 4).

A student starts at an expert's parameters theta_start, takes N SGD steps on synthetic
minibatches, and is compared with the expert's parameters theta_target M epochs later:

    loss = ||theta_N - theta_target||^2 / ||theta_start - theta_target||^2      (all leaves)

The synthetic set is a pytree ``syn = {'images': [n, H, W, C], 'lr': []}`` (the images and
the learned student learning rate), with ``'label_logits': [n, K]`` when the labels are
learned (the student then fits ``softmax(label_logits)``, see
:func:`mct_jax.labels.targets`);
``jax.grad(meta_loss)(syn, ...)`` returns the meta-gradient as a pytree of the same
structure. The N steps are one ``lax.scan``; how they are differentiated is a
:class:`RolloutOptions` choice:

* ``method='forward'`` (the default, the fastest): the rollout has a custom VJP whose
  backward pass walks the steps in reverse and takes each step's Hessian-vector products in
  forward mode. With the model's hand-written pair (``Model.stored_hvp``) the forward pass
  also stores each step's residuals, while those of the N steps fit ``residual_budget``;
  otherwise (or with ``remat``) each step is recomputed and memory does not grow with N.
* ``method='reverse'``: ``jax.grad`` straight through the scan (reverse over reverse, as the
  reference PyTorch code does with ``create_graph=True``); ``remat`` rematerialises each step
  with ``jax.checkpoint``.

Both give the same derivative (float64 tests in ``tests/test_distill.py``). A third method is
*not* that derivative:

* ``method='tesla'``: the constant-memory approximation of TESLA (Cui et al., 2023) that the
  MCT authors' release uses. With r = theta_N - theta_target and D = ||theta_start -
  theta_target||^2, it takes

      dL/dx  = -(2 lr / D) sum_t J_t^T r,     J_t = d g_t(x; theta_t) / dx at fixed theta_t,
      dL/dlr = -(2 / D) <sum_t g_t, r>,

  i.e. the exact backward pass with every step's cotangent held at the last one's: the terms
  by which an image changes later steps through theta (the Hessian products) are dropped;
  it is exact for N = 1. Its cosine similarity to the exact gradient is measured in
  ``docs/toolbox.md``.

Several devices: under ``pmap`` with ``axis_name``, each step's minibatch is split across the
devices and the student gradient is averaged with ``lax.pmean``; see
:mod:`mct_jax.parallel` for how the meta-gradients are combined.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mct_jax import augment, train
from mct_jax import labels as label_kinds
from mct_jax.models import Model

PyTree = Any

METHODS = ('forward', 'reverse', 'tesla')


class RolloutOptions(NamedTuple):
    """How the N student steps run and are differentiated (static, hashable)."""
    num_steps: int                 # N, student SGD steps
    batch_size: int                # synthetic images per step, divisible by the devices
    use_dsa: bool = True           # DSA-augment each step's minibatch
    method: str = 'forward'        # how the meta-gradient is computed, one of METHODS
    remat: bool = False            # recompute each step in the backward pass
    residual_budget: float | None = None   # forward: bytes of stored residuals per device


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


def residual_bytes(grad_and_residuals, theta: PyTree, images, labels) -> int:
    """Bytes one student step stores for the backward pass when residuals are kept: the
    residuals of ``grad_and_residuals(theta, images, labels)`` for this minibatch and the
    student gradient. Computed from shapes only; nothing runs."""
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    grads, _, res = jax.eval_shape(grad_and_residuals, *jax.tree.map(spec, (theta, images,
                                                                            labels)))
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves((grads, res)))


def residual_plan(model: Model, theta: PyTree, images, labels, options: RolloutOptions):
    """``(store, bytes)``: whether the forward (or tesla) method stores the residuals of the
    N steps, and how many bytes they take on this device for this minibatch shape. From
    shapes only; nothing runs."""
    if model.stored_hvp is None or options.method == 'reverse':
        return False, 0
    need = options.num_steps * residual_bytes(model.stored_hvp[0], theta, images, labels)
    budget = options.residual_budget
    return not options.remat and (budget is None or need <= budget), need


def matching_loss(theta_n: PyTree, theta_start: PyTree, theta_target: PyTree):
    """Normalised parameter matching loss (docs/method.md section 4, step 3)."""
    num = sum(jnp.sum(jnp.square(a - b)) for a, b in
              zip(jax.tree.leaves(theta_n), jax.tree.leaves(theta_target)))
    den = sum(jnp.sum(jnp.square(a - b)) for a, b in
              zip(jax.tree.leaves(theta_start), jax.tree.leaves(theta_target)))
    return num / den


def tree_vdot(a: PyTree, b: PyTree):
    """Sum over leaves of ``vdot(a_l, b_l)``."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class _Student(NamedTuple):
    """What every step of one rollout shares: the network, the options and, inside ``pmap``,
    the device axis with this device's share of a minibatch (``local`` images)."""
    model: Model
    options: RolloutOptions
    axis_name: str | None
    num_shards: int
    local: int

    def minibatch(self, images, labels, k_aug, t, step_idx):
        """This device's share of step t's (augmented) minibatch: the augmentation is drawn
        for the whole minibatch and then sliced, so it does not depend on the devices."""
        xb, yb = images[step_idx], labels[step_idx]
        if self.options.use_dsa:
            xb = augment.dsa(jax.random.fold_in(k_aug, t), xb)
        if self.num_shards > 1:
            shard = lax.axis_index(self.axis_name)
            xb = lax.dynamic_slice_in_dim(xb, shard * self.local, self.local)
            yb = lax.dynamic_slice_in_dim(yb, shard * self.local, self.local)
        return xb, yb

    def grad(self, theta, xb, yb, input_grad):
        """``(grads, grad_x, logits)`` of the student loss, averaged over the devices. The
        reverse method differentiates through this gradient itself, so it must be
        autodiff's (of ``apply``); the forward method only takes its forward-mode
        derivative and uses the model's hand-written gradient where there is one."""
        loss_grad = self.model.loss_grad
        if self.options.method == 'reverse' or loss_grad is None:
            loss_grad = train.autodiff_loss_grad(self.model.apply)
        grads, grad_x, logits = loss_grad(theta, xb, yb, input_grad)
        if self.axis_name is not None:
            grads = lax.pmean(grads, self.axis_name)
        return grads, grad_x, logits


def _sgd(theta, grads, lr):
    return jax.tree.map(lambda p, g: p - lr * g, theta, grads)


def rollout(model: Model, theta_start: PyTree, syn: dict, labels, key,
            options: RolloutOptions, axis_name: str | None = None, num_shards: int = 1):
    """N student SGD steps ``theta <- theta - lr * grad CE(theta; augmented minibatch)``.

    Args:
      model: the student network (its ``loss_grad`` and ``stored_hvp`` are used by the
        forward method when present; ``apply`` is differentiated otherwise).
      theta_start: start parameters.
      syn: ``{'images': [n, H, W, C], 'lr': []}``, the synthetic set and the learned lr
        (and ``'label_logits'`` when the labels are learned).
      labels: [n] int classes of the images, or [n, K] fixed soft labels (ignored when
        ``syn`` has ``'label_logits'``, see :func:`mct_jax.labels.targets`).
      key: PRNG key; step t augments with ``fold_in(k_aug, t)``.
      options: see :class:`RolloutOptions`.
      axis_name, num_shards: inside ``pmap``: the device axis and its size; each device
        takes its 1/num_shards of every minibatch. The augmentation is drawn for the whole
        minibatch and then sliced, so the result does not depend on the device count.
    Returns:
      theta_N.
    """
    if options.method not in METHODS:
        raise ValueError(f'Unknown meta-gradient method {options.method!r}; choose one of '
                         f'{METHODS}.')
    images, lr = syn['images'], syn['lr']
    labels = label_kinds.targets(syn, labels)
    k_idx, k_aug = jax.random.split(key)
    idx = step_indices(k_idx, images.shape[0], options.batch_size, options.num_steps)
    student = _Student(model, options, axis_name, num_shards, idx.shape[1] // num_shards)
    if options.method == 'reverse':
        return _reverse(student, theta_start, images, lr, labels, k_aug, idx)
    return _forward(student, theta_start, images, jnp.asarray(lr, images.dtype), labels,
                    k_aug, idx)


def _reverse(student: _Student, theta, images, lr, labels, k_aug, idx):
    """The rollout as a plain ``lax.scan``, for ``jax.grad`` straight through it (each step
    rematerialised with ``remat``)."""
    def step(theta, inputs):
        xb, yb = student.minibatch(images, labels, k_aug, *inputs)
        return _sgd(theta, student.grad(theta, xb, yb, False)[0], lr), None

    if student.options.remat:
        step = jax.checkpoint(step)
    theta, _ = lax.scan(step, theta, (jnp.arange(student.options.num_steps), idx))
    return theta


def _forward(student: _Student, theta_start, images, lr, labels, k_aug, idx):
    """The rollout with the custom VJP of the forward and tesla methods: the steps keep
    what the backward pass needs (:func:`_steps`), which walks them in reverse
    (:func:`_transpose`)."""
    store, _ = residual_plan(
        student.model, theta_start,
        jax.ShapeDtypeStruct((student.local,) + images.shape[1:], images.dtype),
        jax.ShapeDtypeStruct((student.local,) + labels.shape[1:], labels.dtype),
        student.options)

    # Everything the rollout depends on is an argument or made inside (nothing traced is
    # closed over), so that it composes with vmap, pmap and a jit around it.
    @jax.custom_vjp
    def run(theta, images, lr, labels, k_aug, idx):
        return _steps(student, store, theta, images, lr, labels, k_aug, idx)[0]

    def run_fwd(theta, images, lr, labels, k_aug, idx):
        theta_n, saved = _steps(student, store, theta, images, lr, labels, k_aug, idx)
        return theta_n, (saved, images, lr, labels, k_aug, idx)

    run.defvjp(run_fwd, lambda residuals, ct: _transpose(student, store, residuals, ct))
    return run(theta_start, images, lr, labels, k_aug, idx)


def _steps(student: _Student, store: bool, theta, images, lr, labels, k_aug, idx):
    """``(theta_N, saved)``: the N steps, each saving its start parameters, or with
    ``store`` its start parameters, gradient and the model's residuals for its
    Hessian-vector product."""
    def step(theta, inputs):
        xb, yb = student.minibatch(images, labels, k_aug, *inputs)
        if store:
            grads, _, res = student.model.stored_hvp[0](theta, xb, yb)
            if student.axis_name is not None:
                grads = lax.pmean(grads, student.axis_name)
            return _sgd(theta, grads, lr), (theta, grads, res)
        return _sgd(theta, student.grad(theta, xb, yb, False)[0], lr), theta
    return lax.scan(step, theta, (jnp.arange(student.options.num_steps), idx))


def _transpose(student: _Student, store: bool, residuals, ct):
    """The backward pass of :func:`_forward` for the cotangent ``ct`` of theta_N.

    Step t maps theta_t to theta_t - lr g_t(theta_t, x_t, y_t) with x_t the augmented batch
    drawn from the images and y_t its targets. Its transpose, for the cotangent v of
    theta_{t+1}:

        theta_t: v - lr H_tt v;   images: -lr A_t^T H_xt v;   lr: -<g_t, v>;
        soft targets: lr (J_t v) / B,

    where H_tt v and H_xt v (the Hessian of the student loss applied to v, in its theta and
    x rows) and the logits' tangent J_t v are the forward-mode derivative of the student
    gradient along v (``jax.jvp``, or the model's hand-written ``hvp`` from the step's
    stored residuals), A_t^T pulls a batch gradient back through the augmentation and the
    indexing, and g = J^T (softmax - y) / B gives the targets' row. The tesla method keeps v
    at the last step's cotangent instead of moving it (see the module docstring).
    """
    saved, images, lr, labels, k_aug, idx = residuals
    soft = labels.ndim == 2     # float targets: their cotangent is returned too
    exact = student.options.method == 'forward'

    def step(carry, inputs):
        v, ct_images, ct_lr, ct_labels = carry
        saved_t, t, step_idx = inputs
        if soft:
            (xb, yb), pull_xy = jax.vjp(
                lambda im, y: student.minibatch(im, y, k_aug, t, step_idx), images, labels)
            pull_back = lambda ct_x, ct_y: pull_xy((ct_x, ct_y))
        else:
            xb, pull_x, yb = jax.vjp(
                lambda im: student.minibatch(im, labels, k_aug, t, step_idx), images,
                has_aux=True)
            pull_back = lambda ct_x, _: pull_x(ct_x) + (None,)
        if store:
            theta, g, res = saved_t
            hv, hv_x, logits_t = student.model.stored_hvp[1](theta, res, xb, yb, v, True,
                                                             logits_tangent=True)
            if student.axis_name is not None:
                hv = lax.pmean(hv, student.axis_name)
        else:
            (g, _, _), (hv, hv_x, logits_t) = jax.jvp(
                lambda p: student.grad(p, xb, yb, True), (saved_t,), (v,))
        ct_x, ct_y = pull_back(-lr * hv_x, lr * logits_t / xb.shape[0] if soft else None)
        ct_images = ct_images + ct_x
        if soft:
            ct_labels = ct_labels + ct_y
        ct_lr = ct_lr - tree_vdot(g, v).astype(ct_lr.dtype)
        return (_sgd(v, hv, lr) if exact else v, ct_images, ct_lr, ct_labels), None

    init = (ct, jnp.zeros_like(images), jnp.zeros_like(lr),
            jnp.zeros_like(labels) if soft else None)
    steps = jnp.arange(student.options.num_steps)
    (v, ct_images, ct_lr, ct_labels), _ = lax.scan(step, init, (saved, steps, idx),
                                                   reverse=True)
    return v, ct_images, ct_lr, ct_labels, None, None


def meta_loss(syn: dict, labels, theta_start: PyTree, theta_target: PyTree, key,
              model: Model, options: RolloutOptions, axis_name: str | None = None,
              num_shards: int = 1):
    """Matching loss of a rollout from ``theta_start`` against ``theta_target``, as a function
    of the synthetic set ``syn`` for ``jax.grad`` (arguments as in :func:`rollout`)."""
    theta_n = rollout(model, theta_start, syn, labels, key, options, axis_name, num_shards)
    return matching_loss(theta_n, theta_start, theta_target)
