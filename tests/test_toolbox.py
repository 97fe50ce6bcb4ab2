"""The toolbox around MCT: soft labels (teacher, learned), the difficulty-aligned start
window, TESLA's approximate meta-gradient and the MCT release's optimiser options."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_trees_close, scaled_trajectory
from mct_jax import data, distill, labels, models, monitor, rollout, train
from mct_jax.models import conv_net, conv_net_grad
from mct_jax.rollout import RolloutOptions

SLOW = pytest.mark.slow


def _setup(dtype=jnp.float64, n=8, classes=4, shape=(8, 8, 3), width=6):
    m = models.convnet(shape, classes, width, 2)
    start = jax.tree.map(lambda a: a.astype(dtype), m.init(jax.random.key(0)))
    target = jax.tree.map(lambda a, b: a + 0.3 * b.astype(dtype), start,
                          m.init(jax.random.key(1)))
    images = jax.random.normal(jax.random.key(2), (n,) + shape, dtype)
    logits = jax.random.normal(jax.random.key(3), (n, classes), dtype)
    return m, start, target, images, jnp.arange(n) % classes, logits


# ----------------------------------------------------------------------------- soft labels

@pytest.mark.slow
def test_soft_target_gradient_matches_autodiff_float64():
    """The hand-written gradient with [B, K] probability targets equals jax.grad of the
    soft-target cross-entropy, and one-hot targets give the hard-label gradient."""
    with jax.enable_x64(True):
        m, params, _, x, y, logits = _setup()
        probs = jax.nn.softmax(logits)
        want = jax.grad(lambda p: train.cross_entropy(m.apply(p, x), probs))(params)
        got = conv_net_grad.loss_grad(params, x, probs)[0]
        scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(want))
        assert_trees_close(got, want, rtol=1e-9, atol=1e-12 * scale)
        hard = conv_net_grad.loss_grad(params, x, y)[0]
        one_hot = conv_net_grad.loss_grad(params, x, jax.nn.one_hot(y, 4, dtype=x.dtype))[0]
        assert_trees_close(one_hot, hard, exact=True)
        # and the soft cross-entropy itself, against its definition
        ref = -np.mean(np.sum(np.asarray(probs) * np.asarray(jax.nn.log_softmax(
            m.apply(params, x))), axis=-1))
        np.testing.assert_allclose(train.cross_entropy(m.apply(params, x), probs), ref,
                                   rtol=1e-12)


@pytest.mark.parametrize('method,model', [('forward', 'stored'),
                                          pytest.param('forward', 'hand', marks=SLOW),
                                          pytest.param('reverse', 'autodiff', marks=SLOW)])
def test_learned_label_meta_gradient_matches_finite_differences_float64(method, model):
    """Meta-gradient with respect to the images, the lr and the label logits (learned soft
    labels) against central finite differences."""
    with jax.enable_x64(True):
        m, start, target, images, y, logits = _setup()
        student = {'stored': m, 'hand': m._replace(stored_hvp=None),
                   'autodiff': m._replace(loss_grad=None, stored_hvp=None)}[model]

        @jax.jit
        def loss(syn):
            return rollout.meta_loss(syn, y, start, target, jax.random.key(5), student,
                                     RolloutOptions(3, 4, True, method))
        syn = {'images': images, 'lr': jnp.float64(0.05), 'label_logits': logits}
        grads = jax.grad(loss)(syn)
        eps = 1e-5
        rng = np.random.default_rng(0)
        for name in ('images', 'label_logits', 'lr'):
            for _ in range(2 if name != 'lr' else 1):
                v = jnp.asarray(rng.normal(size=np.shape(syn[name])))
                plus = dict(syn, **{name: syn[name] + eps * v})
                minus = dict(syn, **{name: syn[name] - eps * v})
                fd = (loss(plus) - loss(minus)) / (2 * eps)
                # central differences are accurate to about 1e-10 of the loss (~1) here
                np.testing.assert_allclose(jnp.vdot(grads[name], v), fd, rtol=1e-6, atol=2e-9,
                                           err_msg=name)


@SLOW
def test_every_exact_method_gives_the_same_label_gradient_float64():
    with jax.enable_x64(True):
        m, start, target, images, y, logits = _setup()
        syn = {'images': images, 'lr': jnp.float64(0.05), 'label_logits': logits}
        outs = [jax.grad(rollout.meta_loss)(syn, y, start, target, jax.random.key(6), student,
                                            RolloutOptions(3, 4, True, method))
                for method, student in (('reverse', m._replace(loss_grad=None, stored_hvp=None)),
                                        ('forward', m._replace(stored_hvp=None)),
                                        ('forward', m))]
        for other in outs[1:]:
            assert_trees_close(other, outs[0], rtol=1e-9, atol=1e-15)


def test_teacher_labels_are_the_experts_softmax_and_fixed():
    m, params, _, x, _, _ = _setup(jnp.float32)
    probs = labels.teacher(m.apply, params, x, temperature=2.0)
    np.testing.assert_allclose(probs, jax.nn.softmax(m.apply(params, x) / 2.0), rtol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_learned_labels_start_as_the_mean_logits_of_the_correct_experts():
    m, _, _, x, _, _ = _setup(jnp.float32, n=6)
    experts = [m.init(jax.random.key(k)) for k in (10, 11, 12)]
    each = np.stack([np.asarray(m.apply(p, x)) for p in experts])      # [E, n, K]
    y = each[0].argmax(-1)            # expert 0 is right on every image by construction
    got = np.asarray(labels.learned_init(m.apply, experts, x, y))
    for i in range(len(y)):
        right = [e for e in range(3) if each[e, i].argmax() == y[i]]
        np.testing.assert_allclose(got[i], each[right, i].mean(0), rtol=1e-5, atol=1e-6)


def test_correct_subset_draws_only_correctly_classified_images():
    apply = lambda w, x: x.reshape(x.shape[0], -1)[:, :4] @ w       # a linear classifier
    w = jnp.eye(4) + 0.3 * jax.random.normal(jax.random.key(8), (4, 4))
    x = jax.random.normal(jax.random.key(7), (200, 2, 2, 1))
    y = np.arange(200) % 4
    pred = np.asarray(jnp.argmax(apply(w, x), -1))
    counts = np.bincount(y[pred == y], minlength=4)
    ipc = int(counts.min())
    assert ipc >= 5, counts
    xs, ys = labels.correct_subset(jax.random.key(1), apply, w, x, y, 4, ipc)
    np.testing.assert_array_equal(np.asarray(jnp.argmax(apply(w, xs), -1)), ys)
    np.testing.assert_array_equal(ys, np.repeat(np.arange(4), ipc))
    with pytest.raises(ValueError, match='classifies only'):
        labels.correct_subset(jax.random.key(1), apply, w, x, y, 4, int(counts.max()) + 1)


def test_evaluation_trains_with_soft_targets():
    """An SGD epoch with probability targets follows the soft cross-entropy's gradient."""
    with jax.enable_x64(True):
        m, params, _, x, _, logits = _setup()
        probs = jax.nn.softmax(logits)
        tx = optax.sgd(0.1)
        new, _, correct = train.sgd_epoch(m.apply, params, tx.init(params), tx, x, probs,
                                          jax.random.key(0), 8, False, m.loss_grad)
        g = jax.jit(jax.grad(lambda p: train.cross_entropy(m.apply(p, x), probs)))(params)
        assert_trees_close(new, jax.tree.map(lambda p, g: p - 0.1 * g, params, g),
                           rtol=1e-10, atol=1e-13)
        assert int(correct) == int(jnp.sum(jnp.argmax(m.apply(params, x), -1)
                                           == jnp.argmax(probs, -1)))


