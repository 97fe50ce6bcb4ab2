"""Tests for mct_jax.augment (DSA, docs/method.md section 5).

Outputs are compared with independent float64 NumPy loops (torch's
affine_grid + grid_sample with align_corners=True and zero padding, integer
crop, cutout), parameter draws are checked statistically through the private
sampling helpers, and gradients are checked under jit, vmap and lax.scan.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mct_jax import augment as A

B, H, W, C = 8, 32, 32, 3
N_DRAWS = 20_000
FAMILY_FNS = {name: getattr(A, name) for name in A.FAMILIES}
ALL_FNS = {**FAMILY_FNS, 'dsa': A.dsa}
# One jitted function per name so that each compiles once for the whole file.
JITTED = {name: jax.jit(fn) for name, fn in ALL_FNS.items()}


@pytest.fixture(scope='module')
def x():
    # Random normal images: asymmetric, so flips, shifts and rotations show.
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(B, H, W, C)), jnp.float32)


def _key(i):
    return jax.random.key(i)


def _assert_roughly_uniform(samples, lo, hi, bins=10, n_sd=5.0):
    """Every bin's count within n_sd binomial standard deviations of n/bins."""
    samples = np.asarray(samples, np.float64)
    counts, _ = np.histogram(samples, bins=bins, range=(lo, hi))
    assert counts.sum() == samples.size, 'samples outside [lo, hi]'
    n, q = samples.size, 1.0 / bins
    sd = math.sqrt(n * q * (1 - q))
    assert np.all(np.abs(counts - n * q) < n_sd * sd), counts


def _assert_integers_uniform(samples, lo, hi, n_sd=5.0):
    """Integer samples cover exactly lo..hi (inclusive), each value about equally."""
    samples = np.asarray(samples)
    values, counts = np.unique(samples, return_counts=True)
    np.testing.assert_array_equal(values, np.arange(lo, hi + 1))
    n, q = samples.size, 1.0 / (hi - lo + 1)
    sd = math.sqrt(n * q * (1 - q))
    assert np.all(np.abs(counts - n * q) < n_sd * sd), counts


# ---------------------------------------------------------------------------
# Independent float64 references.
# ---------------------------------------------------------------------------


def ref_grid_sample(x, theta):
    """torch F.grid_sample(x, F.affine_grid(theta), align_corners=True), zeros padding.

    x: [B, H, W, C]; theta: [B, 2, 3] mapping output (x=width, y=height)
    normalised coordinates to input ones.
    """
    x = np.asarray(x, np.float64)
    theta = np.asarray(theta, np.float64)
    nb, h, w, _ = x.shape
    out = np.zeros_like(x)
    for b in range(nb):
        for i in range(h):
            for j in range(w):
                gx, gy = theta[b] @ np.array([2 * j / (w - 1) - 1, 2 * i / (h - 1) - 1, 1.0])
                ix, iy = (gx + 1) / 2 * (w - 1), (gy + 1) / 2 * (h - 1)
                x0, y0 = math.floor(ix), math.floor(iy)
                for yy, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
                    for xx, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
                        if 0 <= yy < h and 0 <= xx < w:
                            out[b, i, j] += wy * wx * x[b, yy, xx]
    return out


def ref_crop(x, shift_y, shift_x):
    x = np.asarray(x, np.float64)
    nb, h, w, _ = x.shape
    out = np.zeros_like(x)
    for b in range(nb):
        for i in range(h):
            for j in range(w):
                si, sj = i + int(shift_y[b]), j + int(shift_x[b])
                if 0 <= si < h and 0 <= sj < w:
                    out[b, i, j] = x[b, si, sj]
    return out


