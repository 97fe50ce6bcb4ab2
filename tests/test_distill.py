"""Student rollout, meta-gradient, devices and the distillation loop."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_close, scaled_trajectory
from mct_jax import augment, data, distill, models, monitor, parallel, rollout, train
from mct_jax.rollout import RolloutOptions


def autodiff(m):
    """The model with its hand-written derivatives removed: the student gradient is then
    jax.grad of its apply."""
    return m._replace(loss_grad=None, stored_hvp=None)


def syn_of(images, lr):
    return {'images': images, 'lr': lr}


def _setup(dtype=jnp.float32, n=8, classes=4, shape=(8, 8, 1), width=4):
    m = models.convnet(shape, classes, width, 2)
    start = jax.tree.map(lambda a: a.astype(dtype), m.init(jax.random.key(0)))
    target = jax.tree.map(lambda a, b: (a + 0.3 * b.astype(dtype)), start,
                          m.init(jax.random.key(1)))
    images = jax.random.normal(jax.random.key(2), (n,) + shape, dtype)
    labels = jnp.arange(n) % classes
    return m, start, target, images, labels


SLOW = pytest.mark.slow


@pytest.mark.parametrize('use_dsa,batch', [pytest.param(False, 8, marks=SLOW), (True, 8),
                                           pytest.param(True, 4, marks=SLOW)])
def test_rollout_matches_python_loop(use_dsa, batch):
    m, start, _, images, labels = _setup()
    key = jax.random.key(5)
    got = rollout.rollout(autodiff(m), start, syn_of(images, 0.1), labels, key,
                          RolloutOptions(5, batch, use_dsa))
    # plain loop: same minibatch indices and per-step augmentation keys
    k_idx, k_aug = jax.random.split(key)
    idx = rollout.step_indices(k_idx, 8, batch, 5)
    theta = start

    @jax.jit      # one step as one program, not an eager dispatch per operation
    def step(theta, t):
        xb, yb = images[idx[t]], labels[idx[t]]
        if use_dsa:
            xb = augment.dsa(jax.random.fold_in(k_aug, t), xb)
        g = jax.grad(lambda p: train.cross_entropy(m.apply(p, xb), yb))(theta)
        return jax.tree.map(lambda p, g: p - 0.1 * g, theta, g)
    for t in range(5):
        theta = step(theta, t)
    assert_trees_close(got, theta, rtol=1e-5, atol=1e-6)


def test_step_indices_cover_every_image_per_permutation():
    idx = np.asarray(rollout.step_indices(jax.random.key(0), 10, 4, 5))
    assert idx.shape == (5, 4)
    flat = idx.reshape(-1)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


@pytest.mark.parametrize('method,hand', [pytest.param('forward', True, marks=SLOW),
                                         ('forward', 'stored'),
                                         pytest.param('reverse', False, marks=SLOW)])
def test_meta_gradient_matches_finite_differences_float64(method, hand):
    with jax.enable_x64(True):
        m, start, target, images, labels = _setup(jnp.float64)
        key = jax.random.key(3)

        student = (m if hand == 'stored' else m._replace(stored_hvp=None) if hand
                   else autodiff(m))

        @jax.jit
        def loss(im, lr):
            return rollout.meta_loss(syn_of(im, lr), labels, start, target, key, student,
                                     RolloutOptions(3, 8, True, method))

        lr = jnp.float64(0.05)
        g_img, g_lr = jax.grad(loss, argnums=(0, 1))(images, lr)
        eps = 1e-5
        fd_lr = (loss(images, lr + eps) - loss(images, lr - eps)) / (2 * eps)
        np.testing.assert_allclose(g_lr, fd_lr, rtol=1e-6)
        rng = np.random.default_rng(0)
        for _ in range(3):   # directional derivatives along random directions
            v = jnp.asarray(rng.normal(size=images.shape))
            fd = (loss(images + eps * v, lr) - loss(images - eps * v, lr)) / (2 * eps)
            np.testing.assert_allclose(jnp.vdot(g_img, v), fd, rtol=1e-6)


@SLOW
def test_remat_gives_the_same_gradient():
    m, start, target, images, labels = _setup()
    key = jax.random.key(4)
    grads = [jax.grad(rollout.meta_loss)(
        syn_of(images, 0.05), labels, start, target, key, autodiff(m),
        RolloutOptions(4, 8, True, 'reverse', remat)) for remat in (False, True)]
    assert_trees_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


@SLOW
@pytest.mark.parametrize('use_dsa,batch', [(False, 8), (True, 4)])
def test_forward_and_reverse_meta_gradients_agree_float64(use_dsa, batch):
    """The custom-VJP forward method (with autodiff's and with the hand-written student
    gradient, recomputing or storing each step's residuals) against jax.grad through the
    scan: same loss and gradients to 1e-12."""
    with jax.enable_x64(True):
        m, start, target, images, labels = _setup(jnp.float64, shape=(8, 8, 3), width=6)
        outs = [jax.value_and_grad(rollout.meta_loss)(
            syn_of(images, jnp.float64(0.05)), labels, start, target, jax.random.key(6),
            student, RolloutOptions(3, batch, use_dsa, method))
            for method, student in (('reverse', autodiff(m)), ('forward', autodiff(m)),
                                    ('forward', m._replace(stored_hvp=None)), ('forward', m))]
        for loss, grads in outs[1:]:
            np.testing.assert_allclose(loss, outs[0][0], rtol=1e-13)
            np.testing.assert_allclose(grads['images'], outs[0][1]['images'], rtol=1e-10,
                                       atol=1e-12 * float(jnp.max(jnp.abs(grads['images']))))
            np.testing.assert_allclose(grads['lr'], outs[0][1]['lr'], rtol=1e-10)


@SLOW
def test_residual_budget_chooses_between_storing_and_recomputing():
    """The forward method stores residuals exactly when the N steps' fit the budget (and
    not with remat); both ways give the same meta-gradient."""
    m, start, target, images, labels = _setup()
    traced = []
    grad_and_residuals, hvp = m.stored_hvp
    spy = (grad_and_residuals, lambda *a, **k: (traced.append(1), hvp(*a, **k))[1])
    need = 3 * rollout.residual_bytes(grad_and_residuals, start, images[:4], labels[:4])
    assert need > 0
    results = {}
    for budget, remat, stores in [(None, False, True), (need, False, True),
                                  (need - 1, False, False), (None, True, False)]:
        traced.clear()
        results[budget, remat] = jax.grad(rollout.meta_loss)(
            syn_of(images, 0.05), labels, start, target, jax.random.key(4),
            m._replace(stored_hvp=spy),
            RolloutOptions(3, 4, True, 'forward', remat, residual_budget=budget))
        assert bool(traced) == stores, (budget, remat)
    for other in list(results.values())[1:]:
        assert_trees_close(other, results[None, False], rtol=1e-4, atol=1e-7)


def test_unknown_meta_gradient_method():
    m, start, target, images, labels = _setup()
    with pytest.raises(ValueError, match='forward'):
        rollout.rollout(m, start, syn_of(images, 0.1), labels, jax.random.key(0),
                        RolloutOptions(2, 8, method='backward'))


@SLOW
@pytest.mark.parametrize('method,hand', [('forward', True), ('forward', 'stored'),
                                         ('reverse', False)])
def test_devices_give_the_same_update(method, hand):
    assert jax.local_device_count() >= 4, 'conftest asks for 4 fake CPU devices'
    m, start, target, images, labels = _setup()
    tx = distill.make_optimizer(100.0, 1e-3)
    outs = []
    for nd in (1, 2, 4):
        devices = jax.local_devices()[:nd]
        student = (m if hand == 'stored' else m._replace(stored_hvp=None) if hand
                   else autodiff(m))
        f = parallel.make_meta_grad(student, RolloutOptions(3, 8, True, method), devices)
        batch = lambda t: jax.tree.map(lambda a: a[None], t)
        syn = syn_of(images, jnp.float32(0.05))
        loss, grads = f(syn, labels, batch(start), batch(target), jax.random.key(9)[None])
        new, _, fault = distill.make_update(tx)(syn, tx.init(syn), grads, loss)
        assert int(fault) == 0
        outs.append((loss, new['images'], new['lr']))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs[0][1], images)  # the update did something


@SLOW
def test_trace_ahead_is_reused_by_the_call():
    """Tracing ahead (what the first iteration does on a thread during the evaluation
    before it) traces once, and the later call reuses it and gives the same result as a
    meta-gradient that was not traced ahead."""
    m, start, target, images, labels = _setup()
    batch = lambda t: jax.tree.map(lambda a: a[None], t)
    args = (syn_of(images, jnp.float32(0.05)), labels, batch(start), batch(target),
            jax.random.key(3)[None])
    student, options = m._replace(stored_hvp=None), RolloutOptions(3, 8, True)
    ahead = parallel.make_meta_grad(student, options, jax.local_devices()[:2])
    plain = parallel.make_meta_grad(student, options, jax.local_devices()[:2])
    ahead.trace_ahead(*args)
    assert ahead.trace_count() == 1
    got, want = ahead(*args), plain(*args)
    assert ahead.trace_count() == 1
    assert_trees_close(got, want, exact=True)


def test_batch_must_divide_among_devices():
    m = models.convnet((8, 8, 1), 4, 4, 2)
    with pytest.raises(ValueError, match='divisible'):
        parallel.make_meta_grad(m, RolloutOptions(2, 6), devices=jax.local_devices()[:4])


@pytest.mark.parametrize('fault,bad', [
    (1, dict(loss=jnp.nan)),
    (2, dict(g_img=jnp.inf)),
    (3, dict(g_lr=1e6)),
])
def test_faults_skip_the_update(fault, bad):
    tx = distill.make_optimizer(1.0, 1.0)
    syn = {'images': jnp.ones((2, 2)), 'lr': jnp.float32(0.01)}
    g_img = jnp.full((2, 2), bad.get('g_img', 0.1))
    g_lr = jnp.float32(bad.get('g_lr', 0.0))
    new, opt, got = distill.make_update(tx)(syn, tx.init(syn), {'images': g_img, 'lr': g_lr},
                                           jnp.float32(bad.get('loss', 1.0)))
    assert int(got) == fault
    np.testing.assert_array_equal(new['images'], syn['images'])
    assert float(new['lr']) == pytest.approx(0.01)


def test_sample_start_is_deterministic_and_in_range():
    draws = [distill.sample_start(0, it, 3, 4.0, True) for it in range(200)]
    assert draws == [distill.sample_start(0, it, 3, 4.0, True) for it in range(200)]
    cs = np.array([c for _, c in draws])
    assert cs.min() >= 0 and cs.max() <= 4 and len(set(cs)) == 200
    ints = [distill.sample_start(0, it, 3, 4.0, False)[1] for it in range(200)]
    assert set(ints) == {0.0, 1.0, 2.0, 3.0}
    assert {e for e, _ in draws} == {0, 1, 2}


@pytest.mark.parametrize('over,counts,message', [
    (dict(max_start_epoch=9, expert_epochs=2), None, 'goes beyond'),
    (dict(ipc=30), [25] * 10, 'larger than class 0'),
    (dict(batch_syn=50, ipc=2), [25] * 10, 'larger than the synthetic set'),
    (dict(method='mtt', expert_epochs=1.5), None, 'whole number'),
    (dict(lr_img=-1), None, 'lr_img'),
    (dict(ipc=3), [25] * 10, 'divide among 4 devices'),
    (dict(residual_budget_gb=-1), None, 'residual_budget_gb'),
])
def test_check_settings(over, counts, message):
    s = distill.Settings(**over)
    problems = distill.check_settings(s, 10, counts, 4 if counts else 1)
    assert any(message in p for p in problems), problems


def _tiny_run(tmp_path, trajs, ds, iterations, out='run', num_devices=1, **over):
    s = distill.Settings(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=1, lr_img=10,
                         iterations=iterations, eval_every=2, num_eval=2, eval_epochs=3, **over)
    m = models.convnet(ds.image_shape, 10, 4, 3)
    d = distill.Distiller(s, m, ds, trajs, str(tmp_path / out), {'test': True},
                          jax.local_devices()[:num_devices], monitor.Outputs(progress='none'))
    return d, d.run()


@SLOW
def test_same_seed_same_result_across_runs_and_devices(tmp_path, tiny_experts):
    """Two runs on one device are bit-identical; on 2 fake devices (the student batch split
    across them) the result agrees to float tolerance (4 iterations, evaluations included)."""
    ds, trajs = tiny_experts
    results = {}
    for out, nd in (('a', 1), ('b', 1), ('c', 2)):
        _tiny_run(tmp_path, trajs, ds, iterations=4, out=out, num_devices=nd)
        with np.load(tmp_path / out / 'synthetic.npz') as z:
            results[out] = (z['images'], float(z['lr']))
    np.testing.assert_array_equal(results['a'][0], results['b'][0])
    assert results['a'][1] == results['b'][1]
    np.testing.assert_allclose(results['c'][0], results['a'][0], rtol=1e-4, atol=1e-4)
    assert results['c'][1] == pytest.approx(results['a'][1], rel=1e-5)


@SLOW
def test_the_test_set_cannot_choose_best_npz_when_a_validation_split_exists(tmp_path,
                                                                        tiny_experts):
    """Two runs whose test labels differ (one shifted by a class, so its test accuracy
    collapses) choose the same best.npz, by validation accuracy; only the reported test
    accuracies differ."""
    _, trajs = tiny_experts
    ds = data.load_dataset('digits', train_images_per_class=10, val_images_per_class=5)
    runs = {'true': ds, 'wrong': ds._replace(y_test=(ds.y_test + 1) % 10)}
    got = {}
    for name, d in runs.items():
        _, result = _tiny_run(tmp_path, trajs, d, iterations=6, out=name)
        assert result['selected_on'] == 'validation'
        with np.load(tmp_path / name / 'best.npz') as z:
            got[name] = {k: z[k] for k in z.files}
    a, b = got['true'], got['wrong']
    assert str(a['selected_on']) == str(b['selected_on']) == 'validation'
    for k in ('iteration', 'images', 'lr', 'val_accuracy_mean', 'val_accuracy_std'):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert float(a['accuracy_mean']) != float(b['accuracy_mean'])
    lines = [json.loads(l) for l in open(tmp_path / 'wrong' / 'metrics.jsonl')]
    evals = [l for l in lines if 'eval' in l]
    assert evals and all(l['selected_on'] == 'validation' and 'val' in l for l in evals)
    best = max(evals, key=lambda l: l['val']['mean'])
    assert best['iteration'] == int(b['iteration'])


def test_without_a_validation_split_best_npz_is_chosen_on_the_test_set(tmp_path,
                                                                        tiny_experts):
    ds, trajs = tiny_experts
    _, result = _tiny_run(tmp_path, trajs, ds, iterations=1)
    assert result['selected_on'] == 'test' and 'validation' not in result
    with np.load(tmp_path / 'run' / 'best.npz') as z:
        assert str(z['selected_on']) == 'test' and 'val_accuracy_mean' not in z.files


@pytest.fixture(scope='module')
def tiny_experts():
    ds = data.load_dataset('digits', train_images_per_class=10)
    return ds, [scaled_trajectory(models.convnet(ds.image_shape, 10, 4, 3), 2)]


@SLOW
def test_no_retrace_across_iterations(tmp_path, tiny_experts):
    ds, trajs = tiny_experts
    d, _ = _tiny_run(tmp_path, trajs, ds, iterations=5)
    assert d.meta_grad.trace_count() == 1
    assert d.update._cache_size() == 1
    assert d.evaluator.network._cache_size() == 1
    assert d.point._cache_size() == 1


@SLOW
def test_resume_repeats_an_uninterrupted_run(tmp_path, tiny_experts):
    ds, trajs = tiny_experts
    _tiny_run(tmp_path, trajs, ds, iterations=6, out='straight')
    _tiny_run(tmp_path, trajs, ds, iterations=4, out='resumed')
    _tiny_run(tmp_path, trajs, ds, iterations=6, out='resumed')
    a = np.load(tmp_path / 'straight' / 'synthetic.npz')
    b = np.load(tmp_path / 'resumed' / 'synthetic.npz')
    for k in ('images', 'lr', 'iteration'):
        np.testing.assert_array_equal(a[k], b[k])
    la = (tmp_path / 'straight' / 'metrics.jsonl').read_text().splitlines()
    lb = (tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in __import__('json').loads(l).items() if k != 'seconds'}
                           for l in lines]
    assert strip(la) == strip(lb)


@SLOW
def test_resume_with_other_settings_is_refused(tmp_path, tiny_experts):
    ds, trajs = tiny_experts
    _tiny_run(tmp_path, trajs, ds, iterations=2, out='r')
    s = distill.Settings(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=1, lr_img=10,
                         iterations=2, eval_every=2, num_eval=2, eval_epochs=3)
    m = models.convnet(ds.image_shape, 10, 4, 3)
    d = distill.Distiller(s, m, ds, trajs, str(tmp_path / 'r'), {'test': True, 'lr_img': 5},
                          jax.local_devices()[:1])
    with pytest.raises(ValueError, match='lr_img: folder has None, this run asks for 5'):
        d.run()


@SLOW
def test_several_samples_average_their_losses():
    m, start, target, images, labels = _setup()
    options = RolloutOptions(3, 8, True)
    f = parallel.make_meta_grad(autodiff(m), options, jax.local_devices()[:2])
    other = jax.tree.map(lambda a: 1.05 * a, target)
    keys = jax.random.split(jax.random.key(1), 2)
    stack = lambda *ts: jax.tree.map(lambda *xs: jnp.stack(xs), *ts)
    syn = syn_of(images, jnp.float32(0.05))
    loss, grads = f(syn, labels, stack(start, start), stack(target, other), keys)
    singles = [jax.value_and_grad(rollout.meta_loss)(syn, labels, start, t, k, autodiff(m),
                                                     options)
               for t, k in [(target, keys[0]), (other, keys[1])]]
    np.testing.assert_allclose(loss, (singles[0][0] + singles[1][0]) / 2, rtol=1e-5)
    np.testing.assert_allclose(grads['images'],
                               (singles[0][1]['images'] + singles[1][1]['images']) / 2,
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grads['lr'], (singles[0][1]['lr'] + singles[1][1]['lr']) / 2,
                               rtol=1e-4)


def test_the_residual_plan_is_stated(tmp_path, tiny_experts):
    """The run says whether it stores the forward method's residuals, and how much memory
    they take or would take."""
    ds, trajs = tiny_experts
    m = models.convnet(ds.image_shape, 10, 4, 3)
    plans = {}
    for over in (dict(), dict(residual_budget_gb=0), dict(remat=True),
                 dict(meta_grad='reverse')):
        s = distill.Settings(ipc=2, syn_steps=3, expert_epochs=1, max_start_epoch=1, **over)
        d = distill.Distiller(s, m, ds, trajs, str(tmp_path / 'r'), {}, jax.local_devices()[:1])
        plans[tuple(over)] = d.residual_plan
        # and on how many devices it runs, and each one's share of a student step's images
        assert d.device_plan == (f'1 {jax.local_devices()[0].platform.upper()} device, '
                                 f"20 of each step's 20 synthetic images on each")
    assert plans[()].startswith("storing each student step's residuals: ")
    assert plans[()].endswith('B per device (--residual_budget_gb=4)')
    assert plans[('residual_budget_gb',)].startswith('recomputing each student step: ')
    assert '> --residual_budget_gb=0' in plans[('residual_budget_gb',)]
    assert plans[('remat',)].startswith('recomputing each student step (--remat)')
    assert plans[('meta_grad',)] == ''
    two = distill.Distiller(distill.Settings(ipc=2, syn_steps=3, expert_epochs=1,
                                             max_start_epoch=1), m, ds, trajs,
                            str(tmp_path / 'r'), {}, jax.local_devices()[:2])
    platform = jax.local_devices()[0].platform.upper()
    assert two.device_plan == f"2 {platform} devices, 10 of each step's 20 synthetic images on each"
    assert two.residual_plan.endswith('B per device (--residual_budget_gb=4)')
