"""ConvNet: exact parameter counts, forward pass against a float64 NumPy loop, and the
im2col convolution against lax in value, gradient and second derivative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mct_jax import models
from mct_jax.models import conv_net, conv_net_grad


@pytest.mark.parametrize('shape,classes,depth,expected', [
    ((32, 32, 3), 10, 3, 320_010),    # CIFAR-10
    ((32, 32, 3), 100, 3, 504_420),   # CIFAR-100
    ((64, 64, 3), 200, 4, 857_160),   # Tiny ImageNet, ConvNetD4
    # MTT's ImageNet subsets, ConvNetD5: conv 3,584 + 4 x 147,584 + 5 norms x 256 +
    # dense (4 * 4 * 128) * 10 + 10
    ((128, 128, 3), 10, 5, 3_584 + 4 * 147_584 + 5 * 256 + 20_490),
    # ImageNet-1K at 64 px (TESLA), ConvNetD4: dense 2,048 * 1,000 + 1,000
    ((64, 64, 3), 1000, 4, 3_584 + 3 * 147_584 + 4 * 256 + 2_049_000),
])
def test_exact_parameter_counts(shape, classes, depth, expected):
    params = jax.eval_shape(lambda k: conv_net.init(k, shape, classes, 128, depth),
                            jax.random.key(0))
    assert models.num_params(params) == expected


def test_depth5_at_128px_and_no_norm():
    params = jax.eval_shape(lambda k: conv_net.init(k, (128, 128, 3), 10, 128, 5),
                            jax.random.key(0))
    assert params['dense']['w'].shape == (4 * 4 * 128, 10)
    p = jax.eval_shape(lambda k: conv_net.init(k, (32, 32, 3), 10, 128, 3, norm='none'),
                       jax.random.key(0))
    assert models.num_params(p) == 320_010 - 3 * 256


def test_init_distribution(key):
    p = conv_net.init(key, (32, 32, 3), 10, 64, 3)
    for name, fan_in in [('conv0', 27), ('conv1', 576), ('dense', 4 * 4 * 64)]:
        bound = 1 / np.sqrt(fan_in)
        w = np.asarray(p[name]['w'])
        assert np.abs(w).max() <= bound
        # uniform on [-b, b]: std b/sqrt(3)
        assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound
    np.testing.assert_array_equal(p['norm0']['scale'], 1)
    np.testing.assert_array_equal(p['norm0']['bias'], 0)


def _numpy_convnet(params, x):
    """Independent float64 reference: explicit loops over the 3x3 window."""
    x = np.asarray(x, np.float64)
    depth = sum(1 for k in params if k.startswith('conv'))
    for i in range(depth):
        w = np.asarray(params[f'conv{i}']['w'], np.float64)
        b = np.asarray(params[f'conv{i}']['b'], np.float64)
        n, h, wd, _ = x.shape
        xp = np.zeros((n, h + 2, wd + 2, x.shape[3]))
        xp[:, 1:-1, 1:-1] = x
        y = np.zeros((n, h, wd, w.shape[3])) + b
        for dy in range(3):
            for dx in range(3):
                y += np.einsum('nhwc,co->nhwo', xp[:, dy:dy + h, dx:dx + wd], w[dy, dx])
        if f'norm{i}' in params:
            mu = y.mean(axis=(1, 2), keepdims=True)
            var = ((y - mu) ** 2).mean(axis=(1, 2), keepdims=True)
            y = (y - mu) / np.sqrt(var + 1e-5)
            y = y * np.asarray(params[f'norm{i}']['scale']) + np.asarray(params[f'norm{i}']['bias'])
        y = np.maximum(y, 0)
        y = y[:, :h // 2 * 2, :wd // 2 * 2]
        x = 0.25 * (y[:, 0::2, 0::2] + y[:, 1::2, 0::2] + y[:, 0::2, 1::2] + y[:, 1::2, 1::2])
    x = x.reshape(x.shape[0], -1)
    return x @ np.asarray(params['dense']['w'], np.float64) + np.asarray(params['dense']['b'])


@pytest.mark.parametrize('shape,depth', [pytest.param((32, 32, 3), 3, marks=pytest.mark.slow),
                                         ((9, 11, 1), 2)])
def test_forward_matches_numpy_reference(key, shape, depth):
    k1, k2, k3 = jax.random.split(key, 3)
    params = conv_net.init(k1, shape, 7, 16, depth)
    # non-trivial affine norm parameters
    for i in range(depth):
        params[f'norm{i}']['scale'] = 1 + 0.3 * jax.random.normal(k3, (16,))
        params[f'norm{i}']['bias'] = 0.2 * jax.random.normal(jax.random.fold_in(k3, i), (16,))
    x = jax.random.normal(k2, (5,) + shape)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        out = conv_net.apply(p64, jnp.asarray(x, jnp.float64))
    np.testing.assert_allclose(out, _numpy_convnet(params, x), rtol=1e-10, atol=1e-10)
    out32 = conv_net.apply(params, x)
    np.testing.assert_allclose(out32, _numpy_convnet(params, x), rtol=1e-4, atol=1e-4)


def _lax_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_im2col_conv_matches_lax_to_second_order(key):
    """Value, gradient and a Hessian-vector-like second derivative, float64, tight."""
    with jax.enable_x64(True):
        k1, k2, k3 = jax.random.split(key, 3)
        x = jax.random.normal(k1, (2, 6, 5, 3), jnp.float64)
        w = jax.random.normal(k2, (3, 3, 3, 4), jnp.float64)
        t = jax.random.normal(k3, (2, 6, 5, 4), jnp.float64)

        def loss(conv, x, w):
            return jnp.sum(jnp.tanh(conv(x, w)) * t)

        def meta(conv, x, w):
            # One SGD step on w, then a loss: the shape of trajectory matching's objective.
            g = jax.grad(loss, argnums=2)(conv, x, w)
            return loss(conv, x * 1.5, w - 0.1 * g)

        for f in (loss, meta):
            np.testing.assert_allclose(f(conv_net.conv3x3, x, w), f(_lax_conv, x, w), rtol=1e-12)
            ga = jax.grad(f, argnums=(1, 2))(conv_net.conv3x3, x, w)
            gb = jax.grad(f, argnums=(1, 2))(_lax_conv, x, w)
            for a, b in zip(ga, gb):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_meta_gradient_through_network_matches_lax(key):
    """Second-order gradient through the whole ConvNet with the im2col conv equals the one
    with lax's convolution (float64)."""
    with jax.enable_x64(True):
        params = conv_net.init(key, (8, 8, 2), 3, 4, 2, dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (4, 8, 8, 2), jnp.float64)
        y = jnp.array([0, 1, 2, 1])

        def make_loss(conv):
            def ce(p, x):
                orig = conv_net.conv3x3
                conv_net.conv3x3 = conv
                try:
                    logits = conv_net.apply(p, x)
                finally:
                    conv_net.conv3x3 = orig
                return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

            def meta(x):
                g = jax.grad(ce)(params, x)
                p1 = jax.tree.map(lambda a, b: a - 0.5 * b, params, g)
                return ce(p1, x)
            return meta

        ga = jax.grad(make_loss(conv_net.conv3x3))(x)
        gb = jax.grad(make_loss(_lax_conv))(x)
        np.testing.assert_allclose(ga, gb, rtol=1e-9, atol=1e-12)