def ref_cutout_mask(nb, h, w, side_h, side_w, cy, cx):
    """[B, H, W] float, 0 inside the clipped square, as in the torch indexing."""
    mask = np.ones((nb, h, w))
    for b in range(nb):
        for r in range(int(cy[b]) - side_h // 2, int(cy[b]) - side_h // 2 + side_h):
            for c in range(int(cx[b]) - side_w // 2, int(cx[b]) - side_w // 2 + side_w):
                # torch clamps the indices into the image, which equals clipping.
                mask[b, min(max(r, 0), h - 1), min(max(c, 0), w - 1)] = 0.0
    return mask


def np_rotate_theta(angles):
    """The reference rand_rotate matrix [[cos, sin(-a), 0], [sin, cos, 0]]."""
    return np.array(
        [
            [[math.cos(a), math.sin(-a), 0.0], [math.sin(a), math.cos(a), 0.0]]
            for a in np.asarray(angles, np.float64)
        ]
    )


# ---------------------------------------------------------------------------
# Determinism and key dependence.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', list(ALL_FNS))
def test_same_key_same_output(name, x):
    f = JITTED[name]
    np.testing.assert_array_equal(f(_key(3), x), f(_key(3), x))


@pytest.mark.parametrize('name', list(ALL_FNS))
def test_different_keys_different_output(name, x):
    f = JITTED[name]
    outs = [np.asarray(f(_key(i), x)) for i in range(3)]
    assert not np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[1], outs[2])


@pytest.mark.parametrize('name', list(ALL_FNS))
def test_shape_and_dtype_preserved(name, x):
    y = JITTED[name](_key(0), x)
    assert y.shape == x.shape and y.dtype == x.dtype


# ---------------------------------------------------------------------------
# Family choice in dsa.
# ---------------------------------------------------------------------------


def test_dsa_picks_families_uniformly():
    n = 6000
    keys = jax.random.split(_key(1), n)
    idx = jax.vmap(lambda k: A._choose_family(k, len(A.FAMILIES))[0])(keys)
    counts = np.bincount(np.asarray(idx), minlength=len(A.FAMILIES))
    assert counts.size == len(A.FAMILIES)
    q = 1.0 / len(A.FAMILIES)
    sd = math.sqrt(n * q * (1 - q))
    assert np.all(np.abs(counts - n * q) < 5 * sd), counts


def test_dsa_equals_chosen_family(x):
    seen = set()
    for i in range(200):
        k = _key(100 + i)
        idx, k_family = A._choose_family(k, len(A.FAMILIES))
        name = A.FAMILIES[int(idx)]
        if name in seen:
            continue
        seen.add(name)
        np.testing.assert_allclose(
            JITTED['dsa'](k, x), JITTED[name](k_family, x), rtol=1e-6, atol=1e-6, err_msg=name
        )
        if len(seen) == len(A.FAMILIES):
            break
    assert seen == set(A.FAMILIES)


def test_dsa_family_subset_and_validation(x):
    k = _key(5)
    _, k_family = A._choose_family(k, 1)
    np.testing.assert_array_equal(A.dsa(k, x, families=('flip',)), A.flip(k_family, x))
    with pytest.raises(ValueError):
        A.dsa(k, x, families=('blur',))
    with pytest.raises(ValueError):
        A.dsa(k, x, families=())


def test_dsa_jits_with_static_params(x):
    p = A.DSAParams(crop=0.25, cutout=0.25)
    f = jax.jit(A.dsa, static_argnames=('p', 'families'))
    y = f(_key(0), x, p=p, families=('crop', 'cutout'))
    idx, k_family = A._choose_family(_key(0), 2)
    expected = (A.crop, A.cutout)[int(idx)](k_family, x, p)
    np.testing.assert_allclose(y, expected, atol=1e-6)


# ---------------------------------------------------------------------------
# Per-family parameter distributions and outputs.
# ---------------------------------------------------------------------------


def test_color_draw_ranges():
    shift, sat, con = (np.asarray(a) for a in A._color_draws(_key(2), N_DRAWS))
    _assert_roughly_uniform(shift, -0.5, 0.5)
    _assert_roughly_uniform(sat, 0.0, 2.0)
    _assert_roughly_uniform(con, 0.5, 1.5)
    # Three separate draws, not one reused.
    assert abs(np.corrcoef(shift, sat)[0, 1]) < 0.05
    assert abs(np.corrcoef(sat, con)[0, 1]) < 0.05


def test_color_matches_formula(x):
    k = _key(4)
    shift, sat, con = (np.asarray(a, np.float64)[:, None, None, None] for a in A._color_draws(k, B))
    y = np.asarray(x, np.float64) + shift
    m = y.mean(axis=3, keepdims=True)
    y = (y - m) * sat + m
    m = y.mean(axis=(1, 2, 3), keepdims=True)
    y = (y - m) * con + m
    np.testing.assert_allclose(A.color(k, x), y, rtol=1e-5, atol=1e-5)


def test_crop_shift_ranges():
    assert A._crop_max_shift(H, W) == (4, 4)
    sy, sx = A._crop_shifts(_key(6), N_DRAWS, H, W)
    assert sy.dtype == jnp.int32
    _assert_integers_uniform(sy, -4, 4)
    _assert_integers_uniform(sx, -4, 4)
    assert abs(np.corrcoef(sy, sx)[0, 1]) < 0.05


def test_crop_matches_reference(x):
    k = _key(7)
    sy, sx = (np.asarray(a) for a in A._crop_shifts(k, B, H, W))
    np.testing.assert_array_equal(A.crop(k, x), ref_crop(x, sy, sx).astype(np.float32))


def test_cutout_position_ranges():
    assert A._cutout_size(H, W) == (16, 16)
    cy, cx = A._cutout_centres(_key(8), N_DRAWS, H, W)
    # Even side: centres 0..W inclusive.
    _assert_integers_uniform(cy, 0, H)
    _assert_integers_uniform(cx, 0, W)
    # Odd side (5 on 10x10): centres 0..W-1.
    assert A._cutout_size(10, 10) == (5, 5)
    cy, cx = A._cutout_centres(_key(9), N_DRAWS, 10, 10)
    _assert_integers_uniform(cy, 0, 9)
    _assert_integers_uniform(cx, 0, 9)


@pytest.mark.parametrize('hw', [(H, W), (10, 10)])
def test_cutout_zeroes_clipped_square(hw):
    h, w = hw
    n = 64
    # Strictly positive images, so every zero comes from the cutout.
    xp = jnp.asarray(1.0 + np.random.default_rng(1).random((n, h, w, 2)), jnp.float32)
    k = _key(10)
    sh, sw = A._cutout_size(h, w)
    cy, cx = (np.asarray(a) for a in A._cutout_centres(k, n, h, w))
    mask = ref_cutout_mask(n, h, w, sh, sw, cy, cx)
    y = np.asarray(A.cutout(k, xp))
    np.testing.assert_array_equal(y, np.asarray(xp) * mask[..., None])
    # The zeroed area is the side-by-side square clipped to the image.
    top, left = cy - sh // 2, cx - sw // 2
    rows = np.clip(top + sh, 0, h) - np.clip(top, 0, h)
    cols = np.clip(left + sw, 0, w) - np.clip(left, 0, w)
    np.testing.assert_array_equal((y[..., 0] == 0).sum(axis=(1, 2)), rows * cols)
    # Some squares hang over a border, some sit fully inside.
    assert np.any(rows * cols < sh * sw) and np.any(rows * cols == sh * sw)


def test_flip_rate_and_output(x):
    rate = float(np.mean(A._flip_mask(_key(11), N_DRAWS)))
    assert abs(rate - 0.5) < 5 * math.sqrt(0.25 / N_DRAWS)
    k = _key(12)
    mask = np.asarray(A._flip_mask(k, B))
    y = np.asarray(A.flip(k, x))
    xn = np.asarray(x)
    expected = np.where(mask[:, None, None, None], xn[:, :, ::-1, :], xn)
    np.testing.assert_array_equal(y, expected)


def test_scale_factor_ranges():
    sx, sy = (np.asarray(a) for a in A._scale_factors(_key(13), N_DRAWS))
    for s in (sx, sy):
        assert s.min() >= 1 / 1.2 - 1e-6 and s.max() <= 1.2 + 1e-6
        assert s.min() < 1 / 1.2 + 0.01 and s.max() > 1.2 - 0.01
        _assert_roughly_uniform(s, 1 / 1.2 - 1e-6, 1.2 + 1e-6)
    assert abs(np.corrcoef(sx, sy)[0, 1]) < 0.05


def test_scale_matches_reference(x):
    k = _key(14)
    sx, sy = (np.asarray(a, np.float64) for a in A._scale_factors(k, B))
    theta = np.zeros((B, 2, 3))
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    np.testing.assert_allclose(A.scale(k, x), ref_grid_sample(x, theta), atol=2e-5)


def test_rotate_angle_ranges():
    deg = np.degrees(np.asarray(A._rotate_angles(_key(15), N_DRAWS), np.float64))
    assert deg.min() >= -15 - 1e-4 and deg.max() <= 15 + 1e-4
    assert deg.min() < -14.9 and deg.max() > 14.9
    _assert_roughly_uniform(deg, -15 - 1e-4, 15 + 1e-4)


def test_rotate_matches_reference(x):
    k = _key(16)
    angles = A._rotate_angles(k, B)
    np.testing.assert_allclose(
        A.rotate(k, x), ref_grid_sample(x, np_rotate_theta(angles)), atol=2e-5
    )


# ---------------------------------------------------------------------------
# Sign conventions of the affine resampler, against known answers.
# ---------------------------------------------------------------------------


def test_grid_sample_general_theta_matches_reference():
    # Non-square and a general theta (shear, translation, flips of sign) so that
    # any swapped axis or sign would show.
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(3, 7, 11, 2)).astype(np.float32)
    theta = rng.uniform(-1.3, 1.3, size=(3, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(
        A._grid_sample(jnp.asarray(xs), jnp.asarray(theta)), ref_grid_sample(xs, theta), atol=2e-5
    )


def test_grid_sample_identity_translation_and_rot90(x):
    xn = np.asarray(x)
    eye = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]], np.float32), (B, 1, 1))
    np.testing.assert_allclose(A._grid_sample(x, eye), xn, atol=1e-6)
    # Moving the sampling point one pixel right (+x) shows the image shifted left.
    shift = eye.copy()
    shift[:, 0, 2] = 2.0 / (W - 1)
    y = np.asarray(A._grid_sample(x, shift))
    np.testing.assert_allclose(y[:, :, :-1], xn[:, :, 1:], atol=1e-5)
    np.testing.assert_allclose(y[:, :, -1], 0.0, atol=1e-5)
    # Half a pixel outside: torch's per-tap zero padding gives half the border.
    half = eye.copy()
    half[:, 1, 2] = -1.0 / (H - 1)
    y = np.asarray(A._grid_sample(x, half))
    np.testing.assert_allclose(y[:, 0], 0.5 * xn[:, 0], atol=1e-5)
    # The reference's +90 degree matrix turns the content anticlockwise.
    theta = np_rotate_theta(np.full(B, math.pi / 2)).astype(np.float32)
    np.testing.assert_allclose(
        A._grid_sample(x, jnp.asarray(theta)), np.rot90(xn, 1, axes=(1, 2)), atol=1e-5
    )
    np.testing.assert_allclose(A._rotate_theta(jnp.full(B, math.pi / 2)), theta, atol=1e-7)


