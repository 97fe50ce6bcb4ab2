"""The interface every network has: :class:`Model`."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from mct_jax.models.conv_net import Params


class Model(NamedTuple):
    """An architecture with its static choices bound.

    ``init(key) -> params`` draws fresh parameters; ``apply(params, x) -> logits`` maps
    [B, H, W, C] images to [B, num_classes] logits. The optional fields are faster
    derivatives of the mean cross-entropy, used when present:

    * ``loss_grad(params, x, labels, input_grad=False) -> (grads, grad_x or None, logits)``;
    * ``stored_hvp``: ``(grad_and_residuals(params, x, labels) -> (grads, logits,
      residuals), hvp(params, residuals, x, labels, v, input_grad, logits_tangent) -> (hv,
      hv_x or None[, logits_t]))``, the gradient that also keeps what its Hessian-vector
      product needs.

    ``labels`` are [B] integer classes or [B, K] target probabilities (soft labels).

    Models with batch norm also have ``init_stats() -> stats`` (running means 0, variances
    1) and ``apply_stats(params, stats, x, train) -> (logits, stats)``.
    """
    init: Callable[..., Params]
    apply: Callable[..., Any]
    loss_grad: Callable[..., Any] | None = None
    stored_hvp: tuple[Callable[..., Any], Callable[..., Any]] | None = None
    init_stats: Callable[[], Any] | None = None
    apply_stats: Callable[..., Any] | None = None
