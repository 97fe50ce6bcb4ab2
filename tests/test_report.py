"""Scores against baselines (DD-Ranking's IOR, HLR, LRS), their cache, and the written report."""

import json
import math
import os

import numpy as np
import pytest

from mct_jax.evaluate import ranking, report


def test_scores_follow_dd_rankings_definitions():
    """Computed by hand from the definitions, with accuracies as fractions."""
    s = ranking.scores(synthetic=60.0, random=30.0, full=85.0)
    ior, hlr = 0.30, 0.25
    a = 0.5 * ior - 0.5 * hlr
    assert s['IOR'] == pytest.approx(30.0) and s['HLR'] == pytest.approx(25.0)
    assert s['LRS'] == pytest.approx(100 * (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1)))
    # the ends of the scale: as good as the full data and 100 points above random -> 1
    assert ranking.scores(100, 0, 100, weight=1.0)['LRS'] == pytest.approx(100)
    assert ranking.scores(0, 100, 100, weight=1.0)['LRS'] == pytest.approx(0)
    assert ranking.scores(0, 0, 100, weight=0.0)['LRS'] == pytest.approx(0)
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        ranking.scores(50, 20, 80, weight=1.5)


def _lrs(ior, hlr, w=0.5):
    a = w * ior - (1 - w) * hlr
    return 100 * (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def test_scores_per_run_pair_the_runs_and_average_each_score():
    """Hand-computed, two runs of a soft-label set: IOR from its own labels, HLR from its
    images with hard labels; the mean of the runs' LRS, not the LRS of the mean accuracies."""
    s = ranking.scores_per_run(own=[60.0, 70.0], random=[30.0, 40.0], hard=[55.0, 70.0],
                              full=[85.0, 90.0])
    # run 0: IOR 0.30, HLR 0.30; run 1: IOR 0.30, HLR 0.20
    assert s['IOR'] == pytest.approx(30.0) and s['IOR_std'] == pytest.approx(0.0)
    assert s['HLR'] == pytest.approx(25.0) and s['HLR_std'] == pytest.approx(5.0)
    want = (_lrs(0.30, 0.30) + _lrs(0.30, 0.20)) / 2
    assert s['LRS'] == pytest.approx(want)
    assert s['LRS_std'] == pytest.approx(abs(_lrs(0.30, 0.30) - _lrs(0.30, 0.20)) / 2)
    assert s['LRS'] != pytest.approx(_lrs(0.30, 0.25), abs=1e-9)
    assert s['runs'] == 2 and s['weight'] == 0.5
    # a hard-label set: its own accuracies are the hard-label ones; unequal lists are cut
    h = ranking.scores_per_run([60.0, 70.0, 99.0], [30.0, 40.0], [60.0, 70.0], [85.0, 90.0])
    assert h['runs'] == 2 and h['HLR'] == pytest.approx(22.5)
    with pytest.raises(ValueError, match='at least one run'):
        ranking.scores_per_run([], [1.0], [1.0], [1.0])


def test_lrs_at_the_default_weight_tops_out_below_one():
    """a = w IOR - (1 - w) HLR lies in [-1, w] (IOR in [-1, 1], HLR in [0, 1] for a set no
    better than the full data): at w = 0.5 even a perfect set scores
    (e^0.5 - e^-1) / (e - e^-1) = 54.5 %; the worst scores 0."""
    assert ranking.scores(100, 0, 100)['LRS'] == pytest.approx(54.49, abs=0.01)
    assert ranking.scores(100, 0, 100)['LRS'] == pytest.approx(_lrs(1.0, 0.0))
    assert ranking.scores(0, 100, 100)['LRS'] == pytest.approx(0.0, abs=1e-12)


def test_baseline_cache_round_trip_and_keys(tmp_path):
    cache = ranking.BaselineCache(str(tmp_path / 'cache'))
    recipe = report.Recipe(3, 300)
    key = ranking.baseline_key('random', {'dataset': 'cifar10'}, {'name': 'alexnet'}, recipe,
                              0.01, 10, 0)
    assert cache.get(key) is None
    cache.put(key, {'mean': 41.0, 'std': 1.0, 'all': [40.0, 41.0, 42.0]})
    assert cache.get(key)['mean'] == 41.0
    for other in (dict(key, ipc=1), dict(key, seed=1), dict(key, lr=0.02),
                  dict(key, recipe=report.Recipe(3, 100)._asdict())):
        assert cache.get(other) is None
    with open(cache.path(key), 'w') as f:   # a damaged entry is computed again
        f.write('{broken')
    assert cache.get(key) is None


def test_report_files(tmp_path):
    summary = lambda m: {'mean': m, 'std': 0.5, 'all': [m - 0.5, m + 0.5]}
    results = {'convnet': {'test': summary(40.0), 'validation': summary(41.0), 'lr': 0.01,
                           'seconds': 12.0, 'random': summary(25.0), 'full': summary(60.0),
                           'scores': ranking.scores(40.0, 25.0, 60.0)},
               'alexnet': {'test': summary(30.0), 'validation': summary(31.0), 'lr': 0.01,
                           'seconds': 30.0}}
    md = report.write_report({'title': 'T', 'selected_on': 'validation', 'results': results},
                             str(tmp_path))
    assert '| convnet | 41.00 +- 0.50 | 40.00 +- 0.50 | 0.01 | 2 | 12 | 25.00 | 60.00 | 15.00 |' in md
    assert '| alexnet | 31.00 +- 0.50 | 30.00 +- 0.50 | 0.01 | 2 | 30 | - | - | - | - | - |' in md
    assert 'selected on: validation' in md
    data = json.load(open(tmp_path / 'cross_architecture.json'))
    assert data['results']['convnet']['scores']['IOR'] == pytest.approx(15.0)
    from PIL import Image
    assert Image.open(tmp_path / 'cross_architecture.png').size[0] > 200
    assert np.isfinite(data['results']['convnet']['scores']['LRS'])
    assert os.path.isfile(tmp_path / 'cross_architecture.md')


def _tiny_problem():
    import jax
    import jax.numpy as jnp
    from mct_jax import models
    shape = (8, 8, 1)
    m = models.get('convnet', shape, 2, width=4, depth=1)
    x = jax.random.normal(jax.random.key(0), (24,) + shape)
    y = jnp.arange(24) % 2
    x = x + 0.4 * y[:, None, None, None]
    xt = jax.random.normal(jax.random.key(1), (50,) + shape)
    yt = jnp.arange(50) % 2
    return m, x, y, ((xt + 0.4 * yt[:, None, None, None], yt),)


def test_best_checkpoint_is_the_best_of_the_networks_stopped_there():
    """test_every=k: the accuracy kept is the best of the networks trained k, 2k, 3k epochs
    (trained separately, same keys, no lr drop), DD-Ranking's checkpoint choice."""
    import jax
    import jax.numpy as jnp
    from mct_jax import evaluate
    m, x, y, test = _tiny_problem()
    key, lr = jax.random.key(3), jnp.float32(0.05)
    run = lambda epochs, every: float(evaluate.make_network_trainer(
        m, epochs, batch_size=8, use_dsa=False, test_every=every, lr_step=1000)(
            key, x, y, lr, test)[0])
    separate = [run(e, 0) for e in (2, 4, 6)]
    assert run(6, 2) == pytest.approx(max(separate), abs=1e-6)
    assert run(7, 2) == pytest.approx(max(separate), abs=1e-6)   # epoch 7 is never tested
    with pytest.raises(ValueError, match='at least 10 epochs'):
        evaluate.make_network_trainer(m, 5, test_every=10)


def test_step_schedule_with_one_drop_at_half_is_the_reference_schedule():
    """lr_step = epochs / 2 (PyTorch's StepLR) drops the lr once, where the reference
    protocol does: the same network."""
    import jax
    import jax.numpy as jnp
    from mct_jax import evaluate
    m, x, y, test = _tiny_problem()
    key, lr = jax.random.key(4), jnp.float32(0.05)
    a = evaluate.make_network_trainer(m, 6, batch_size=8, use_dsa=False)(key, x, y, lr, test)
    b = evaluate.make_network_trainer(m, 6, batch_size=8, use_dsa=False, lr_step=3)(
        key, x, y, lr, test)
    c = evaluate.make_network_trainer(m, 6, batch_size=8, use_dsa=False, lr_step=1)(
        key, x, y, lr, test)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert np.isfinite(np.asarray(c)).all()


def test_lr_search_keeps_each_runs_best():
    """Hand example: run 0 is best at lr 0.01, run 1 at 0.1."""
    accs, lrs = ranking.best_over_lrs({0.001: [0.2, 0.1], 0.01: [0.5, 0.3], 0.1: [0.4, 0.6]})
    assert accs == [0.5, 0.6] and lrs == [0.01, 0.1]


def test_ddranking_protocol_makes_the_packages_choices():
    """ddranking 0.2.0: checkpoints every 10 epochs (20 with soft labels), lr search over
    its five lrs, full data at lr 0.01 x0.1 every 100 epochs without augmentation, width 128;
    the default protocol changes nothing of the recipe."""
    base = report.Recipe(5, 300)
    ours, dd = ranking.PROTOCOLS['mct_jax'], ranking.PROTOCOLS['ddranking']
    assert ours.recipe(base, soft=True) == base and ours.full_recipe(base, False, 30) == \
        base._replace(epochs=30)
    assert dd.recipe(base, soft=False).test_every == 10
    assert dd.recipe(base, soft=True).test_every == 20
    full = dd.full_recipe(base, soft=False)
    assert (full.lr_step, full.use_dsa, full.epochs, dd.full_lr) == (100, False, 300, 0.01)
    assert dd.lr_search == (0.001, 0.005, 0.01, 0.05, 0.1) and dd.convnet_width == 128