def test_bad_settings_raise(key):
    with pytest.raises(ValueError, match='norm'):
        conv_net.init(key, (32, 32, 3), 10, norm='batchnorm')
    with pytest.raises(ValueError, match='too small'):
        conv_net.init(key, (4, 4, 3), 10, depth=3)
    with pytest.raises(ValueError, match='activation'):
        models.convnet((32, 32, 3), 10, act='gelu')


def _float64_case(norm, pool):
    """A two-block float64 network on 9x7x2 images (pooling drops a row and a column), with
    non-trivial norm parameters, six images and five classes."""
    shape = (9, 7, 2)
    params = conv_net.init(jax.random.key(0), shape, 5, 6, 2, norm, pool, jnp.float64)
    if norm == 'instancenorm':
        params['norm0']['scale'] = 1 + 0.3 * jax.random.normal(jax.random.key(3), (6,))
        params['norm1']['bias'] = 0.2 * jax.random.normal(jax.random.key(4), (6,))
    x = jax.random.normal(jax.random.key(1), (6,) + shape, jnp.float64)
    return params, x, jnp.array([0, 1, 2, 3, 4, 1])


def _every_choice():
    """Every norm x activation x pooling. The fast tier runs a covering set that still meets
    every pair of choices (the norm follows a Latin square over pooling and activation); the
    rest run in the slow tier."""
    cases = []
    for i, pool in enumerate(models.POOLS):
        for j, act in enumerate(models.ACTIVATIONS):
            for k, norm in enumerate(models.NORMS):
                slow = () if k == (i + j) % len(models.NORMS) else (pytest.mark.slow,)
                cases.append(pytest.param(norm, act, pool, marks=slow,
                                          id=f'{pool}-{act}-{norm}'))
    return cases


