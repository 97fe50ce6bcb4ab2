"""The reproduction experiment's analysis: convergence, spread and the report."""

import importlib.util
import os

import pytest

from conftest import REPO


@pytest.fixture(scope='module')
def rep():
    path = os.path.join(REPO, 'experiments', 'reproduce_cifar10.py')
    spec = importlib.util.spec_from_file_location('reproduce_cifar10', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convergence_is_the_first_iteration_that_stays_within_two_points(rep):
    its = [0, 20, 40, 60, 80, 100]
    means = [15.0, 27.0, 29.5, 27.4, 28.0, 29.0]   # best 29.5: within 2 means >= 27.5
    s = rep.curve_summary(its, means)
    assert s['best'] == 29.5 and s['best_iteration'] == 40
    assert s['converged_at'] == 80   # 60 (27.4) dips below 27.5
    assert s['evals_after'] == 2 and s['spread_range'] == pytest.approx(1.0)
    assert s['spread_std'] == pytest.approx(0.5)
    assert rep.curve_summary([0, 10], [10.0, 10.0])['converged_at'] == 0


def test_report_states_every_claim(rep, tmp_path):
    def run(name, ipc, means):
        its = list(range(0, 20 * len(means), 20))
        return dict(name=name, method='mct', start_sampling='continuous', ipc=ipc,
                    iterations_evaluated=its, mean=means, std=[0.5] * len(means),
                    final_lr=0.01, seconds_per_iteration=0.3, faults=0, wall_seconds=60.0,
                    **rep.curve_summary(its, means))
    runs = [run('mtt', 1, [15, 25, 30, 26, 29]), run('mct', 1, [15, 28, 29, 30, 29.5]),
            run('mct_integer', 1, [15, 27, 28, 29, 28])]
    res = {'scale': 'cpu', 'command': 'python experiments/reproduce_cifar10.py',
           'machine': '2 CPU cores', 'runs': runs,
           'experts': {'num_experts': 5, 'train_seconds': 400.0, 'mct_bytes_per_expert': 2e5,
                       'mtt_bytes_per_expert': 1.5e6, 'ratio': 2e5 / 1.5e6},
           'baselines': {'1': {'mean': 16.0, 'std': 0.7}},
           'timing': [dict(syn_steps=n, remat=r, ipc=10, seconds=1.0, peak_rss_mb=900.0)
                      for n in (10, 20) for r in (False, True)]}
    md = rep.write_report(res, str(tmp_path))
    assert 'MCT converged at iteration 20, MTT at 80 (earlier)' in md
    assert 'best MCT 30.00 vs MTT 30.00 (+0.00 points' in md
    assert '13.3 % of MTT' in md and 'not tested' in md
    for f in ('reproduce_cifar10.json', 'reproduce_cifar10.md', 'accuracy.png', 'storage.png',
              'memory_time_vs_N.png'):
        assert os.path.isfile(tmp_path / f)