# ----------------------------------------------------------------------------- TESLA

@pytest.mark.slow
def test_tesla_equals_its_definition_float64():
    """The tesla method against a direct implementation of the MCT release's formulas:
    dL/dx = -(2 lr / D) sum_t J_t^T (theta_N - theta_T) and dL/dlr = -(2 / D) <G, theta_N -
    theta_T>, with every theta_t held fixed; and the label logits' gradient likewise."""
    with jax.enable_x64(True):
        m, start, target, images, y, logits = _setup()
        options = RolloutOptions(3, 4, True, 'tesla')
        syn = {'images': images, 'lr': jnp.float64(0.05), 'label_logits': logits}
        key = jax.random.key(5)
        loss, grads = jax.value_and_grad(rollout.meta_loss)(
            syn, y, start, target, key, m._replace(stored_hvp=None), options)
        # direct: the student's steps, then the release's surrogate
        k_idx, k_aug = jax.random.split(key)
        idx = rollout.step_indices(k_idx, 8, 4, 3)
        from mct_jax import augment
        flat = lambda t: jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)])

        def step_grad(theta, im, lg, t):
            xb = augment.dsa(jax.random.fold_in(k_aug, t), im[idx[t]])
            yb = jax.nn.softmax(lg)[idx[t]]
            return jax.grad(lambda p: train.cross_entropy(conv_net.apply(p, xb), yb))(theta)
        thetas, g_sum = [start], None
        for t in range(3):
            g = step_grad(thetas[-1], images, logits, t)
            g_sum = g if g_sum is None else jax.tree.map(jnp.add, g_sum, g)
            thetas.append(jax.tree.map(lambda p, g: p - 0.05 * g, thetas[-1], g))
        r = flat(thetas[-1]) - flat(target)
        d = jnp.sum(jnp.square(flat(start) - flat(target)))
        np.testing.assert_allclose(loss, jnp.sum(r * r) / d, rtol=1e-12)

        def surrogate(im, lg):
            return sum(-(2 * 0.05 / d) * jnp.vdot(r, flat(step_grad(thetas[t], im, lg, t)))
                       for t in range(3))
        want_img, want_lg = jax.grad(surrogate, argnums=(0, 1))(images, logits)
        np.testing.assert_allclose(grads['images'], want_img, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(grads['label_logits'], want_lg, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(grads['lr'], -(2 / d) * jnp.vdot(flat(g_sum), r),
                                   rtol=1e-10)
        # not the exact gradient (which it equals only for one step)
        exact = jax.grad(rollout.meta_loss)(syn, y, start, target, key, m,
                                            RolloutOptions(3, 4, True, 'forward'))
        assert not np.allclose(exact['images'], grads['images'], rtol=1e-3)
        one = [jax.grad(rollout.meta_loss)(syn, y, start, target, key, m,
                                           RolloutOptions(1, 4, True, method))
               for method in ('forward', 'tesla')]
        assert_trees_close(one[1], one[0], rtol=1e-10, atol=1e-15)


# ----------------------------------------------------------------------------- window

def test_window_grows_linearly_and_starts_stay_inside():
    s = distill.Settings(min_start_epoch=2, max_start_epoch=10, max_start_epoch_final=20,
                         window_iterations=100)
    assert distill.start_window(s, 0) == (2, 10)
    assert distill.start_window(s, 50) == (2, 15)
    assert distill.start_window(s, 100) == (2, 20)
    assert distill.start_window(s, 1000) == (2, 20)
    assert distill.start_window(s._replace(max_start_epoch_final=None), 500) == (2, 10)
    for continuous in (True, False):
        for it in range(0, 200, 3):
            low, high = distill.start_window(s, it)
            c = distill.sample_start(0, it, 3, high, continuous, 0, low)[1]
            if continuous:
                assert low <= c <= high
            else:     # integers in [ceil(low), floor(high)), as DATM's randint
                assert c == int(c) and low <= c < int(high)
    starts = [distill.sample_start(0, it, 3, 20.0, True, 0, 2.0)[1] for it in range(300)]
    assert min(starts) < 3 and max(starts) > 19      # the whole window is used


def test_without_a_window_the_starts_are_todays():
    """min_start 0 and no final bound draw exactly the starts of before."""
    for it in range(50):
        rng = np.random.default_rng([0, it])
        e = int(rng.integers(3))
        assert distill.sample_start(0, it, 3, 4.0, True) == (e, float(rng.uniform(0.0, 4.0)))
        rng = np.random.default_rng([0, it])
        e = int(rng.integers(3))
        assert distill.sample_start(0, it, 3, 4.0, False) == (e, float(rng.integers(4)))


# ----------------------------------------------------------------------------- options

def test_optimizer_options():
    syn = {'images': jnp.ones((2, 2)), 'lr': jnp.float32(0.01)}
    grads = {'images': jnp.full((2, 2), 0.5), 'lr': jnp.float32(2.0)}

    def step(tx, n=1):
        state, s = tx.init(syn), syn
        for _ in range(n):
            u, state = tx.update(grads, state, s)
            s = optax.apply_updates(s, u)
        return s
    plain = step(distill.make_optimizer(1.0, 1e-3))
    np.testing.assert_allclose(plain['images'], 0.5)                     # SGD, first step
    frozen = step(distill.make_optimizer(1.0, 1e-3, freeze_lr=True), 3)
    assert float(frozen['lr']) == pytest.approx(0.01)
    adam = step(distill.make_optimizer(0.1, 1e-3, image_optimizer='adam'))
    np.testing.assert_allclose(adam['images'], 1 - 0.1, rtol=1e-5)      # Adam's first step
    # step decay: lr 1, 1, 0.5, 0.5 with no momentum effect on the size of the schedule
    decayed = distill.make_optimizer(1.0, 1e-3, decay_every=2, decay_rate=0.5)
    sched = optax.exponential_decay(1.0, 2, 0.5, staircase=True)
    assert [float(sched(i)) for i in range(4)] == [1.0, 1.0, 0.5, 0.5]
    assert decayed is not None
    with_labels = distill.make_optimizer(1.0, 1e-3, lr_labels=2.0, labels_momentum=0.9)
    s = dict(syn, label_logits=jnp.zeros((2, 3)))
    u, _ = with_labels.update(dict(grads, label_logits=jnp.ones((2, 3))),
                              with_labels.init(s), s)
    np.testing.assert_allclose(u['label_logits'], -2.0)


# ----------------------------------------------------------------------------- the loop

@pytest.fixture(scope='module')
def tiny():
    ds = data.load_dataset('digits', train_images_per_class=10)
    m = models.convnet(ds.image_shape, 10, 4, 3)
    return ds, m, [scaled_trajectory(m, 4)]


def _run(tmp_path, tiny, out, iterations, **over):
    ds, m, trajs = tiny
    s = distill.Settings(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10,
                         iterations=iterations, eval_every=2, num_eval=1, eval_epochs=3,
                         **over)
    assert distill.check_settings(s, 4, None, 1) == []
    d = distill.Distiller(s, m, ds, trajs, str(tmp_path / out), {'over': str(over)},
                          jax.local_devices()[:1], monitor.Outputs('none', False, False))
    return d, d.run()


@SLOW
def test_a_resumed_run_with_learned_labels_repeats_an_uninterrupted_one(tmp_path, tiny):
    over = dict(labels='learned', image_init='real', min_start_epoch=0.5,
                max_start_epoch_final=3, window_iterations=4)
    _run(tmp_path, tiny, 'straight', 6, **over)
    _run(tmp_path, tiny, 'resumed', 4, **over)
    _run(tmp_path, tiny, 'resumed', 6, **over)
    a = np.load(tmp_path / 'straight' / 'synthetic.npz')
    b = np.load(tmp_path / 'resumed' / 'synthetic.npz')
    for k in ('images', 'lr', 'labels', 'label_logits', 'classes', 'iteration'):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a['labels'].shape == (20, 10)
    np.testing.assert_allclose(a['labels'].sum(-1), 1.0, rtol=1e-6)
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != 'seconds'}
                       for l in open(p)]
    la, lb = strip(tmp_path / 'straight' / 'metrics.jsonl'), strip(tmp_path / 'resumed' /
                                                                   'metrics.jsonl')
    assert la == lb
    windows = [l['window'] for l in la if 'window' in l]
    assert windows[0] == [0.5, 2.0] and windows[-1] == [0.5, 3.0]
    starts = [c for l in la if 'start' in l for c in l['start']]
    assert all(0.5 <= c <= 3.0 for c in starts)


@SLOW
def test_teacher_labels_and_tesla_runs_save_probabilities(tmp_path, tiny):
    _, result = _run(tmp_path, tiny, 'teacher', 2, labels='teacher', meta_grad='tesla')
    z = np.load(tmp_path / 'teacher' / 'best.npz')
    assert z['labels'].shape == (20, 10) and 'label_logits' not in z.files
    np.testing.assert_array_equal(z['classes'], np.repeat(np.arange(10), 2))
    assert np.isfinite(result['accuracy']['mean'])