@pytest.mark.parametrize('norm,act,pool', _every_choice())
def test_hand_written_gradient_matches_autodiff_float64(norm, act, pool):
    """conv_net_grad.loss_grad against jax.grad of the cross-entropy of conv_net.apply, float64,
    for every norm/activation/pooling, an odd image size (pooling drops a row and a column),
    a few-channel first layer (im2col) and a many-channel second one (native convolution)."""
    from mct_jax import train
    with jax.enable_x64(True):
        params, x, y = _float64_case(norm, pool)
        # each side jitted: one program instead of an eager dispatch per operation
        want, want_x = jax.jit(jax.grad(
            lambda p, x: train.cross_entropy(conv_net.apply(p, x, act, pool), y),
            argnums=(0, 1)))(params, x)
        got, got_x, logits = jax.jit(lambda p, x: conv_net_grad.loss_grad(
            p, x, y, act, pool, input_grad=True))(params, x)
        assert conv_net_grad.loss_grad(params, x, y, act, pool)[1] is None
        np.testing.assert_allclose(logits, conv_net.apply(params, x, act, pool), rtol=1e-12)
        scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(want))
        for path, a in jax.tree_util.tree_leaves_with_path(want):
            b = got
            for k in path:
                b = b[k.key]
            # conv biases before an instance norm have zero gradient: compare to the scale
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12 * scale, err_msg=str(path))
        np.testing.assert_allclose(got_x, want_x, rtol=1e-9, atol=1e-14)


def test_native_convolution_matches_numpy_loop():
    """conv3x3_native (lax for many channels, im2col for few) against explicit loops."""
    rng = np.random.default_rng(0)
    for c in (2, conv_net_grad.IM2COL_MAX_CHANNELS + 3):
        x = rng.normal(size=(2, 5, 6, c))
        w = rng.normal(size=(3, 3, c, 4))
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        ref = sum(np.einsum('nhwc,co->nhwo', xp[:, dy:dy + 5, dx:dx + 6], w[dy, dx])
                  for dy in range(3) for dx in range(3))
        with jax.enable_x64(True):
            np.testing.assert_allclose(conv_net_grad.conv3x3_native(jnp.asarray(x), jnp.asarray(w)),
                                       ref, rtol=1e-12, atol=1e-12)


