"""A user's Flax module as a Model: its forward pass against float64 NumPy from its own
parameters, batch norm's running statistics against its update rule written in NumPy, the
evaluation protocol training it, and the meta-gradient through it as a student."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mct_jax import evaluate, models, rollout, trajectory


class MLP(nn.Module):
    hidden: int = 16
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.classes)(h)


class BNNet(nn.Module):
    classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        return nn.Dense(self.classes)(nn.relu(x))


def _np_dense(p, x):
    return x @ np.asarray(p['kernel'], np.float64) + np.asarray(p['bias'], np.float64)


def test_a_module_without_state_is_a_model_drawn_from_the_key():
    model = models.from_flax(MLP(), (4, 4, 1))
    assert model.init_stats is None and model.apply_stats is None
    params = model.init(jax.random.key(0))
    again = model.init(jax.random.key(0))
    other = model.init(jax.random.key(1))
    assert jax.tree.all(jax.tree.map(np.array_equal, params, again))
    assert not np.array_equal(params['Dense_0']['kernel'], other['Dense_0']['kernel'])
    assert models.num_params(params) == 16 * 16 + 16 + 16 * 3 + 3
    x = np.random.default_rng(0).normal(size=(5, 4, 4, 1))
    want = _np_dense(params['Dense_1'],
                     np.maximum(_np_dense(params['Dense_0'], x.reshape(5, -1)), 0))
    got = model.apply(params, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batch_norm_trains_on_batch_statistics_and_infers_on_running_ones():
    model = models.from_flax(BNNet(), (2, 2, 1))
    params, stats = model.init(jax.random.key(0)), model.init_stats()
    np.testing.assert_array_equal(stats['BatchNorm_0']['mean'], np.zeros(8))
    np.testing.assert_array_equal(stats['BatchNorm_0']['var'], np.ones(8))
    x = np.random.default_rng(1).normal(size=(6, 2, 2, 1))
    h = _np_dense(params['Dense_0'], x.reshape(6, -1))
    scale = np.asarray(params['BatchNorm_0']['scale'], np.float64)
    bias = np.asarray(params['BatchNorm_0']['bias'], np.float64)
    head = lambda z: _np_dense(params['Dense_1'], np.maximum(z * scale + bias, 0))
    # train mode: the batch's own mean and (biased) variance; running statistics move by
    # momentum 0.9 towards them (PyTorch's update with its momentum 0.1, but the unbiased
    # variance there: Flax keeps the biased one)
    logits, new = model.apply_stats(params, stats, jnp.asarray(x, jnp.float32), True)
    mean, var = h.mean(0), h.var(0)
    np.testing.assert_allclose(logits, head((h - mean) / np.sqrt(var + 1e-5)), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(new['BatchNorm_0']['mean'], 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new['BatchNorm_0']['var'], 0.9 + 0.1 * var, rtol=1e-4)
    # inference: the running statistics, which do not change
    logits, same = model.apply_stats(params, new, jnp.asarray(x, jnp.float32), False)
    running_mean = np.asarray(new['BatchNorm_0']['mean'], np.float64)
    running_var = np.asarray(new['BatchNorm_0']['var'], np.float64)
    np.testing.assert_allclose(logits, head((h - running_mean) / np.sqrt(running_var + 1e-5)),
                               rtol=1e-4, atol=1e-4)
    assert same is new


def test_the_evaluation_protocol_trains_a_flax_module():
    """Two linearly separable classes of 4x4 images: every network the protocol trains on 20
    images classifies the held-out ones, with and without batch norm."""
    rng = np.random.default_rng(0)
    def blobs(n):
        y = np.arange(n) % 2
        x = rng.normal(size=(n, 4, 4, 1)) * 0.3 + np.where(y, 1.0, -1.0)[:, None, None, None]
        return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    (x, y), test = blobs(20), blobs(200)
    for module in (MLP(classes=2), BNNet(classes=2)):
        model = models.from_flax(module, (4, 4, 1))
        run = evaluate.make_evaluator(model, num_nets=2, epochs=30, batch_size=10)
        acc = run(jax.random.key(0), x, y, jnp.float32(0.05), (test,))
        assert acc.shape == (2, 1) and float(acc.min()) >= 0.95, (type(module).__name__, acc)


def test_modules_the_model_cannot_hold_are_refused():
    class Counter(nn.Module):
        @nn.compact
        def __call__(self, x):
            calls = self.variable('counters', 'calls', lambda: jnp.zeros(()))
            calls.value += 1
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    class NoSwitch(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=True)(x.reshape(x.shape[0], -1))

    with pytest.raises(ValueError, match=r"Counter holds the variable collections \['counters'\]"):
        models.from_flax(Counter(), (2, 2, 1))
    with pytest.raises(ValueError, match="NoSwitch has batch statistics but no 'train'"):
        models.from_flax(NoSwitch(), (2, 2, 1))


def test_a_module_by_import_path(tmp_path, monkeypatch):
    (tmp_path / 'my_nets.py').write_text(
        'import flax.linen as nn\n'
        'class Head(nn.Module):\n'
        '    num_classes: int = 1\n'
        '    @nn.compact\n'
        '    def __call__(self, x):\n'
        '        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))\n'
        'head = Head(num_classes=7)\n'
        'not_a_module = 3\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    model = models.from_module_path('my_nets:Head', (2, 2, 1), 5)      # built with 5 classes
    assert model.apply(model.init(jax.random.key(0)), jnp.ones((3, 2, 2, 1))).shape == (3, 5)
    model = models.from_module_path('my_nets:head', (2, 2, 1), 5)      # an instance as it is
    assert model.apply(model.init(jax.random.key(0)), jnp.ones((3, 2, 2, 1))).shape == (3, 7)
    for path, message in (('my_nets', 'is not package.module:Name'),
                          ('no_such_package:Net', "cannot import 'no_such_package'"),
                          ('my_nets:Tail', "my_nets has no 'Tail'"),
                          ('my_nets:not_a_module', 'is a int, not a flax.linen.Module')):
        with pytest.raises(ValueError, match=message):
            models.from_module_path(path, (2, 2, 1), 5)


def test_a_flax_student_gives_the_meta_gradient_of_finite_differences():
    """The student of trajectory matching may be a Flax module: the matching loss's gradient
    with respect to the learned lr equals a central difference of the loss itself."""
    class Student(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.tanh(nn.Conv(4, (3, 3), param_dtype=jnp.float64)(x))
            return nn.Dense(3, param_dtype=jnp.float64)(x.mean(axis=(1, 2)))

    with jax.enable_x64(True):
        net = models.from_flax(Student(), (6, 6, 1))
        theta0, theta1 = net.init(jax.random.key(0)), net.init(jax.random.key(1))
        leaves = len(jax.tree.leaves(theta0))
        traj = trajectory.convexified([theta0, theta1], [0, 1], [[0.0] * leaves, [1.0] * leaves])
        start, target = trajectory.point(traj, 0.25), trajectory.point(traj, 1.0)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(9, 6, 6, 1)))
        y = jnp.arange(9) % 3
        options = rollout.RolloutOptions(num_steps=4, batch_size=9)

        @jax.jit
        def loss(lr):
            syn = {'images': x, 'lr': lr}
            return rollout.meta_loss(syn, y, start, target, jax.random.key(2), net, options)

        grad = jax.grad(loss)(jnp.float64(0.05))
        h = 1e-5
        numeric = (loss(jnp.float64(0.05 + h)) - loss(jnp.float64(0.05 - h))) / (2 * h)
        assert float(grad) == pytest.approx(float(numeric), rel=1e-5)
        assert abs(float(grad)) > 1e-6


@pytest.mark.parametrize('norm,act,pool', [('instancenorm', 'relu', 'avgpool'),
                                           ('none', 'leakyrelu', 'maxpool'),
                                           ('instancenorm', 'sigmoid', 'none')])
def test_the_flax_convnet_is_the_convnet(norm, act, pool):
    """The Flax twin of the ConvNet gives conv_net.apply's logits (float64) from the same
    parameters, in both convolution forms."""
    from mct_jax.models import conv_net
    from mct_jax.models.architectures.convnet import ConvNet
    with jax.enable_x64(True):
        params = conv_net.init(jax.random.key(0), (8, 8, 3), 5, width=6, depth=2, norm=norm,
                               pool=pool, dtype=jnp.float64)
        params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1),
                                                                      a.shape, a.dtype), params)
        x = jax.random.normal(jax.random.key(2), (4, 8, 8, 3), jnp.float64)
        want = conv_net.apply(params, x, act, pool)
        for form in ('im2col', 'lax'):
            net = ConvNet(num_classes=5, width=6, depth=2, norm=norm, act=act, pool=pool,
                          conv=form)
            np.testing.assert_allclose(net.apply({'params': params}, x), want, rtol=1e-10,
                                       atol=1e-12)


def test_the_flax_convnet_draws_as_the_convnet():
    """Its parameters are the ConvNet's pytree (320,010 at CIFAR-10 size, the count the
    reference's ConvNet has) with PyTorch's initial ranges: |w|, |b| <= 1/sqrt(fan_in), norm
    scale 1 and shift 0."""
    from mct_jax.models import conv_net
    from mct_jax.models.architectures.convnet import ConvNet
    drawn = ConvNet(num_classes=10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
    pure = conv_net.init(jax.random.key(0), (32, 32, 3), 10)
    assert models.num_params(drawn) == 320_010
    assert jax.tree.map(jnp.shape, drawn) == jax.tree.map(jnp.shape, pure)
    for name, p in drawn.items():
        if 'w' in p:
            bound = 1 / np.sqrt(np.prod(p['w'].shape[:-1]))
            for leaf in (p['w'], p['b']):
                assert float(jnp.max(jnp.abs(leaf))) <= bound
            # not a narrower range (thousands of draws reach the bound's last 10 %)
            assert float(jnp.max(jnp.abs(p['w']))) > 0.9 * bound
        else:
            np.testing.assert_array_equal(p['scale'], 1)
            np.testing.assert_array_equal(p['bias'], 0)
