"""Devices: the one place where the meta-gradient is spread over several devices.

One code path, also used with a single device: ``jax.pmap`` over all devices (of every
process in a ``jax.distributed`` run) with one named axis. Every device holds the synthetic
set and the (replicated) student parameters; each student step's minibatch is split across
the devices and the student gradient is averaged with ``lax.pmean`` (in
:func:`mct_jax.rollout.rollout`), so each device keeps the activations of only its share of
the minibatch.

Combining the meta-gradients: inside ``pmap`` the transpose of ``psum`` is ``psum``, so
``jax.grad`` of the (identical) per-device losses returns, on each device, the derivative of
the *sum* of all D copies of the loss with respect to that device's copy of the inputs;
summing those over devices and dividing by D gives the gradient of the single loss, i.e.
``lax.pmean`` of the per-device gradients. The custom VJP of the forward method returns the
same per-device quantities: the image cotangent on a device is the derivative through its
own share of each minibatch, as the sum of the D loss copies sees it (D copies times the
1/D weight of the share in the averaged student gradient), and the lr cotangent is one
copy's derivative, which is what the sum sees too since each copy steps with its own lr.
``tests/test_distill.py`` checks that 1, 2 and 4 devices give the same update.
"""

from __future__ import annotations

import jax
from jax import lax

from mct_jax import rollout
from mct_jax.models import Model

AXIS = 'devices'


def make_meta_grad(model: Model, options: rollout.RolloutOptions, devices=None):
    """Builds ``meta_grad(syn, labels, theta_start, theta_target, keys) -> (loss, grads)``.

    ``theta_start``, ``theta_target`` and ``keys`` carry a leading axis of S (expert, start)
    samples: the loss is the mean of the S matching losses, whose rollouts run together
    under ``vmap`` (S = 1 is the reference algorithm). ``grads`` has the structure of
    ``syn`` (:func:`mct_jax.rollout.meta_loss`).

    Returns single (not per-device) arrays on this process's first device. All arguments
    are replicated to every device. ``devices`` defaults to ``jax.devices()``: in a
    multi-process run every process calls ``meta_grad`` with the same arguments, its own
    devices take their shares of each minibatch, and the gradients are averaged across all
    processes. ``options.batch_size`` must be divisible by the number of devices;
    ``options.residual_budget`` (bytes per device) bounds the residuals all S rollouts
    store together.
    """
    devices = list(devices or jax.devices())
    local = [d for d in devices if d.process_index == jax.process_index()]
    num = len(devices)
    if options.batch_size % num:
        raise ValueError(f'--batch_syn={options.batch_size} must be divisible by the number '
                         f'of devices ({num}) so each device gets an equal share of the '
                         'minibatch.')
    traces = [0]

    def mean_loss(syn, labels, theta_start, theta_target, keys):
        # The S rollouts run side by side and share the budget.
        budget = options.residual_budget
        each = options._replace(residual_budget=None if budget is None
                                else budget / keys.shape[0])
        losses = jax.vmap(lambda a, b, k: rollout.meta_loss(
            syn, labels, a, b, k, model, each, AXIS, num))(theta_start, theta_target, keys)
        return losses.mean()

    def per_device(syn, labels, theta_start, theta_target, keys, _):
        traces[0] += 1  # runs only while tracing: counts compilations
        loss, grads = jax.value_and_grad(mean_loss)(syn, labels, theta_start, theta_target,
                                                    keys)
        return loss, lax.pmean(grads, AXIS)

    # pmap needs one mapped argument; everything else is broadcast to every device.
    mapped = jax.pmap(per_device, axis_name=AXIS, in_axes=(None,) * 5 + (0,), devices=devices)
    device_ids = jax.numpy.arange(len(local))   # pmap maps over this process's devices

    def meta_grad(syn, labels, theta_start, theta_target, keys):
        out = mapped(syn, labels, theta_start, theta_target, keys, device_ids)
        # Every device holds the same combined result; hand back device 0's copy as a plain
        # single-device array so that callers' jitted functions see one input layout (a
        # pmap-sharded input would make them recompile).
        return jax.tree.map(lambda a: jax.device_put(a[0], local[0]), out)
    meta_grad.trace_count = lambda: traces[0]  # tests check that nothing recompiles

    def trace_ahead(syn, labels, theta_start, theta_target, keys):
        """Traces and lowers for these arguments without compiling: the Python-bound part
        of a first call, which a later call reuses. Safe to run on a thread beside other
        work, and light on memory (no XLA compilation)."""
        mapped.lower(syn, labels, theta_start, theta_target, keys, device_ids)
    meta_grad.trace_ahead = trace_ahead
    return meta_grad