# ---------------------------------------------------------------------------
# Differentiability and transformations.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', list(ALL_FNS))
def test_gradient_finite_nonzero_and_consistent(name, x):
    f = ALL_FNS[name]
    k = _key(17)
    rng = np.random.default_rng(3)
    cot = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    tan = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    g = jax.jit(jax.grad(lambda y: jnp.sum(f(k, y) * cot)))(x)
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    # Every family is affine in x, so f(x + v) - f(x) = J v exactly and
    # <J v, w> = <v, J^T w> checks the (partly hand-written) backward pass.
    jv = JITTED[name](k, x + tan) - JITTED[name](k, x)
    np.testing.assert_allclose(jnp.vdot(jv, cot), jnp.vdot(tan, g), rtol=1e-4)


def test_grid_sample_jacobian_matches_reference():
    # jacrev through the custom backward equals the reference's linear map.
    rng = np.random.default_rng(4)
    xs = jnp.asarray(rng.normal(size=(2, 5, 4, 1)), jnp.float32)
    theta = jnp.asarray(rng.uniform(-1.2, 1.2, size=(2, 2, 3)), jnp.float32)
    jac = np.asarray(jax.jacrev(lambda y: A._grid_sample(y, theta))(xs)).reshape(40, 40)
    basis = np.eye(40).reshape(40, 2, 5, 4, 1)
    ref = np.stack([ref_grid_sample(e, theta).reshape(-1) for e in basis], axis=1)
    np.testing.assert_allclose(jac, ref, atol=2e-5)


