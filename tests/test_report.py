"""Scores against baselines (DD-Ranking's IOR, HLR, LRS), their cache, and the written report."""

import json
import math
import os

import numpy as np
import pytest

from mct_jax.evaluate import report


def test_scores_follow_dd_rankings_definitions():
    """Computed by hand from the definitions, with accuracies as fractions."""
    s = report.scores(synthetic=60.0, random=30.0, full=85.0)
    ior, hlr = 0.30, 0.25
    a = 0.5 * ior - 0.5 * hlr
    assert s['IOR'] == pytest.approx(30.0) and s['HLR'] == pytest.approx(25.0)
    assert s['LRS'] == pytest.approx(100 * (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1)))
    # the ends of the scale: as good as the full data and 100 points above random -> 1
    assert report.scores(100, 0, 100, weight=1.0)['LRS'] == pytest.approx(100)
    assert report.scores(0, 100, 100, weight=1.0)['LRS'] == pytest.approx(0)
    assert report.scores(0, 0, 100, weight=0.0)['LRS'] == pytest.approx(0)
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        report.scores(50, 20, 80, weight=1.5)


def _lrs(ior, hlr, w=0.5):
    a = w * ior - (1 - w) * hlr
    return 100 * (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def test_scores_per_run_pair_the_runs_and_average_each_score():
    """Hand-computed, two runs of a soft-label set: IOR from its own labels, HLR from its
    images with hard labels; the mean of the runs' LRS, not the LRS of the mean accuracies."""
    s = report.scores_per_run(own=[60.0, 70.0], random=[30.0, 40.0], hard=[55.0, 70.0],
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
    h = report.scores_per_run([60.0, 70.0, 99.0], [30.0, 40.0], [60.0, 70.0], [85.0, 90.0])
    assert h['runs'] == 2 and h['HLR'] == pytest.approx(22.5)
    with pytest.raises(ValueError, match='at least one run'):
        report.scores_per_run([], [1.0], [1.0], [1.0])


def test_lrs_at_the_default_weight_tops_out_below_one():
    """a = w IOR - (1 - w) HLR lies in [-1, w] (IOR in [-1, 1], HLR in [0, 1] for a set no
    better than the full data): at w = 0.5 even a perfect set scores
    (e^0.5 - e^-1) / (e - e^-1) = 54.5 %; the worst scores 0."""
    assert report.scores(100, 0, 100)['LRS'] == pytest.approx(54.49, abs=0.01)
    assert report.scores(100, 0, 100)['LRS'] == pytest.approx(_lrs(1.0, 0.0))
    assert report.scores(0, 100, 100)['LRS'] == pytest.approx(0.0, abs=1e-12)


def test_baseline_cache_round_trip_and_keys(tmp_path):
    cache = report.BaselineCache(str(tmp_path / 'cache'))
    recipe = report.Recipe(3, 300)
    key = report.baseline_key('random', {'dataset': 'cifar10'}, {'name': 'alexnet'}, recipe,
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
                           'scores': report.scores(40.0, 25.0, 60.0)},
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
