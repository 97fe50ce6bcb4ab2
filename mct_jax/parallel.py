"""Devices: the one place where the meta-gradient is spread over several devices.

One code path, also used with a single device: ``jax.pmap`` over all devices (of every
process in a ``jax.distributed`` run) with one named axis. Every device holds the synthetic set and the (replicated) student parameters;
each student step's minibatch is split across the devices and the student gradient is
averaged with ``lax.pmean`` (in :func:`mct_jax.rollout.rollout`), so each device keeps the
activations of only its share of the minibatch.

Combining the meta-gradients: inside ``pmap`` the transpose of ``psum`` is ``psum``, so
``jax.grad`` of the (identical) per-device losses returns, on each device, the derivative of
the *sum* of all D copies of the loss with respect to that device's copy of the inputs;
summing those over devices and dividing by D gives the gradient of the single loss, i.e.
``lax.pmean`` of the per-device gradients. The custom VJP of the forward method returns the
same per-device quantities: the image cotangent on a device is the derivative through its
own share of each minibatch, as the sum of the D loss copies sees it (D copies times the
1/D weight of the share in the averaged student gradient), and the lr cotangent is one
copy's derivative, which is what the sum sees too since each copy steps with its own lr. ``tests/test_distill.py`` checks that 1, 2 and 4
devices give the same update.
"""

from __future__ import annotations

import functools

import jax
from jax import lax

from mct_jax import rollout

AXIS = 'devices'


def make_meta_grad(apply_fn, num_steps: int, batch_size: int, use_dsa: bool = True,
                   remat: bool = False, devices=None, loss_grad=None, method: str = 'forward',
                   stored_hvp=None, residual_budget: float | None = None):
    """Builds ``meta_grad(images, lr, labels, theta_start, theta_target, keys)``.

    ``theta_start``, ``theta_target`` and ``keys`` carry a leading axis of S (expert, start)
    samples: the loss is the mean of the S matching losses, whose rollouts run together
    under ``vmap`` (S = 1 is the reference algorithm).

    Returns ``(loss, grad_images, grad_lr)`` as single (not per-device) arrays on this
    process's first device. All arguments are replicated to every device. ``devices``
    defaults to ``jax.devices()``: in a multi-process run every process calls ``meta_grad``
    with the same arguments, its own devices take their shares of each minibatch, and the
    gradients are averaged across all processes. ``batch_size`` must be divisible by the
    number of devices. ``loss_grad``, ``method``, ``remat`` and ``stored_hvp`` choose how the
    meta-gradient is computed (:func:`mct_jax.rollout.meta_loss`). ``residual_budget``
    (bytes per device) bounds the residuals all S rollouts store together.
    """
    devices = list(devices or jax.devices())
    local = [d for d in devices if d.process_index == jax.process_index()]
    num = len(devices)
    if batch_size % num:
        raise ValueError(f'--batch_syn={batch_size} must be divisible by the number of '
                         f'devices ({num}) so each device gets an equal share of the minibatch.')
    loss_fn = functools.partial(rollout.meta_loss, apply_fn=apply_fn, num_steps=num_steps,
                                batch_size=batch_size, use_dsa=use_dsa, remat=remat,
                                axis_name=AXIS, num_shards=num, loss_grad=loss_grad,
                                method=method, stored_hvp=stored_hvp)

    traces = [0]

    def mean_loss(images, lr, labels, theta_start, theta_target, keys):
        # The S rollouts run side by side and share the budget.
        budget = None if residual_budget is None else residual_budget / keys.shape[0]
        losses = jax.vmap(lambda a, b, k: loss_fn(images, lr, labels=labels, theta_start=a,
                                                  theta_target=b, key=k,
                                                  residual_budget=budget))(
            theta_start, theta_target, keys)
        return losses.mean()

    def per_device(images, lr, labels, theta_start, theta_target, keys, _):
        traces[0] += 1  # runs only while tracing: counts compilations
        loss, (g_img, g_lr) = jax.value_and_grad(mean_loss, argnums=(0, 1))(
            images, lr, labels, theta_start, theta_target, keys)
        return loss, lax.pmean(g_img, AXIS), lax.pmean(g_lr, AXIS)

    # pmap needs one mapped argument; everything else is broadcast to every device.
    mapped = jax.pmap(per_device, axis_name=AXIS, in_axes=(None,) * 6 + (0,), devices=devices)
    device_ids = jax.numpy.arange(len(local))   # pmap maps over this process's devices

    def meta_grad(images, lr, labels, theta_start, theta_target, keys):
        out = mapped(images, lr, labels, theta_start, theta_target, keys, device_ids)
        # Every device holds the same combined result; hand back device 0's copy as a plain
        # single-device array so that callers' jitted functions see one input layout (a
        # pmap-sharded input would make them recompile).
        return tuple(jax.device_put(a[0], local[0]) for a in out)
    meta_grad.trace_count = lambda: traces[0]  # tests check that nothing recompiles

    def compile_ahead(images, lr, labels, theta_start, theta_target, keys):
        """Traces and compiles for these arguments without running; a later call with
        arguments of the same shapes and placement then starts at once. Safe to run on a
        thread while other work executes."""
        mapped.lower(images, lr, labels, theta_start, theta_target, keys, device_ids).compile()
    meta_grad.compile_ahead = compile_ahead
    return meta_grad