def test_conv_bias_before_instance_norm_has_no_effect_and_zero_gradient():
    """A conv bias is a per-channel constant, which the instance norm's mean removes: shifting
    it leaves the logits unchanged (float64), and the hand-written gradient gives it exactly 0
    (without a norm the bias matters and has a gradient)."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3), jnp.float64)
        y = jnp.array([0, 1, 2, 3])
        for norm in models.NORMS:
            params = conv_net.init(jax.random.key(0), (8, 8, 3), 4, 6, 2, norm, dtype=jnp.float64)
            shifted = jax.tree.map(lambda a: a, params)
            shifted['conv1'] = dict(params['conv1'], b=params['conv1']['b'] + 3.0)
            same = np.allclose(conv_net.apply(shifted, x), conv_net.apply(params, x),
                               rtol=1e-12, atol=1e-12)
            grads = conv_net_grad.loss_grad(params, x, y)[0]
            if norm == 'instancenorm':
                assert same
                for i in range(2):
                    np.testing.assert_array_equal(grads[f'conv{i}']['b'], 0)
            else:
                assert not same
                assert float(jnp.min(jnp.abs(grads['conv1']['b']))) > 0


@pytest.mark.parametrize('norm,act,pool', _every_choice())
def test_stored_hvp_matches_forward_mode_autodiff_float64(norm, act, pool):
    """conv_net_grad.loss_hvp, from the residuals of loss_grad_and_residuals, against jax.jvp of
    the hand-written gradient (itself checked against jax.grad above), float64, for every
    norm/activation/pooling, an odd image size and both convolution forms."""
    with jax.enable_x64(True):
        params, x, y = _float64_case(norm, pool)
        v = conv_net.init(jax.random.key(7), x.shape[1:], 5, 6, 2, norm, pool, jnp.float64)
        if norm == 'instancenorm':   # a direction that moves every norm parameter
            v = jax.tree.map(lambda a: a, v)
            for i in range(2):
                v[f'norm{i}'] = {k: jax.random.normal(jax.random.key(10 + i + 2 * j), (6,))
                                 for j, k in enumerate(('scale', 'bias'))}
        (_, _), (want, want_x) = jax.jvp(
            lambda p: conv_net_grad.loss_grad(p, x, y, act, pool, input_grad=True)[:2], (params,), (v,))
        grads, logits, res = conv_net_grad.loss_grad_and_residuals(params, x, y, act, pool)
        ref_grads, _, ref_logits = conv_net_grad.loss_grad(params, x, y, act, pool)
        np.testing.assert_array_equal(logits, ref_logits)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_array_equal(a, b)
        got, got_x = conv_net_grad.loss_hvp(params, res, x, y, v, act, pool, input_grad=True)
        assert conv_net_grad.loss_hvp(params, res, x, y, v, act, pool)[1] is None
        assert jax.tree.structure(got) == jax.tree.structure(want)
        scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(want))
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-13 * scale)
        np.testing.assert_allclose(got_x, want_x, rtol=1e-10,
                                   atol=1e-13 * float(jnp.max(jnp.abs(want_x))))


@pytest.mark.parametrize('norm,pool', [('instancenorm', 'avgpool'), ('none', 'maxpool'),
                                       ('instancenorm', 'none')])
def test_stored_residuals_are_the_pooled_cotangents_and_norm_statistics(norm, pool):
    """What one student step stores for loss_hvp, counted by hand: its gradient (one float per
    parameter), per layer the cotangent of the pooled output and, with a norm, four floats
    per image and channel (mean, 1/sqrt(var + eps), two sums), and the logits and features.
    The layer inputs and conv outputs are not stored (loss_hvp recomputes them)."""
    from mct_jax import rollout
    b, width, depth, classes, side = 5, 8, 3, 10, 32
    m = models.convnet((side, side, 3), classes, width, depth, norm, 'relu', pool)
    params = m.init(jax.random.key(0))
    x, y = jnp.zeros((b, side, side, 3)), jnp.zeros((b,), jnp.int32)
    floats = models.num_params(params)
    for _ in range(depth):
        if pool != 'none':
            side //= 2
        floats += b * side * side * width                    # cotangent of the pooled output
        floats += 4 * b * width if norm == 'instancenorm' else 0
    floats += b * classes + b * side * side * width          # logits, flattened features
    assert rollout.residual_bytes(m.stored_hvp[0], params, x, y) == 4 * floats


def test_relu_as_masked_product_matches_maximum_and_its_derivative():
    z = np.array([-2.5, -1e-30, -0.0, 0.0, 1e-30, 3.0, np.inf, np.nan], np.float32)
    got = np.asarray(conv_net.relu(jnp.asarray(z)))
    np.testing.assert_array_equal(got, np.maximum(z, np.float32(0)))  # -0.0 == 0.0; NaN stays
    # -inf (only ever reached after a divergence) becomes NaN rather than 0, so it is not
    # silently hidden: the run's non-finite check reports it.
    assert np.isnan(np.asarray(conv_net.relu(jnp.float32(-np.inf))))
    # Derivative: 1 where z > 0, else 0, including at 0 (as jax.nn.relu).
    zf = jnp.asarray(z[np.isfinite(z)])
    grad = np.asarray(jax.vmap(jax.grad(conv_net.relu))(zf))
    np.testing.assert_array_equal(grad, np.asarray(jax.vmap(jax.grad(jax.nn.relu))(zf)))
    np.testing.assert_array_equal(grad, (np.asarray(zf) > 0).astype(np.float32))
