"""Expert trajectories: per-leaf step norms, betas, and the convexified trajectory of MCT.

Equation numbers refer to Zhong et al., "Towards Stable and Storage-efficient Dataset
Distillation: Matching Convexified Trajectory" (the MCT paper):

* eq. (8):  theta_hat_l(t) = (1 - beta_l(t)) theta_l(0) + beta_l(t) theta_l(K)      (lerp)
* eq. (9):  beta_l(t) = sum_{j<=t} d_l(j) / sum_{j<=K} d_l(j),
            d_l(j) = ||theta_l(j) - theta_l(j-1)||_2                               (betas)
* eq. (10): beta_l(c) = (1 - eta) beta_l(floor c) + eta beta_l(ceil c), eta = c - floor c
                                                                 (continuous sampling)

``l`` indexes parameter *leaves* (one tensor each), in ``jax.tree.leaves`` order.

A :class:`Trajectory` is a piecewise-linear path through a list of anchor epochs
``a_0 = 0 < a_1 < ... < a_{A-1} = K``: the MCT authors keep extra waypoint models and
normalise the betas per segment. The plain method is anchors ``[0, K]``; an MTT expert
(all K+1 snapshots) is the special case of anchors ``0, 1, ..., K``, where :func:`point`
returns the stored snapshot at every integer epoch. Distillation only calls
``point(trajectory, c)`` and does not care which kind it has.

The beta table ``betas[t, l]`` is *segment-local*: for t in (a_s, a_{s+1}] it holds
beta relative to segment s (so rows at anchor epochs hold 1, the end of their segment) and
row 0 holds 0.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class Trajectory(NamedTuple):
    """A piecewise-linear (convexified or full) expert trajectory.

    Attributes:
      epochs: [A] int32, increasing anchor epochs, ``epochs[0] == 0``, ``epochs[-1] == K``.
      anchors: parameter pytree whose leaves carry a leading anchor axis [A, ...].
      betas: [K + 1, L] float32 segment-local betas (see module docstring).
    """
    epochs: Any
    anchors: PyTree
    betas: Any

    @property
    def num_epochs(self) -> int:
        """K, the last epoch of the trajectory."""
        return int(self.betas.shape[0]) - 1


# ----------------------------------------------------------------------------- pytree math

def leaf_norms(a: PyTree, b: PyTree):
    """Per-leaf Euclidean distance ``[||a_l - b_l||_2 for l]`` -> [L] (the d_l of eq. 9).

    >>> leaf_norms({'w': jnp.ones(4)}, {'w': jnp.zeros(4)})
    Array([2.], dtype=float32)
    """
    return jnp.stack([jnp.sqrt(jnp.sum(jnp.square(x - y)))
                      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))])


def step_norms(snapshots) -> np.ndarray:
    """[K, L] float32 table of ``d_l(t) = ||theta_l(t) - theta_l(t - 1)||`` (eq. 9) from a
    trajectory's K + 1 snapshots, computed in float64 NumPy (how imported trajectories get
    their step norms; a trained expert adds :func:`leaf_norms` epoch by epoch)."""
    leaves = [[np.asarray(a, np.float64) for a in jax.tree.leaves(s)] for s in snapshots]
    return np.array([[np.sqrt(np.sum(np.square(a - b))) for a, b in zip(now, before)]
                     for before, now in zip(leaves[:-1], leaves[1:])], np.float32)


def smoothing_sources(anchor: int, num_epochs: int) -> tuple[int, int] | None:
    """The MCT authors' anchor smoothing: the two epochs whose mean replaces ``anchor`` --
    (a - 1, a + 1) for an interior anchor, (K - 1, K) for the last -- or None for epoch 0,
    which stays as it is."""
    if anchor == num_epochs:
        return num_epochs - 1, num_epochs
    return (anchor - 1, anchor + 1) if anchor > 0 else None


def tree_mean(a: PyTree, b: PyTree) -> PyTree:
    """``(a + b) / 2`` leaf by leaf, as NumPy arrays (a smoothed anchor)."""
    return jax.tree.map(lambda x, y: (np.asarray(x) + np.asarray(y)) / 2, a, b)


def lerp(theta0: PyTree, theta1: PyTree, beta) -> PyTree:
    """Per-leaf linear interpolation, eq. (8): ``(1 - beta_l) theta0_l + beta_l theta1_l``.

    Args:
      theta0, theta1: parameter pytrees of the same structure.
      beta: [L] one coefficient per leaf (``jax.tree.leaves`` order), or a scalar.
    """
    leaves0, treedef = jax.tree.flatten(theta0)
    leaves1 = jax.tree.leaves(theta1)
    beta = jnp.broadcast_to(jnp.asarray(beta), (len(leaves0),))
    out = [(1 - b.astype(x.dtype)) * x + b.astype(x.dtype) * y
           for x, y, b in zip(leaves0, leaves1, beta)]
    return jax.tree.unflatten(treedef, out)


def check_anchor_epochs(anchor_epochs: Sequence[int], num_epochs: int) -> tuple[int, ...]:
    """Validates an anchor list: integers, strictly increasing, from 0 to K inclusive."""
    epochs = tuple(int(a) for a in anchor_epochs)
    if len(epochs) < 2 or epochs[0] != 0 or epochs[-1] != num_epochs:
        raise ValueError(f'Anchors {list(epochs)} must start at 0 and end at the last epoch '
                         f'K={num_epochs}, e.g. --anchors=0,{num_epochs}.')
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f'Anchors {list(epochs)} must be strictly increasing, e.g. '
                         f'--anchors=0,{num_epochs // 2},{num_epochs}.')
    return epochs


def betas_from_step_norms(step_norms, anchor_epochs: Sequence[int]):
    """Segment-local betas, eq. (9) applied to each segment between anchors.

    Args:
      step_norms: [K, L] with ``step_norms[t - 1, l] = d_l(t)``.
      anchor_epochs: increasing epochs from 0 to K.
    Returns:
      [K + 1, L] float32. For t in (a_s, a_{s+1}]:
      ``(D_l(t) - D_l(a_s)) / (D_l(a_{s+1}) - D_l(a_s))`` with D the cumulative step length;
      a zero segment length (a frozen leaf) uses denominator 1, as the MCT authors do.
    """
    d = np.asarray(step_norms, np.float64)
    k = d.shape[0]
    epochs = check_anchor_epochs(anchor_epochs, k)
    cum = np.concatenate([np.zeros((1, d.shape[1])), np.cumsum(d, axis=0)])  # D(t), [K+1, L]
    betas = np.zeros_like(cum)
    for a, b in zip(epochs, epochs[1:]):
        total = cum[b] - cum[a]
        total = np.where(total > 0, total, 1.0)
        betas[a + 1:b + 1] = (cum[a + 1:b + 1] - cum[a]) / total
    return betas.astype(np.float32)


def uniform_betas(num_leaves: int, anchor_epochs: Sequence[int]):
    """Ablation: beta(t) = (t - a_s) / (a_{s+1} - a_s) for every leaf (t/K with 2 anchors)."""
    k = anchor_epochs[-1]
    return betas_from_step_norms(np.ones((k, num_leaves)), anchor_epochs)


def projected_betas(snapshots: Sequence[PyTree], anchor_epochs: Sequence[int]):
    """Ablation: one global beta per epoch shared by all leaves, the projection
    <theta(t) - theta(a), theta(b) - theta(a)> / ||theta(b) - theta(a)||^2 per segment [a, b].

    Needs the full trajectory (``snapshots[t]`` for t = 0..K). Returns [K + 1, L].
    """
    k = len(snapshots) - 1
    epochs = check_anchor_epochs(anchor_epochs, k)
    flat = [np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(s)])
            for s in snapshots]
    num_leaves = len(jax.tree.leaves(snapshots[0]))
    betas = np.zeros((k + 1, num_leaves))
    for a, b in zip(epochs, epochs[1:]):
        u = flat[b] - flat[a]
        denom = max(float(u @ u), 1e-30)
        for t in range(a + 1, b + 1):
            betas[t] = (flat[t] - flat[a]) @ u / denom
    return betas.astype(np.float32)


# ----------------------------------------------------------------------------- trajectories

def _stack(trees: Sequence[PyTree]) -> PyTree:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def convexified(anchor_params: Sequence[PyTree], anchor_epochs: Sequence[int],
                betas) -> Trajectory:
    """The MCT trajectory through ``anchor_params`` (one pytree per anchor epoch).

    ``betas`` is the [K + 1, L] table of :func:`betas_from_step_norms` (or an ablation).
    """
    epochs = check_anchor_epochs(anchor_epochs, np.shape(betas)[0] - 1)
    if len(anchor_params) != len(epochs):
        raise ValueError(f'{len(anchor_params)} anchor models for {len(epochs)} anchor epochs.')
    return Trajectory(np.asarray(epochs, np.int32), _stack(anchor_params),
                      np.asarray(betas, np.float32))


def full(snapshots: Sequence[PyTree]) -> Trajectory:
    """An MTT trajectory: every epoch's snapshot is an anchor, so ``point(t)`` at integer t
    is exactly ``snapshots[t]`` (and real c interpolates linearly between neighbours)."""
    k = len(snapshots) - 1
    num_leaves = len(jax.tree.leaves(snapshots[0]))
    betas = np.ones((k + 1, num_leaves), np.float32)
    betas[0] = 0
    return Trajectory(np.arange(k + 1, dtype=np.int32), _stack(snapshots), betas)


def point(traj: Trajectory, c) -> PyTree:
    """The trajectory's parameters at a real epoch ``c`` in [0, K] (eqs. 8 and 10).

    Finds the segment [a_s, a_{s+1}] holding c, interpolates the segment-local betas
    linearly between floor(c) and ceil(c) (eq. 10; at floor(c) == a_s the beta is 0, the
    start of the segment), then lerps the segment's two anchor models per leaf (eq. 8).
    Works with traced ``c`` under ``jit``; c is clipped to [0, K].
    """
    k = traj.betas.shape[0] - 1
    epochs = jnp.asarray(traj.epochs)
    betas = jnp.asarray(traj.betas)
    c = jnp.clip(jnp.asarray(c, jnp.float32), 0.0, k)
    num_anchors = epochs.shape[0]
    s = jnp.clip(jnp.searchsorted(epochs, c, side='left') - 1, 0, num_anchors - 2)
    lo = jnp.floor(c).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, k)
    eta = c - lo
    b_lo = jnp.where(lo == epochs[s], 0.0, betas[lo])
    b_hi = betas[hi]
    beta = (1 - eta) * b_lo + eta * b_hi
    start = jax.tree.map(lambda a: a[s], traj.anchors)
    end = jax.tree.map(lambda a: a[s + 1], traj.anchors)
    return lerp(start, end, beta)


def storage_bytes(traj: Trajectory) -> int:
    """Bytes held by a trajectory's arrays (anchors + betas + epochs)."""
    return sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(traj))
