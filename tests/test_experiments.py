"""The experiments' analysis: convergence, spread, paired differences over seeds, reports."""

import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import REPO


def _script(name):
    """An experiment script of experiments/, imported as a module."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, 'experiments', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def rep():
    return _script('reproduce_cifar10')


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


@pytest.fixture(scope='module')
def study():
    return _script('study_cifar10')


def _fake_run(study, arm, seed, best_test, curve=(20.0, 30.0, 31.0, 30.5)):
    its = [0, 20, 40, 60]
    return {'name': study.run_name(arm, seed), 'arm': arm, 'seed': seed, 'ipc': 10,
            'command': ['python', '-m', 'mct_jax.distill', f'--seed={seed}'],
            'iterations': its, 'test_mean': list(curve), 'test_std': [0.5] * 4,
            'val_mean': list(curve), 'val_std': [0.5] * 4, 'best_iteration': 40,
            'best_val': max(curve), 'best_test': best_test, 'best_test_std': 0.4,
            'final_test': curve[-1], 'final_lr': 0.01, 'seconds_per_iteration': 0.5,
            'faults': 0, 'wall_seconds': 100.0,
            'convergence_test': study.curve_summary(its, list(curve)), 'best_npz': 'x'}


def _scores(study):
    """A ConvNet score record as evaluate --report writes it."""
    acc = {'mean': 33.0, 'std': 0.5, 'all': [32.5, 33.0, 33.5]}
    return {'test': acc, 'scores': {'IOR': 10.0, 'HLR': 20.0, 'LRS': 45.0},
            'random': {'mean': 23.0, 'std': 1.0, 'all': [22.0, 23.0, 24.0], 'lr': 0.0101,
                       'ipc': 10, 'epochs': 100},
            'full': {'mean': 53.0, 'std': 0.5, 'all': [52.5, 53.0, 53.5], 'lr': 0.01,
                     'ipc': None, 'epochs': 30}}


def test_t_quantiles_and_the_bonferroni_note(study):
    # Student's t: closed forms for 1 and 2 degrees of freedom, and the tabled 95 % values
    for p in (0.975, 0.995, 1 - 0.05 / 22):
        assert study.t_quantile(p, 1) == pytest.approx(np.tan(np.pi * (p - 0.5)), rel=1e-6)
        a = 2 * p - 1
        assert study.t_quantile(p, 2) == pytest.approx(a * np.sqrt(2 / (1 - a * a)), rel=1e-6)
    for df, t in study.T_975.items():
        assert study.t_quantile(0.975, df) == pytest.approx(t, abs=1e-3)
    # two claims over 3 seeds: d = 2, 3, 4 excludes 0 at 95 % (half-width 2.48) but not at
    # 97.5 % each (t = 6.205, half-width 3.58); the other includes 0 anyway
    diffs = [{'claim': 'A', 'differences': [2.0, 3.0, 4.0], 'mean': 3.0,
              'low': 3 - 4.303 / np.sqrt(3), 'high': 3 + 4.303 / np.sqrt(3)},
             {'claim': 'B', 'differences': [-1.0, 0.0, 1.0], 'mean': 0.0, 'low': -2.5,
              'high': 2.5}]
    note = study.multiplicity(diffs)
    assert note.startswith('These are 2 comparisons') and 'about 0.10 of them' in note
    assert note.endswith('(each interval at 97.50 %), no longer excluding 0: A.')


def test_paired_differences_and_their_intervals(study):
    runs = {}
    for seed, (a, b) in enumerate([(40.0, 38.0), (41.0, 38.5), (40.5, 38.0)]):
        for arm, v in (('mct', a), ('mtt', b)):
            r = _fake_run(study, arm, seed, v)
            runs[r['name']] = r
    p = study.paired(runs, 'mct', 'mtt')
    d = [2.0, 2.5, 2.5]
    half = 4.303 * np.std(d, ddof=1) / np.sqrt(3)     # t quantile, 2 degrees of freedom
    assert p['mean'] == pytest.approx(np.mean(d))
    assert (p['low'], p['high']) == pytest.approx((np.mean(d) - half, np.mean(d) + half))
    assert study.verdict(p, 'MCT beats MTT').startswith('MCT beats MTT: supported, +2.33')
    flat = dict(p, low=-0.5, high=1.0)
    assert 'not supported at this scale' in study.verdict(flat, 'x')
    assert study.paired(runs, 'mct', 'mct_tesla') is None


def test_study_report_from_run_files(study, tmp_path):
    runs = {}
    for seed in (0, 1, 2):
        for arm in study.MAIN + study.IPC1:
            r = _fake_run(study, arm, seed, 30.0 + seed + (1.0 if 'mct' in arm else 0.0))
            runs[r['name']] = r
    scores = _scores(study)
    cross = {'mct': {'arm': 'mct', 'set': 'mct_s2', 'seconds': 60.0,
                     'architectures': {'convnet': {'test': {'mean': 33.0, 'std': 0.5},
                                                   'seconds': 12.0},
                                       'resnet18': {'test': {'mean': 25.0, 'std': 1.0},
                                                    'seconds': 340.0}},
                     'convnet_scores': scores},
             'mct_learned': {'arm': 'mct_learned', 'set': 'mct_learned_s0', 'seconds': 1.0,
                             'architectures': {'convnet': {'test': {'mean': 34.0, 'std': 0.0},
                                                           'seconds': 1.0},
                                               'resnet18': {'test': {'mean': 14.9, 'std': 0.0},
                                                            'seconds': 1.0}},
                             'convnet_scores': scores}}
    # a soft-label set scored again under the definitions, after its rerun
    rescored = dict(scores, scores={'IOR': 5.0, 'HLR': 21.0, 'LRS': 40.0, 'protocol': 'mct_jax'},
                    hard_labels={'mean': 32.0, 'std': 0.5, 'all': [31.5, 32.0, 32.5]})
    cross['mtt_learned'] = {
        'arm': 'mtt_learned', 'set': 'mtt_learned_s1', 'seconds': 1.0,
        'architectures': {'convnet': {'test': {'mean': 33.5, 'std': 0.0}, 'seconds': 1.0}},
        'convnet_scores': rescored, 'random_labels': 'learned (the experts at epoch 3)',
        'rescored': {'max_abs_difference': 0.0}}
    md = study.write_report({'runs': runs, 'cross': cross, 'scale_text': 'tiny',
                             'experts': {'wall_seconds': 60.0, 'num_experts': 2, 'epochs': 3,
                                         'final_test_accuracy': [30.0, 31.0]}, 'cut': '',
                             'command': 'python experiments/study_cifar10.py'},
                            str(tmp_path))
    assert '| MCT, 2 anchors | 3 | 32.00 +- 1.00 |' in md
    assert 'MCT (2 anchors) beats MTT at ipc 10: supported, +1.00' in md
    assert ('| MCT, 2 anchors (mct_s2) | 33.00 +- 0.50 | 25.00 +- 1.00 | 10.00 | 20.00 | 45.00 |'
            in md)
    assert '- MCT, 2 anchors: convnet 12 s (networks not recorded), resnet18 340 s (networks not recorded)' in md
    # a soft-label set's scores predate DD-Ranking's soft-label definitions: withheld, said why
    assert ('| MCT, learned soft labels (mct_learned_s0) | 34.00 +- 0.00 | 14.90 +- 0.00 '
            '(chance) | withheld | withheld | withheld |') in md
    assert 'Scores withheld (MCT, learned soft labels)' in md
    assert ('| MTT, learned soft labels (mtt_learned_s1) | 33.50 +- 0.00 | - | 5.00 | 21.00 '
            '| 40.00 |') in md
    assert ("MTT, learned soft labels: scored as DD-Ranking defines it for soft labels. HLR "
            "takes the set's images trained with hard labels (32.00 %, against 33.00 % with the "
            "set's own labels); IOR takes random real images labelled as the set's labels start "
            "(learned (the experts at epoch 3); 23.00 %). The set was first scored before "
            "`evaluate --report` followed these definitions, so it was distilled again from "
            "its recorded command (the same test accuracy at every evaluation as the recorded "
            "run)") in md
    # 14.9 % is within 5 points of CIFAR-10's 10 % chance: flagged and explained; 25 % is not
    assert '(chance): resnet18 on the set of MCT, learned soft labels reaches 14.90 %' in md
    assert '25.00 +- 1.00 (chance)' not in md
    # every baseline's recipe, from the score files
    assert ('random real images (ipc 10, a fresh draw per network, hard labels), 100 epochs at '
            "the set's lr (0.0101 for the first row); full data") in md
    assert '30 epochs at lr 0.01. The full-data baseline trained for fewer epochs' in md
    # how many comparisons the intervals cover (three pairs differ by a constant 1 point
    # across seeds, so their intervals have no width and survive the correction)
    assert 'These are 8 comparisons, each interval at 95 % on its own' in md
    assert ('With a Bonferroni correction (each interval at 99.38 %), still excluding 0: MCT '
            '(2 anchors) beats MTT at ipc 10; MCT beats MTT at ipc 1; With learned labels, MCT '
            'beats MTT.') in md
    assert ("**Not run yet:** the paper's Table 2; the cross-architecture evaluation of MTT"
            in md) and '`python experiments/study_cifar10.py`' in md
    for f in ('study_cifar10.md', 'study_cifar10.json', 'study_accuracy.png'):
        assert os.path.isfile(tmp_path / f)


def test_study_report_cuts_cross_networks_alike_and_lays_out_table2(study, tmp_path):
    runs = {}
    for seed in (0, 1, 2):
        for arm in study.MAIN + study.TABLE2:
            r = _fake_run(study, arm, seed, 30.0 + seed + (2.0 if 'integer' not in arm else 0))
            runs[r['name']] = r
    scores = _scores(study)
    three = [30.0, 33.0, 36.0]                            # a 3-network evaluation
    cross = {arm: {'arm': arm, 'set': f'{arm}_s0', 'seconds': 1.0, 'convnet_scores': scores,
                   'architectures': {'convnet': {'test': {'mean': np.mean(acc),
                                                          'std': np.std(acc), 'all': acc},
                                                 'seconds': 5.0}}}
             for arm, acc in (('mtt', [29.0]), ('mct', three))}
    del runs[study.run_name('mct_e5', 2)]                 # Table 2 cut short at seed 1
    md = study.write_report({'runs': runs, 'cross': cross, 'cross_nets': 1, 'scale_text': 't',
                             'seeds': [0, 1, 2],
                             'experts': {'wall_seconds': 1.0, 'num_experts': 2, 'epochs': 3,
                                         'final_test_accuracy': [30.0]}, 'cut': ''},
                            str(tmp_path))
    # every arm reports its first network only, whatever was trained
    assert '| MTT (mtt_s0) | 29.00 | 10.00 |' in md
    assert '| MCT, 2 anchors (mct_s0) | 30.00 | 10.00 |' in md
    assert '- MCT, 2 anchors: convnet 5 s (3 networks)' in md
    assert ('3 convnet networks trained on the set of MCT, 2 anchors span 30.00 to 36.00 '
            '(6.0 points)') in md
    assert md.index('| MTT (mtt_s0)') < md.index('| MCT, 2 anchors (mct_s0)')   # MAIN order
    # Table 2: continuous - integer is +2 on every seed, so the interval has no width
    assert "## The paper's Table 2: continuous against integer starts" in md
    for e in (1, 2, 10):
        assert f'| {e} | 33.00 +- 1.00 | 31.00 +- 1.00 | +2.00 (+2.00, +2.00) |' in md
    assert '| 5 | 32.50 +- 0.71 | 31.00 +- 1.00 | +2.00 (+2.00, +2.00) |' in md
    assert "the paper's Table 2 beyond seed(s) 0, 1 for some of its arms" in md
    assert study._cross_cell({'mean': 33.0, 'std': 2.45, 'all': three}, 2) == '31.50 +- 1.50'
    assert study._cross_cell({'mean': 33.0, 'std': 2.45}, 1) == '33.00 +- 2.45'


def test_study_cut_is_alike_for_every_arm_and_guards_reuse(study, tmp_path):
    full = study.SCALES['cpu']
    cut = study.cut_scale(full, 100, 25)
    for ipc in (10, 1):
        assert '--iterations=100' in cut['run'][ipc] and '--eval_every=25' in cut['run'][ipc]
        assert [f for f in cut['run'][ipc] if f.startswith('--syn_steps')] == \
            [f for f in full['run'][ipc] if f.startswith('--syn_steps')]
    assert '--iterations=200' in full['run'][10]          # the plan itself is untouched
    text = study.cut_text(full, {'cut_iterations': 100, 'cut_eval_every': 25})
    assert '100 iterations' in text and '--iterations=200' in text
    assert study.cut_text(full, {'cut_iterations': None, 'cut_eval_every': None}) == ''
    only_every = study.cut_text(full, {'cut_iterations': None, 'cut_eval_every': 25})
    assert '200 iterations per run (evaluated every 25)' in only_every
    nets = study.cut_scale(full, 100, 25, cross_nets=1)
    assert '--num_eval=1' in nets['cross'] and '--num_eval=3' in full['cross']
    assert nets['scores'] == full['scores']               # the ConvNet scores keep 3 nets
    assert "1 network(s) per architecture in the cross-architecture table instead of the " \
        "plan's `3`" in study.cut_text(full, {'cut_cross_nets': 1})
    # a finished run made under other settings is not silently reused
    out = tmp_path / 'out'
    (out / 'runs').mkdir(parents=True)
    done = _fake_run(study, 'mct', 0, 30.0)
    (out / 'runs' / 'mct_s0.json').write_text(json.dumps(done))
    with pytest.raises(SystemExit, match='different command'):
        study.stage_run(cut, str(tmp_path / 'work'), str(out), 'mct', 0)
    # a finished cross-architecture evaluation is reused with more networks than the cut
    # asks for (the first ones are the same networks), refused with fewer or other settings
    runs = {'mct_s0': _fake_run(study, 'mct', 0, 30.0)}
    (out / 'cross').mkdir()
    for flags, ok in ((full['cross'], True), (nets['cross'], True),
                      (study._set_flag(full['cross'], 'eval_epochs', 50), False)):
        (out / 'cross' / 'mct.json').write_text(json.dumps(
            {'arm': 'mct', 'set': 'mct_s0', 'architectures': {}, 'commands': [flags, []]}))
        if ok:
            assert study.stage_cross(nets, str(tmp_path / 'work'), str(out), runs)['mct']
        else:
            with pytest.raises(SystemExit, match='was evaluated with'):
                study.stage_cross(nets, str(tmp_path / 'work'), str(out), runs)
    (out / 'cross' / 'mct.json').write_text(json.dumps(
        {'arm': 'mct', 'set': 'mct_s0', 'architectures': {}, 'commands': [nets['cross'], []]}))
    with pytest.raises(SystemExit, match='was evaluated with'):   # 1 network, 3 asked for
        study.stage_cross(full, str(tmp_path / 'work'), str(out), runs)