def test_nested_reverse_and_jvp_in_other_arguments(x):
    k = _key(20)
    # Reverse over reverse through the hand-written backward of rotate.
    inner = lambda y: jax.grad(lambda z: jnp.sum(A.rotate(k, z) ** 2))(y)
    gg = jax.jit(jax.grad(lambda y: jnp.sum(inner(y) ** 2)))(x)
    assert np.all(np.isfinite(gg)) and np.any(gg != 0)
    # Forward mode with respect to something other than the images (e.g. the
    # network parameters of a linearised model) still works.
    out, tangent = jax.jvp(lambda s: s * A.dsa(k, x), (2.0,), (1.0,))
    np.testing.assert_allclose(tangent, A.dsa(k, x), atol=1e-6)
    np.testing.assert_allclose(out, 2 * A.dsa(k, x), atol=1e-6)
    # Documented limitation: no forward mode with respect to the images.
    with pytest.raises(TypeError, match='forward-mode'):
        jax.jvp(lambda y: A.dsa(k, y), (x,), (x,))


def test_vmap_over_keys_and_batches(x):
    keys = jax.random.split(_key(18), 4)
    xs = jnp.stack([x, -x, 2 * x, x[::-1]])
    y = jax.jit(jax.vmap(A.dsa))(keys, xs)
    for i in range(4):
        np.testing.assert_allclose(y[i], JITTED['dsa'](keys[i], xs[i]), atol=1e-5)
    g = jax.jit(jax.grad(lambda z: jnp.sum(jax.vmap(A.dsa)(keys, z) ** 2)))(xs)
    assert g.shape == xs.shape
    assert np.all(np.isfinite(g)) and np.all(np.any(g != 0, axis=(1, 2, 3, 4)))


def test_inside_scan_with_gradient(x):
    keys = jax.random.split(_key(19), 6)

    def augment_all(y):
        def step(carry, k):
            z = A.dsa(k, y)
            return carry + jnp.sum(z * z), z[0, 0, 0, 0]

        # Rematerialised, as the distillation rollout will be.
        return jax.lax.scan(jax.checkpoint(step), 0.0, keys)

    (total, firsts) = jax.jit(augment_all)(x)
    loop = [JITTED['dsa'](k, x) for k in keys]
    np.testing.assert_allclose(total, sum(float(jnp.sum(z * z)) for z in loop), rtol=1e-5)
    np.testing.assert_allclose(firsts, [float(z[0, 0, 0, 0]) for z in loop], atol=1e-6)
    g = jax.jit(jax.grad(lambda y: augment_all(y)[0]))(x)
    assert np.all(np.isfinite(g)) and np.any(g != 0)
