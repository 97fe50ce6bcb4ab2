"""Trajectory math against independent float64 NumPy computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mct_jax import trajectory as tj


def _line_trajectory(k=8, seed=0):
    """Each leaf moves along a straight line at varying speed: theta_l(t) = a_l + f_l(t) v_l."""
    rng = np.random.default_rng(seed)
    shapes = {'w': (3, 4), 'b': (4,), 'frozen': (2,)}
    a = {n: rng.normal(size=s) for n, s in shapes.items()}
    v = {n: rng.normal(size=s) for n, s in shapes.items()}
    v['frozen'] = np.zeros(2)  # a leaf that never moves: betas must stay finite
    f = {n: np.concatenate([[0.], np.cumsum(rng.uniform(0.1, 2.0, size=k))]) for n in shapes}
    snaps = [{n: (a[n] + f[n][t] * v[n]).astype(np.float32) for n in shapes} for t in range(k + 1)]
    return snaps, f


def _norms(snaps):
    return np.stack([np.asarray(tj.leaf_norms(snaps[t], snaps[t - 1]))
                     for t in range(1, len(snaps))])


def test_leaf_norms_against_numpy():
    snaps, _ = _line_trajectory()
    got = np.asarray(tj.leaf_norms(snaps[3], snaps[1]))
    leaves3, leaves1 = jax.tree.leaves(snaps[3]), jax.tree.leaves(snaps[1])
    want = [np.sqrt(((np.float64(x) - y) ** 2).sum()) for x, y in zip(leaves3, leaves1)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_betas_on_a_straight_line_reproduce_snapshots():
    snaps, f = _line_trajectory()
    k = len(snaps) - 1
    betas = tj.betas_from_step_norms(_norms(snaps), [0, k])
    names = sorted(f)  # jax.tree.leaves order of a dict
    assert betas.shape == (k + 1, 3)
    np.testing.assert_array_equal(betas[0], 0)
    np.testing.assert_allclose(betas[-1][[0, 2]], 1, rtol=1e-6)
    assert np.all(np.diff(betas, axis=0) >= 0)
    assert np.all(np.isfinite(betas))
    for l, n in enumerate(names):
        if n != 'frozen':
            np.testing.assert_allclose(betas[:, l], f[n] / f[n][-1], rtol=1e-5, atol=1e-6)
    traj = tj.convexified([snaps[0], snaps[-1]], [0, k], betas)
    for t in range(k + 1):
        got = tj.point(traj, t)
        for n in f:
            np.testing.assert_allclose(got[n], snaps[t][n], rtol=1e-5, atol=1e-5)


def test_continuous_point_is_eq10():
    snaps, _ = _line_trajectory()
    k = len(snaps) - 1
    betas = tj.betas_from_step_norms(_norms(snaps), [0, k])
    traj = tj.convexified([snaps[0], snaps[-1]], [0, k], betas)
    point = jax.jit(tj.point)
    for c in [0.25, 2.5, 3.9, 7.01]:
        lo, hi = int(np.floor(c)), int(np.ceil(c))
        eta = c - lo
        beta = (1 - eta) * betas[lo].astype(np.float64) + eta * betas[hi]
        got = point(traj, c)
        for l, n in enumerate(sorted(snaps[0])):
            want = (1 - beta[l]) * np.float64(snaps[0][n]) + beta[l] * snaps[-1][n]
            np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-6)


def test_piecewise_anchors_reproduced_exactly_and_per_segment_betas():
    snaps, f = _line_trajectory(k=10, seed=1)
    anchors = [0, 3, 7, 10]
    norms = _norms(snaps)
    betas = tj.betas_from_step_norms(norms, anchors)
    # per-segment normalisation against a direct float64 computation
    cum = np.concatenate([[0.], np.cumsum(norms[:, 2].astype(np.float64))])
    for a, b in zip(anchors, anchors[1:]):
        for t in range(a + 1, b + 1):
            assert betas[t, 2] == pytest.approx((cum[t] - cum[a]) / (cum[b] - cum[a]), rel=1e-5)
    traj = tj.convexified([snaps[a] for a in anchors], anchors, betas)
    for a in anchors:
        got = tj.point(traj, float(a))
        for n in f:
            np.testing.assert_array_equal(got[n], snaps[a][n])
    # a straight line with anchors still reproduces every snapshot
    for t in range(11):
        got = tj.point(traj, t)
        for n in f:
            np.testing.assert_allclose(got[n], snaps[t][n], rtol=1e-5, atol=1e-5)


def test_full_trajectory_point_returns_snapshots():
    rng = np.random.default_rng(0)
    snaps = [{'w': rng.normal(size=(3,)).astype(np.float32)} for _ in range(6)]
    traj = tj.full(snaps)
    for t in range(6):
        np.testing.assert_array_equal(tj.point(traj, t)['w'], snaps[t]['w'])
    np.testing.assert_allclose(tj.point(traj, 2.5)['w'], (snaps[2]['w'] + snaps[3]['w']) / 2,
                               rtol=1e-6)


def test_lerp_is_eq8_per_leaf():
    t0 = {'a': np.zeros(3, np.float32), 'b': np.ones(2, np.float32)}
    t1 = {'a': np.full(3, 2., np.float32), 'b': np.full(2, 3., np.float32)}
    out = tj.lerp(t0, t1, jnp.array([0.25, 0.5]))
    np.testing.assert_allclose(out['a'], 0.5)
    np.testing.assert_allclose(out['b'], 2.0)


def test_ablation_betas():
    snaps, _ = _line_trajectory(k=4)
    uni = tj.uniform_betas(3, [0, 4])
    np.testing.assert_allclose(uni[:, 0], [0, .25, .5, .75, 1])
    proj = tj.projected_betas(snaps, [0, 4])
    flat = [np.concatenate([np.ravel(np.float64(x)) for x in jax.tree.leaves(s)]) for s in snaps]
    u = flat[4] - flat[0]
    for t in range(5):
        np.testing.assert_allclose(proj[t], (flat[t] - flat[0]) @ u / (u @ u), rtol=1e-5)
    assert np.all(proj[:, 0] == proj[:, 1])


@pytest.mark.parametrize('anchors', [[0, 5, 3, 8], [1, 8], [0, 4], [0, 4, 4, 8], [0, 9]])
def test_bad_anchors(anchors):
    with pytest.raises(ValueError, match='Anchors'):
        tj.betas_from_step_norms(np.ones((8, 2)), anchors)


def test_step_norms_and_smoothing_of_a_trajectory():
    """step_norms against a float64 loop over the leaves; smoothing_sources as the MCT
    authors' rule (interior a: a - 1 and a + 1; the last: K - 1 and K; epoch 0 kept)."""
    rng = np.random.default_rng(0)
    snaps = [{'w': rng.normal(size=(3, 2)).astype(np.float32),
              'b': rng.normal(size=(4,)).astype(np.float32)} for _ in range(4)]
    want = [[math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in
                           zip(np.ravel(snaps[t][name]), np.ravel(snaps[t - 1][name]))))
             for name in ('b', 'w')] for t in range(1, 4)]   # leaves in key order
    np.testing.assert_allclose(tj.step_norms(snaps), want, rtol=1e-6)
    assert [tj.smoothing_sources(a, 3) for a in (0, 1, 2, 3)] == [
        None, (0, 2), (1, 3), (2, 3)]
    mean = tj.tree_mean(snaps[0], snaps[2])
    np.testing.assert_array_equal(mean['w'], (snaps[0]['w'] + snaps[2]['w']) / 2)
