"""The CPU-scale study on real CIFAR-10, with seeds: MCT against MTT, and MCT with the field's
best tricks.

    python experiments/study_cifar10.py                   # the whole plan; reruns reuse runs
    python experiments/study_cifar10.py --report_only     # rebuild the report from the JSON
    python experiments/study_cifar10.py --parts=rescore   # soft-label scores as defined
    python experiments/study_cifar10.py --scale=smoke --work=/tmp/s --out=/tmp/s/results

The scale of ``experiments/cifar10_local.cfg`` (width-32 ConvNet, the first 500 training
images of each class, the last 50 of each class held out as a validation split, the full
10,000-image test set), with one set of experts for every arm:

1. experts: 10 experts of 15 epochs, full trajectories kept; the release's smoothed anchors
   (0, 5, 10, 15, the 4 of 0, 17, 34, 50 at K = 15) are derived from the same trajectories;
2. the main comparison at ipc 10 (and MTT and MCT at ipc 1), 3 seeds per arm, one budget:
   MTT; MCT with 2 anchors; MCT with the smoothed anchors; MCT with integer starts; MCT and
   MTT with learned soft labels; MCT with the authors' approximate gradient;
3. the paper's Table 2: continuous against integer starts with 1, 2 and 5 experts;
4. cross-architecture evaluation (ConvNet, AlexNet, VGG11, ResNet18) of each ipc-10 arm's
   best set, and DD-Ranking's IOR, HLR and LRS of its ConvNet;
5. ``--parts=rescore``: the soft-label arms' ConvNet scores under DD-Ranking's definitions,
   for cross files scored before ``evaluate --report`` followed them (the set distilled
   again from its recorded command when its folder is gone, and checked against the record);
6. the report: ``study_cifar10.md``, ``.json`` and plots in ``--out``, from the per-run JSON
   files in ``--out/runs`` (committed, so the report rebuilds without rerunning).

Every best set is chosen on the validation split; the test accuracy is only reported. The
runs go seed by seed across all arms, so a study cut short has the same seeds for every
arm. Each run's command and seed are in its JSON file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PRESET = os.path.join(HERE, 'cifar10_local.cfg')
sys.path[:0] = [REPO, HERE]   # this checkout's mct_jax, installed or not
from experiment_tools import cifar10_flags, curve_summary, log, run_command  # noqa: E402

from mct_jax import checkpoint, expert_store, interop, monitor  # noqa: E402

# name: (ipc, extra flags, expert folder: 'plain' or 'smoothed', label)
ARMS = {
    'mtt': (10, ['--method=mtt'], 'plain', 'MTT'),
    'mct': (10, ['--method=mct'], 'plain', 'MCT, 2 anchors'),
    'mct_smoothed': (10, ['--method=mct'], 'smoothed', "MCT, the release's smoothed anchors"),
    'mct_integer': (10, ['--method=mct', '--start_sampling=integer'], 'plain',
                    'MCT, integer starts'),
    'mct_learned': (10, ['--method=mct', '--labels=learned'], 'plain',
                    'MCT, learned soft labels'),
    'mtt_learned': (10, ['--method=mtt', '--labels=learned'], 'plain',
                    'MTT, learned soft labels'),
    'mct_tesla': (10, ['--method=mct', '--meta_grad=tesla'], 'plain',
                  "MCT, the authors' approximate gradient"),
    'mtt_ipc1': (1, ['--method=mtt'], 'plain', 'MTT, ipc 1'),
    'mct_ipc1': (1, ['--method=mct'], 'plain', 'MCT, ipc 1'),
}
for _e in (1, 2, 5):   # the paper's Table 2 (the 10-expert column is the main comparison)
    ARMS[f'mct_e{_e}'] = (10, ['--method=mct', f'--max_experts={_e}'], 'plain',
                          f'MCT, {_e} expert{"s" if _e > 1 else ""}')
    ARMS[f'mct_integer_e{_e}'] = (10, ['--method=mct', '--start_sampling=integer',
                                       f'--max_experts={_e}'], 'plain',
                                  f'MCT integer starts, {_e} expert{"s" if _e > 1 else ""}')
MAIN = ['mtt', 'mct', 'mct_smoothed', 'mct_integer', 'mct_learned', 'mtt_learned', 'mct_tesla']
IPC1 = ['mtt_ipc1', 'mct_ipc1']
TABLE2 = [f'mct{k}_e{e}' for e in (1, 2, 5) for k in ('', '_integer')]

SCALES = {
    'cpu': {'data': [], 'experts': 10, 'epochs': 15, 'smoothed': '0,5,10,15',
            'seeds': [0, 1, 2], 'ipc': {10: 10, 1: 1}, 'learned': [],
            'run': {10: ['--syn_steps=10', '--iterations=200', '--eval_every=20'],
                    1: ['--syn_steps=20', '--iterations=200', '--eval_every=20']},
            'common': ['--num_eval=3', '--eval_epochs=100', '--expert_epochs=2',
                       '--max_start_epoch=8', '--lr_img=1000', '--lr_lr=1e-07'],
            'cross': ['--models=convnet,alexnet,vgg11,resnet18', '--num_eval=3',
                      '--eval_epochs=100'],
            'scores': ['--models=convnet', '--report', '--num_eval=3', '--eval_epochs=100',
                       '--full_data_epochs=30']},
    'smoke': {'data': ['--train_images_per_class=12', '--val_images_per_class=3', '--width=8'],
              'experts': 5, 'epochs': 4, 'smoothed': '0,2,3,4', 'seeds': [0, 1],
              # ipc 2 for the 'ipc 10' arms; a 4-epoch expert is right on too few images
              # for learned labels' correctly-classified draw
              'ipc': {10: 2, 1: 1}, 'learned': ['--image_init=real'],
              'run': {10: ['--syn_steps=2', '--iterations=4', '--eval_every=2'],
                      1: ['--syn_steps=2', '--iterations=4', '--eval_every=2']},
              'common': ['--num_eval=1', '--eval_epochs=2', '--expert_epochs=1',
                         '--max_start_epoch=2', '--lr_img=100', '--lr_lr=1e-07',
                         '--batch_train=64'],
              'cross': ['--models=convnet,lenet', '--num_eval=1', '--eval_epochs=2'],
              'scores': ['--models=convnet', '--report', '--num_eval=1', '--eval_epochs=2',
                         '--full_data_epochs=1']},
}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}   # two-sided 95 % t quantiles
CHANCE = 10.0        # CIFAR-10's 10 classes, in percent
NEAR_CHANCE = 5.0    # a cross-architecture cell within this many points of chance is flagged


def _set_flag(flags: list[str], name: str, value) -> list[str]:
    return [f'--{name}={value}' if f.startswith(f'--{name}=') else f for f in flags]


def cut_scale(scale: dict, iterations: int | None, eval_every: int | None,
              cross_nets: int | None = None) -> dict:
    """The scale with every arm's iterations, evaluation interval and number of
    cross-architecture networks cut alike."""
    run = {}
    for ipc, flags in scale['run'].items():
        if iterations is not None:
            flags = _set_flag(flags, 'iterations', iterations)
        if eval_every is not None:
            flags = _set_flag(flags, 'eval_every', eval_every)
        run[ipc] = flags
    cross = scale['cross'] if cross_nets is None else _set_flag(scale['cross'], 'num_eval',
                                                                cross_nets)
    return dict(scale, run=run, cross=cross)


def _flag(flags: list[str], name: str) -> str | None:
    return next((f.split('=', 1)[1] for f in flags if f.startswith(f'--{name}=')), None)


def cut_text(scale: dict, plan: dict) -> str:
    """The report's sentence naming every uniform cut in ``plan`` ('' when there is none)."""
    cuts = []
    if plan.get('cut_iterations') is not None or plan.get('cut_eval_every') is not None:
        iterations = plan.get('cut_iterations') or _flag(scale['run'][10], 'iterations')
        every = plan.get('cut_eval_every') or _flag(scale['run'][10], 'eval_every')
        cuts.append(f"{iterations} iterations per run (evaluated every {every}) instead of "
                    f"the plan's `{' '.join(scale['run'][10])}`")
    if plan.get('cut_cross_nets') is not None:
        cuts.append(f"{plan['cut_cross_nets']} network(s) per architecture in the "
                    f"cross-architecture table instead of the plan's "
                    f"`{_flag(scale['cross'], 'num_eval')}`")
    if not cuts:
        return ''
    return (f"**Cut to fit the machine, alike for every arm:** {'; '.join(cuts)}. "
            f"`python experiments/study_cifar10.py` without the cut runs the full plan into "
            f"another --out.")


# Where real CIFAR-10 is (--data_source, --data_dir), set from --data_dir. It says where the
# data is read from, not what is run, so the run files' commands leave it out.
DATA_LOCATION: list[str] = []


def _data(scale) -> list[str]:
    return [f'--flagfile={PRESET}'] + DATA_LOCATION + scale['data']


def set_data_location(data_dir: str) -> None:
    """Points every command at real CIFAR-10 in ``data_dir``; exits naming the fix if it
    holds none."""
    DATA_LOCATION[:] = cifar10_flags(data_dir)


# ----------------------------------------------------------------------------- stages

def stage_experts(scale, work) -> dict:
    """10 experts with full trajectories, and the same experts with smoothed anchors."""
    plain, smoothed = os.path.join(work, 'experts'), os.path.join(work, 'experts_smoothed')
    t0 = time.time()
    run_command(['-m', 'mct_jax.expert', *_data(scale), f'--expert_dir={plain}',
                 f'--num_experts={scale["experts"]}', f'--train_epochs={scale["epochs"]}',
                 '--save_full_trajectory'], os.path.join(work, 'logs', 'experts.log'))
    folders = expert_store.list_experts(plain)
    config = dict(expert_store.read_config(plain),
                  anchors=[int(a) for a in scale['smoothed'].split(',')], smooth_anchors=True,
                  save_full_trajectory=False, derived_from=os.path.abspath(plain))
    expert_store.check_config(smoothed, config)
    os.makedirs(smoothed, exist_ok=True)
    checkpoint.write_json(os.path.join(smoothed, expert_store.CONFIG_FILE), config)
    for i, folder in enumerate(folders):
        target = expert_store.expert_path(smoothed, i)
        if expert_store.is_complete(target):
            continue
        full = expert_store.load_trajectory(folder, 'full')
        snaps = [jax_tree_at(full.anchors, t) for t in range(full.num_epochs + 1)]
        run = interop.trajectory_run(snaps, config['anchors'], True, False)
        expert_store.save_expert(target, run, {'index': i, 'derived_from': folder})
    metas = [checkpoint.read_json(os.path.join(f, 'meta.json')) for f in folders]
    return {'num_experts': len(folders), 'epochs': scale['epochs'],
            'train_seconds': sum(m.get('seconds', 0.0) for m in metas),
            'final_test_accuracy': [100 * m['test_acc'][-1] for m in metas],
            'wall_seconds': time.time() - t0}


def jax_tree_at(tree, t):
    import jax
    return jax.tree.map(lambda a: a[t], tree)


def run_name(arm: str, seed: int) -> str:
    return f'{arm}_s{seed}'


def _run_args(scale, work, arm: str, seed: int) -> tuple[list[str], list[str], str]:
    """The distillation flags of one run, the command recorded for it (without where the
    data lies) and its run folder."""
    ipc, extra, experts, _ = ARMS[arm]
    run_dir = os.path.join(work, 'runs', run_name(arm, seed))
    expert_dir = os.path.join(work, 'experts' if experts == 'plain' else 'experts_smoothed')
    if '--labels=learned' in extra:
        extra = extra + scale['learned']
    args = (_data(scale) + scale['common'] + scale['run'][ipc] + extra +
            [f'--ipc={scale["ipc"][ipc]}', f'--seed={seed}', f'--expert_dir={expert_dir}',
             f'--out_dir={run_dir}', '--pictures=false', '--tensorboard=false',
             '--progress=log'])
    command = ['python', '-m', 'mct_jax.distill'] + [a.replace(REPO + os.sep, '') for a in args
                                                     if a not in DATA_LOCATION]
    return args, command, run_dir


def stage_run(scale, work, out, arm: str, seed: int) -> dict:
    """One distillation run, its per-run JSON (reused when present)."""
    path = os.path.join(out, 'runs', f'{run_name(arm, seed)}.json')
    ipc = ARMS[arm][0]
    args, command, run_dir = _run_args(scale, work, arm, seed)
    if os.path.isfile(path):
        with open(path) as f:
            done = json.load(f)
        if done['command'] != command:
            raise SystemExit(
                f'error: {path} was run with a different command than this plan asks for '
                f'(another scale or cut?):\n  done: {" ".join(done["command"])}\n  plan: '
                f'{" ".join(command)}\nRerun with the settings it was made with, or give '
                f'another --out and --work.')
        return done
    log(f'{run_name(arm, seed)}: distilling')
    t0 = time.time()
    run_command(['-m', 'mct_jax.distill', *args],
                os.path.join(work, 'logs', f'{run_name(arm, seed)}.log'))
    wall = time.time() - t0
    evals, steps = monitor.read_metrics(os.path.join(run_dir, 'metrics.jsonl'))
    its = [e['iteration'] for e in evals]
    test = [e['eval']['mean'] for e in evals]
    val = [e['val']['mean'] for e in evals]
    best = max(range(len(val)), key=lambda i: (val[i], -i))   # first of the best on validation
    secs = [s['seconds'] for s in steps[1:]]
    result = {'name': run_name(arm, seed), 'arm': arm, 'seed': seed, 'ipc': ipc,
              'command': command,
              'iterations': its, 'test_mean': test, 'test_std': [e['eval']['std'] for e in evals],
              'val_mean': val, 'val_std': [e['val']['std'] for e in evals],
              'best_iteration': its[best], 'best_val': val[best], 'best_test': test[best],
              'best_test_std': evals[best]['eval']['std'], 'final_test': test[-1],
              'final_lr': evals[-1]['lr'],
              'seconds_per_iteration': statistics.median(secs) if secs else None,
              'faults': sum(s['fault'] != 'ok' for s in steps), 'wall_seconds': wall,
              'convergence_test': curve_summary(its, test),
              'best_npz': os.path.relpath(os.path.join(run_dir, 'best.npz'), REPO)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)
    log(f'{run_name(arm, seed)}: best (validation {result["best_val"]:.2f}) at '
        f'{result["best_iteration"]}: test {result["best_test"]:.2f} ({wall:.0f} s)')
    return result


def stage_cross(scale, work, out, runs: dict) -> dict:
    """Cross-architecture table and ConvNet scores of each main arm's best set (the seed
    whose best validation accuracy is highest)."""
    results = {}
    for arm in ['mct', 'mtt'] + [a for a in MAIN if a not in ('mct', 'mtt')]:   # headline first
        mine = [r for r in runs.values() if r['arm'] == arm]
        if not mine:
            continue
        best = max(mine, key=lambda r: r['best_val'])
        path = os.path.join(out, 'cross', f'{arm}.json')
        if os.path.isfile(path):
            with open(path) as f:
                done = json.load(f)['commands'][0]
            if (_set_flag(done, 'num_eval', 0) != _set_flag(scale['cross'], 'num_eval', 0) or
                    int(_flag(done, 'num_eval')) < int(_flag(scale['cross'], 'num_eval'))):
                sys.exit(f'error: {path} was evaluated with `{" ".join(done)}`, not '
                         f'`{" ".join(scale["cross"])}`; move it away or use another --out.')
        else:
            synthetic = os.path.join(work, 'runs', best['name'])
            t0 = time.time()
            log(f'{arm}: cross-architecture evaluation of {best["name"]}')
            cross = json.loads(run_command(
                ['-m', 'mct_jax.evaluate', f'--synthetic={synthetic}', *scale['cross'],
                 f'--report_dir={work}/cross/{arm}', '--progress=log'],
                os.path.join(work, 'logs', f'cross_{arm}.log')))
            scores = json.loads(run_command(
                ['-m', 'mct_jax.evaluate', f'--synthetic={synthetic}', *scale['scores'],
                 f'--report_dir={work}/scores/{arm}', f'--baseline_cache={work}/baselines',
                 '--progress=log'],
                os.path.join(work, 'logs', f'scores_{arm}.log')))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w') as f:
                json.dump({'arm': arm, 'set': best['name'], 'architectures': cross,
                           'convnet_scores': scores['convnet'], 'seconds': time.time() - t0,
                           'commands': [scale['cross'], scale['scores']]}, f, indent=1)
        with open(path) as f:
            results[arm] = json.load(f)
    return results


def _max_difference(a, b) -> float | None:
    return max((abs(x - y) for x, y in zip(a, b)), default=None)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _expert_accuracies(folder: str) -> list[float]:
    """Final test accuracy (%) of each expert in ``folder``."""
    return [100 * checkpoint.read_json(os.path.join(f, 'meta.json'))['test_acc'][-1]
            for f in expert_store.list_experts(folder)]


def stage_rescore(scale, work, out, cross: dict, runs: dict) -> dict:
    """ConvNet scores of the soft-label arms under DD-Ranking's definitions (HLR from the
    set's images trained with hard labels; the random real images labelled as the set's
    labels start), for cross files scored before `evaluate --report` followed them.

    The scored set is distilled again from its recorded command when its folder is gone,
    and its accuracy at every evaluation is compared with the recorded run (same seed, same
    result); then the scores command of the plan runs on it and replaces the cross file's
    ConvNet scores, the cross-architecture cells and the rerun's comparison kept beside."""
    for arm, c in cross.items():
        if not soft_labels(arm) or 'protocol' in c['convnet_scores'].get('scores', {}):
            continue
        recorded = runs[c['set']]
        args, command, run_dir = _run_args(scale, work, arm, recorded['seed'])
        if command != recorded['command']:
            raise SystemExit(f'error: {c["set"]} was run with `{" ".join(recorded["command"])}`'
                             f', which this plan no longer gives; rescore it at its own scale.')
        t0 = time.time()
        if not os.path.isfile(os.path.join(run_dir, 'best.npz')):
            log(f'{arm}: distilling {c["set"]} again to rescore it')
            run_command(['-m', 'mct_jax.distill', *args],
                        os.path.join(work, 'logs', f'rescore_{c["set"]}.log'))
        evals, _ = monitor.read_metrics(os.path.join(run_dir, 'metrics.jsonl'))
        rerun = [e['eval']['mean'] for e in evals]
        log(f'{arm}: scoring {c["set"]}')
        scores = json.loads(run_command(
            ['-m', 'mct_jax.evaluate', f'--synthetic={run_dir}', *scale['scores'],
             f'--report_dir={work}/scores/{arm}', f'--baseline_cache={work}/baselines',
             '--progress=log'],
            os.path.join(work, 'logs', f'rescore_{arm}.log')))
        with open(os.path.join(work, 'scores', arm, 'cross_architecture.json')) as f:
            note = json.load(f).get('scores_note', '')
        c['scored_before_soft_label_definitions'] = c['convnet_scores']
        c['convnet_scores'] = scores['convnet']
        # 'soft labels: ... labelled as the set is (<scheme>), as DD-Ranking defines them'
        c['random_labels'] = note[note.find('(') + 1:note.rfind(')')] or None
        c['rescored'] = {
            'recorded_test_mean': recorded['test_mean'], 'rerun_test_mean': rerun,
            'max_abs_difference': _max_difference(rerun, recorded['test_mean']),
            'experts_max_abs_difference': _max_difference(
                _expert_accuracies(os.path.join(work, 'experts')),
                _read_json(os.path.join(out, 'experts.json'))['final_test_accuracy']),
            'seconds': time.time() - t0}
        with open(os.path.join(out, 'cross', f'{arm}.json'), 'w') as f:
            json.dump(c, f, indent=1)
        log(f'{arm}: IOR {scores["convnet"]["scores"]["IOR"]:.2f}, HLR '
            f'{scores["convnet"]["scores"]["HLR"]:.2f}, LRS '
            f'{scores["convnet"]["scores"]["LRS"]:.2f}')
    return cross


# ----------------------------------------------------------------------------- analysis

def paired(runs: dict, a: str, b: str, key: str = 'best_test') -> dict | None:
    """Mean of the per-seed differences a - b and its 95 % t-interval over the seeds both
    arms have."""
    seeds = sorted({r['seed'] for r in runs.values() if r['arm'] == a} &
                   {r['seed'] for r in runs.values() if r['arm'] == b})
    if len(seeds) < 2:
        return None
    d = [runs[run_name(a, s)][key] - runs[run_name(b, s)][key] for s in seeds]
    mean = statistics.mean(d)
    half = T_975.get(len(d) - 1, 1.96) * statistics.stdev(d) / math.sqrt(len(d))
    return {'a': a, 'b': b, 'seeds': seeds, 'differences': d, 'mean': mean,
            'low': mean - half, 'high': mean + half}


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with ``df`` degrees of freedom: its density
    integrated by Simpson's rule inside a bisection (the report needs a handful)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    density = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)

    def cdf(t, n=4000):
        h = t / n
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
        return 0.5 + h / 3 * (density(0) + inner + density(t))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def multiplicity(diffs: list[dict], level: float = 0.05) -> str:
    """What the report's intervals cover: how many there are, and which verdicts survive a
    Bonferroni correction (every interval at 1 - level / n instead of 1 - level)."""
    n = len(diffs)
    if not n:
        return ''
    kept, lost = [], []
    for p in diffs:
        if p['low'] <= 0 <= p['high']:
            continue
        df = len(p['differences']) - 1
        sd = statistics.stdev(p['differences'])
        half = t_quantile(1 - level / (2 * n), df) * sd / math.sqrt(len(p['differences']))
        (kept if abs(p['mean']) > half else lost).append(p['claim'])
    text = (f'These are {n} comparisons, each interval at 95 % on its own, not adjusted for '
            f'multiplicity: if no arm differed from another, about {n * level:.2f} of them would '
            f'still exclude 0 by chance. With a Bonferroni correction (each interval at '
            f'{100 * (1 - level / n):.2f} %), ')
    if not kept and not lost:
        return text + 'nothing changes: no interval excludes 0 either way.'
    parts = []
    if kept:
        parts.append('still excluding 0: ' + '; '.join(kept))
    if lost:
        parts.append('no longer excluding 0: ' + '; '.join(lost))
    return text + ', '.join(parts) + '.'


def verdict(p: dict | None, claim: str) -> str:
    if p is None:
        return f'{claim}: not enough seeds to say.'
    span = f'{p["mean"]:+.2f} points (95 % interval {p["low"]:+.2f} to {p["high"]:+.2f}, ' \
           f'{len(p["seeds"])} seeds)'
    if p['low'] > 0:
        return f'{claim}: supported, {span}.'
    if p['high'] < 0:
        return f'{claim}: contradicted, {span}.'
    return f'{claim}: not supported at this scale, {span}; the interval includes 0.'


def arm_stats(runs: dict, arm: str) -> dict | None:
    mine = [r for r in runs.values() if r['arm'] == arm]
    if not mine:
        return None
    pick = lambda k: [r[k] for r in mine]
    conv = [r['convergence_test'] for r in mine]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    return {'arm': arm, 'label': ARMS[arm][3], 'seeds': sorted(pick('seed')),
            'best_test_mean': statistics.mean(pick('best_test')),
            'best_test_sd': sd(pick('best_test')),
            'best_val_mean': statistics.mean(pick('best_val')),
            'final_test_mean': statistics.mean(pick('final_test')),
            'converged_at_mean': statistics.mean(c['converged_at'] for c in conv),
            'spread_std_mean': statistics.mean(c['spread_std'] for c in conv),
            'seconds_per_iteration': statistics.mean(r['seconds_per_iteration'] or 0 for r in mine),
            'wall_seconds': sum(pick('wall_seconds'))}


COMPARISONS = [
    ('mct', 'mtt', 'MCT (2 anchors) beats MTT at ipc 10'),
    ('mct_ipc1', 'mtt_ipc1', 'MCT beats MTT at ipc 1'),
    ('mct', 'mct_integer', 'Continuous starts beat integer starts (10 experts)'),
    ('mct_smoothed', 'mct', "The release's smoothed anchors beat 2 anchors"),
    ('mct_learned', 'mct', 'Learned soft labels improve MCT'),
    ('mtt_learned', 'mtt', 'Learned soft labels improve MTT'),
    ('mct_learned', 'mtt_learned', 'With learned labels, MCT beats MTT'),
    ('mct_tesla', 'mct', "The authors' approximate gradient beats the exact one"),
] + [(f'mct_e{e}', f'mct_integer_e{e}', f'Continuous starts beat integer starts with {e} '
      f'expert{"s" if e > 1 else ""} (Table 2)') for e in (1, 2, 5)]


def _cross_cell(summary: dict, nets: int | None) -> str:
    """'mean +- std' of the first ``nets`` networks' accuracies (all of them when the
    summary has no per-network list or nets is None); the bare value for one network."""
    acc = summary.get('all')
    if not acc or nets is None:
        return f"{summary['mean']:.2f} +- {summary['std']:.2f}"
    acc = acc[:nets]
    if len(acc) == 1:
        return f'{acc[0]:.2f}'
    return f'{statistics.mean(acc):.2f} +- {statistics.pstdev(acc):.2f}'


def _first_mean(summary: dict, nets: int | None) -> float:
    """The mean test accuracy of the networks a cross-architecture cell shows."""
    acc = summary.get('all')
    return statistics.mean(acc[:nets]) if acc and nets else summary['mean']


def soft_labels(arm: str) -> bool:
    """Whether the arm's sets carry learned soft labels."""
    return '--labels=learned' in ARMS[arm][1]


def _score_notes(cross: dict, flagged: list, withheld: list, flags: list[str],
                 soft: list = ()) -> list[str]:
    """What the score columns and flagged cells rest on: each baseline's recipe, the cells at
    chance, the soft-label rows' baselines (and their rerun, when they were rescored), and
    the rows whose scores are withheld."""
    scored = [c['convnet_scores'] for a, c in cross.items() if not soft_labels(a)]
    out = []
    if scored:
        s = scored[0]
        sets = len(s['test'].get('all', [])) or '?'
        rnd, full = s['random'], s['full']
        lr = lambda v: 'the set\'s learned lr' if v is None else f'lr {v:.4g}'
        epochs = _flag(flags, 'eval_epochs') or rnd.get('epochs')
        out += ['', f"Baselines of the scores, each on {sets} ConvNets of the set's width under "
                f"the mct_jax protocol (last epoch, no lr search): the set, {epochs} epochs at "
                f"its learned lr; random real images (ipc {rnd.get('ipc')}, a fresh draw per "
                f"network, hard labels), {rnd.get('epochs')} epochs at the set's lr "
                f"({rnd['lr']:.4g} for the first row); full data, the training images the "
                f"experts saw (the validation images excluded), {full.get('epochs')} epochs at "
                f"{lr(full.get('lr'))}. The full-data baseline trained for fewer epochs than "
                f"the sets (a CPU budget), so it is lower than a longer training would give and "
                f"HLR is smaller than it would be."]
    for arm, a, summary in flagged:
        out += ['', f"(chance): {a} on the set of {ARMS[arm][3]} reaches "
                f"{_first_mean(summary, 1):.2f} % with one network, where {CHANCE:.0f} % is "
                f"chance, while the other architectures learn from the same set: that "
                f"network's training did not learn (diverged or stalled; which was not recorded, "
                f"and the set's file is not kept in the repository to rerun it), so the cell says nothing about "
                f"the set. `python -m mct_jax.evaluate --synthetic=RUN --models={a} "
                f"--num_eval=3` on a kept set tells a stalled network from a set that fails "
                f"{a}."]
    for arm in soft:
        c = cross[arm]
        s, again = c['convnet_scores'], c.get('rescored')
        text = (f"{ARMS[arm][3]}: scored as DD-Ranking defines it for soft labels. HLR takes "
                f"the set's images trained with hard labels "
                f"({s['hard_labels']['mean']:.2f} %, against {s['test']['mean']:.2f} % with "
                f"the set's own labels); IOR takes random real images labelled as the set's "
                f"labels start ({c.get('random_labels') or 'the same label scheme'}; "
                f"{s['random']['mean']:.2f} %).")
        if again:
            same = again['max_abs_difference']
            experts = again.get('experts_max_abs_difference')
            text += (" The set was first scored before `evaluate --report` followed these "
                     "definitions, so it was distilled again from its recorded command ("
                     + ('the same test accuracy at every evaluation as the recorded run'
                        if same == 0 else f'test accuracy at every evaluation within '
                        f'{same:.2f} points of the recorded run')
                     + ('' if experts is None else
                        f'; the experts, trained again, end within {experts:.2f} points of '
                        'the recorded ones')
                     + ") and scored again (`python experiments/study_cifar10.py "
                     "--parts=rescore`); the earlier scores are kept in its cross file.")
        out += ['', text]
    if withheld:
        names = ', '.join(ARMS[a][3] for a in withheld)
        out += ['', f"Scores withheld ({names}): these soft-label sets were scored before "
                "`evaluate --report` followed DD-Ranking's definitions for soft labels (HLR "
                "trains the synthetic images on hard labels; IOR's random real images get the "
                "same teacher's labels). Their recorded scores used the sets' own labels for "
                "HLR and hard labels for the random images, so they are not shown; "
                "`python -m mct_jax.evaluate --synthetic=RUN --report` scores a kept set as "
                "defined (docs/evaluation.md)."]
    return out


def _networks(result: dict) -> str:
    n = len(result['test'].get('all', []))
    return 'networks not recorded' if not n else '1 network' if n == 1 else f'{n} networks'


def _table2(runs: dict, stats: dict) -> list[str]:
    """The paper's Table 2 laid out as in the paper: experts down, start sampling across,
    with the paired difference and its interval (the 10-expert row is the main comparison)."""
    rows = [(e, f'mct_e{e}', f'mct_integer_e{e}') for e in (1, 2, 5)]
    rows.append((10, 'mct', 'mct_integer'))
    if not any(a in stats for _, a, _ in rows[:3]):
        return []
    out = ['', "## The paper's Table 2: continuous against integer starts", '',
           '| experts | continuous (%) | integer (%) | continuous - integer (95 % interval) |',
           '|---|---|---|---|']
    for e, a, b in rows:
        if a not in stats or b not in stats:
            continue
        p = paired(runs, a, b)
        diff = f"{p['mean']:+.2f} ({p['low']:+.2f}, {p['high']:+.2f})" if p else '-'
        out.append(f"| {e} | {stats[a]['best_test_mean']:.2f} +- {stats[a]['best_test_sd']:.2f} "
                   f"| {stats[b]['best_test_mean']:.2f} +- {stats[b]['best_test_sd']:.2f} | "
                   f"{diff} |")
    return out


README_ARMS = [('mtt', 'mtt_ipc1'), ('mct', 'mct_ipc1'), ('mct_tesla', None),
               ('mtt_learned', None), ('mct_learned', None)]


def _start(runs: dict, arm: str) -> float | None:
    """Mean over seeds of the test accuracy of the arm's initial set (iteration 0)."""
    acc = [r['test_mean'][0] for r in runs.values() if r['arm'] == arm and r['iterations'][0] == 0]
    return statistics.mean(acc) if acc else None


def readme_lines(runs: dict) -> dict:
    """The README's results table and its claims sentence, formatted from the run files
    (tests/test_published.py checks that README.md quotes them verbatim)."""
    stats = {arm: s for arm in ARMS if (s := arm_stats(runs, arm))}
    cell = lambda a: (f"{stats[a]['best_test_mean']:.2f} +- {stats[a]['best_test_sd']:.2f}"
                      if a in stats else '-')
    start = lambda a: f'{v:.2f}' if a and (v := _start(runs, a)) is not None else '-'
    rows = ['| ipc | ' + ' | '.join(
                ARMS[a][3].replace(' soft labels', ' labels').replace(
                    'MCT, 2 anchors', 'MCT').replace('approximate gradient', 'gradient')
                for a, _ in README_ARMS) + ' |',
            '|---|' + '---|' * len(README_ARMS)]
    for col, label in ((0, '10'), (1, '1')):
        arms = [pair[col] for pair in README_ARMS]
        rows.append(f'| {label} | ' + ' | '.join(cell(a) if a else '-' for a in arms) + ' |')
        rows.append(f'| {label}, the initial images | ' +
                    ' | '.join(start(a) for a in arms) + ' |')
    main, one = paired(runs, 'mct', 'mtt'), paired(runs, 'mct_ipc1', 'mtt_ipc1')
    t2 = [paired(runs, f'mct_e{e}', f'mct_integer_e{e}') for e in (1, 2, 5)]
    t2.append(paired(runs, 'mct', 'mct_integer'))
    includes = lambda p: p['low'] <= 0 <= p['high']
    claims = ''
    if main and one:
        claims = (f"At this scale, MCT against MTT is {main['mean']:+.2f} points at ipc 10 (95 % "
                  f"interval {main['low']:+.2f} to {main['high']:+.2f}) and {one['mean']:+.2f} at "
                  f"ipc 1 ({one['low']:+.2f} to {one['high']:+.2f}): " +
                  ('neither interval excludes 0.' if includes(main) and includes(one) else
                   'see the report for which interval excludes 0.'))
    if all(t2):
        claims += (" The paper's Table 2 (continuous against integer starts with 1, 2, 5 and 10 "
                   f"experts, {len(t2[0]['seeds'])} seeds each): " +
                   ', '.join(f"{p['mean']:+.2f}" for p in t2) + ' points, ' +
                   ('every interval including 0.' if all(map(includes, t2)) else
                    'not every interval including 0.'))
    return {'table': '\n'.join(rows), 'claims': claims.strip()}


def write_report(study: dict, out: str) -> str:
    runs = study['runs']
    stats = {arm: s for arm in ARMS if (s := arm_stats(runs, arm))}
    diffs = [dict(p, claim=c) for a, b, c in COMPARISONS if (p := paired(runs, a, b))]
    lines = ['# CPU-scale study on real CIFAR-10: MCT against MTT, with seeds', '',
             'Replaces the single-seed reproduction (`reproduce_cifar10.md`, kept for the '
             'record). Every number below comes from the per-run JSON files in `runs/`, which '
             'record each run\'s command and seed; `python experiments/study_cifar10.py '
             '--report_only` rebuilds this page from them.', '',
             '## Scale', '', study['scale_text'], '',
             '## Main comparison (best set chosen on validation, test accuracy reported)', '',
             '| arm | seeds | test accuracy of the best set (%), mean +- sd over seeds | '
             'validation (%) | last evaluation, test (%) | converged at (iteration) | spread '
             'after (std) | s / iteration |', '|---|---|---|---|---|---|---|---|']
    for arm in MAIN + IPC1 + TABLE2:
        s = stats.get(arm)
        if s:
            lines.append(f"| {s['label']} | {len(s['seeds'])} | {s['best_test_mean']:.2f} +- "
                         f"{s['best_test_sd']:.2f} | {s['best_val_mean']:.2f} | "
                         f"{s['final_test_mean']:.2f} | {s['converged_at_mean']:.0f} | "
                         f"{s['spread_std_mean']:.2f} | {s['seconds_per_iteration']:.2f} |")
    lines += ['', 'Converged at: the first evaluation after which test accuracy stays within 2 '
              'points of the run\'s best (mean over seeds); spread after: the std of the '
              'evaluations from there on. s / iteration: median wall seconds of one iteration '
              'on a 2-core CPU, not a speed benchmark (docs/benchmarks.md has those).']
    lines += _table2(runs, stats)
    lines += ['', '## Claims, from paired differences over seeds', '',
              'Each difference pairs two arms run with the same seed (same experts, same '
              'initial draw where the arms allow); the interval is a 95 % t-interval over '
              'the seeds.', '']
    lines += [f'- {verdict(p, p["claim"])}' for p in diffs]
    conv = [(a, b) for a, b in (('mct', 'mtt'), ('mct_ipc1', 'mtt_ipc1'))
            if a in stats and b in stats]
    for a, b in conv:
        lines.append(f"- Convergence ({stats[a]['label']} vs {stats[b]['label']}): the first "
                     f"evaluation after which test accuracy stays within 2 points of the run's "
                     f"best, mean over seeds, is iteration {stats[a]['converged_at_mean']:.0f} "
                     f"against {stats[b]['converged_at_mean']:.0f}; the spread after it "
                     f"{stats[a]['spread_std_mean']:.2f} against "
                     f"{stats[b]['spread_std_mean']:.2f} points (std of the evaluations).")
    if diffs:
        lines += ['', multiplicity(diffs)]
    cross = study.get('cross', {})
    if cross:
        archs = [a for a in ('convnet', 'alexnet', 'vgg11', 'resnet18')
                 if any(a in c['architectures'] for c in cross.values())]
        lines += ['', '## Cross-architecture evaluation of each arm\'s best set', '',
                  '| arm (set) | ' + ' | '.join(archs) + ' | ConvNet IOR | HLR | LRS |',
                  '|' + '---|' * (len(archs) + 4)]
        nets = study.get('cross_nets')
        cross = {arm: cross[arm] for arm in MAIN if arm in cross}
        flagged, withheld, rescored = [], [], []
        for arm, c in cross.items():
            cells = []
            for a in archs:
                r = c['architectures'].get(a)
                cell = _cross_cell(r['test'], nets) if r else '-'
                if r and _first_mean(r['test'], nets) <= CHANCE + NEAR_CHANCE:
                    cell += ' (chance)'
                    flagged.append((arm, a, r['test']))
                cells.append(cell)
            sc = c['convnet_scores']['scores']
            if soft_labels(arm) and 'protocol' not in sc:   # scored before the definitions
                withheld.append(arm)
                score_cells = ' | '.join(['withheld'] * 3)
            else:
                rescored += [arm] if soft_labels(arm) else []
                score_cells = f"{sc['IOR']:.2f} | {sc['HLR']:.2f} | {sc['LRS']:.2f}"
            lines.append(f"| {ARMS[arm][3]} ({c['set']}) | " + ' | '.join(cells) +
                         f' | {score_cells} |')
        first = 'first network' if nets == 1 else f'first {nets} networks'
        lines += ['', f'Test accuracy (%) of the {first} of each architecture (mean +- std '
                  'where there are several; network i is initialised and shuffled from '
                  '`fold_in(key, i)`, so the first networks of a larger evaluation are the same '
                  'networks); IOR and HLR in points of accuracy, LRS in percent, from 3 '
                  'ConvNets (docs/evaluation.md).']
        lines += _score_notes(cross, flagged, withheld, study.get('scores_flags', []),
                              rescored)
        spread = [(max(acc) - min(acc), a, arm, acc) for arm, c in cross.items()
                  for a, r in c['architectures'].items()
                  if len(acc := r['test'].get('all', [])) > 1]
        if spread:
            width, a, arm, acc = max(spread)
            lines += ['', f'How far one network can be from another: {len(acc)} {a} '
                         f'networks trained on the set of {ARMS[arm][3]} span '
                         f'{min(acc):.2f} to {max(acc):.2f} ({width:.1f} points), the widest '
                         f'range among architectures evaluated with several networks; '
                         f'differences between arms smaller than that, in one network, say '
                         f'nothing.']
        lines += ['', 'Seconds to train and test the networks of each architecture that were '
                  'run:', '']
        for arm, c in cross.items():
            lines.append(f"- {ARMS[arm][3]}: " + ', '.join(
                f"{a} {r['seconds']:.0f} s ({_networks(r)})"
                for a in archs if (r := c['architectures'].get(a)) and 'seconds' in r))
    experts_s = study['experts'].get('train_seconds', study['experts'].get('wall_seconds', 0))
    runs_s = sum(r['wall_seconds'] for r in runs.values())
    cross_s = sum(c.get('seconds', 0) for c in cross.values())
    lines += ['', '## Compute', '',
              f"{len(runs)} distillation runs, {(experts_s + runs_s + cross_s) / 3600:.1f} hours "
              f"in all on the 2-core CPU (training the experts {experts_s / 60:.0f} min; runs "
              f"{runs_s / 3600:.1f} h; cross-architecture and scores {cross_s / 3600:.1f} h).",
              '']
    missing = []
    for name, arms in (('the main comparison', MAIN), ('ipc 1', IPC1),
                       ("the paper's Table 2", TABLE2)):
        seeds = [sorted(r['seed'] for r in runs.values() if r['arm'] == a) for a in arms]
        if not any(seeds):
            missing.append(name)
        elif study.get('seeds') and min(map(len, seeds)) < len(study['seeds']):
            missing.append(f"{name} beyond seed(s) {', '.join(map(str, min(seeds, key=len)))}"
                           f" for some of its arms")
    if not cross:
        missing.append('the cross-architecture evaluation')
    else:
        missing += [f'the cross-architecture evaluation of {ARMS[a][3]}'
                    for a in MAIN if a in stats and a not in cross]
    if missing:
        lines += [f"**Not run yet:** {'; '.join(missing)}. The study continues where it "
                  f"stopped, reusing every finished run: `{study.get('command', '')}`.", '']
    lines += [study.get('cut', '')]
    lines += ['', '![accuracy](study_accuracy.png)', '']
    md = '\n'.join(lines) + '\n'
    with open(os.path.join(out, 'study_cifar10.md'), 'w') as f:
        f.write(md)
    with open(os.path.join(out, 'study_cifar10.json'), 'w') as f:
        json.dump({'stats': stats, 'differences': diffs, 'cross': cross,
                   'experts': study['experts'], 'scale': study['scale_text']}, f, indent=1)
    _plot(runs, stats, os.path.join(out, 'study_accuracy.png'))
    return md


def _plot(runs, stats, png):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    groups = [('ipc 10', MAIN), ('ipc 1', IPC1), ('Table 2: experts', TABLE2)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, (title, arms) in zip(axes, groups):
        for arm in arms:
            mine = [r for r in runs.values() if r['arm'] == arm]
            if not mine:
                continue
            its = mine[0]['iterations']
            curves = np.array([r['test_mean'] for r in mine if r['iterations'] == its])
            m = curves.mean(0)
            ax.plot(its, m, label=ARMS[arm][3], lw=1.3)
            ax.fill_between(its, curves.min(0), curves.max(0), alpha=0.15)
        ax.set(title=f'{title} (band: min-max over seeds)', xlabel='iteration',
               ylabel='test accuracy (%)')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

def _read_results(folder: str, key: str) -> dict:
    """Every JSON file in ``folder`` (none if it does not exist), by its ``key`` field."""
    results = {}
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, f)) as fh:
            r = json.load(fh)
        results[r[key]] = r
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--scale', choices=sorted(SCALES), default='cpu')
    p.add_argument('--data_dir', default=os.environ.get('MCT_CIFAR10_DIR', 'data/cifar10'),
                   help='Real CIFAR-10: a folder written by `python -m mct_jax.prepare '
                        '--dataset=cifar10` or holding train.npz/test.npz (default: '
                        '$MCT_CIFAR10_DIR, else data/cifar10).')
    p.add_argument('--work', default=os.path.join(REPO, 'runs', 'study_cifar10'))
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'study_cifar10'))
    p.add_argument('--report_only', action='store_true')
    p.add_argument('--parts', default='main,ipc1,table2,cross',
                   help='which parts to run, in this order (the experts always)')
    p.add_argument('--cut_iterations', type=int, default=None,
                   help='run every arm for this many iterations instead of the scale\'s '
                        '(a uniform cut, named in the report)')
    p.add_argument('--cut_eval_every', type=int, default=None,
                   help='evaluate every arm every this many iterations instead')
    p.add_argument('--cut_cross_nets', type=int, default=None,
                   help='train this many networks per architecture in the cross-architecture '
                        'table instead of the scale\'s (alike for every arm)')
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    plan_json = os.path.join(args.out, 'plan.json')
    if args.report_only and os.path.isfile(plan_json):
        with open(plan_json) as f:
            plan = json.load(f)
    else:
        plan = {'scale': args.scale, 'cut_iterations': args.cut_iterations,
                'cut_eval_every': args.cut_eval_every, 'cut_cross_nets': args.cut_cross_nets}
    scale = cut_scale(SCALES[plan['scale']], plan['cut_iterations'], plan['cut_eval_every'],
                      plan.get('cut_cross_nets'))
    experts_json = os.path.join(args.out, 'experts.json')
    if not args.report_only:
        set_data_location(args.data_dir)
        with open(plan_json, 'w') as f:
            json.dump(plan, f, indent=1)
        experts = stage_experts(scale, args.work)
        if not os.path.isfile(experts_json):
            with open(experts_json, 'w') as f:
                json.dump(experts, f, indent=1)
        parts = args.parts.split(',')
        groups = {'main': MAIN, 'ipc1': IPC1, 'table2': TABLE2}
        for part in parts:
            if part in groups:
                for seed in scale['seeds']:          # seed by seed: a cut keeps arms equal
                    for arm in groups[part]:
                        stage_run(scale, args.work, args.out, arm, seed)
    runs = _read_results(os.path.join(args.out, 'runs'), 'name')
    if not args.report_only and 'cross' in args.parts.split(','):
        cross = stage_cross(scale, args.work, args.out, runs)
    else:
        cross = _read_results(os.path.join(args.out, 'cross'), 'arm')
    if not args.report_only and 'rescore' in args.parts.split(','):
        cross = stage_rescore(scale, args.work, args.out, cross, runs)
    if not os.path.isfile(experts_json):
        sys.exit(f'error: {experts_json} is missing, so {args.out} holds no study to report '
                 f'on; run the study without --report_only first (or point --out at one).')
    with open(experts_json) as f:
        experts = json.load(f)
    r10 = ' '.join(scale['run'][10])
    study = {'runs': runs, 'cross': cross, 'experts': experts,
             'cross_nets': int(_flag(scale['cross'], 'num_eval')), 'seeds': scale['seeds'],
             'scale_text': (f"`experiments/cifar10_local.cfg` ({args.scale} scale): width-32 "
                            f"ConvNet, 500 training images per class, 50 per class held out "
                            f"for validation; {experts['num_experts']} experts of "
                            f"{experts['epochs']} epochs (mean test accuracy "
                            f"{statistics.mean(experts['final_test_accuracy']):.1f} %); ipc 10: "
                            f"{r10}; ipc 1: {' '.join(scale['run'][1])}; "
                            f"{' '.join(scale['common'])}; seeds {scale['seeds']}."),
             'cut': cut_text(SCALES[plan['scale']], plan), 'scores_flags': scale['scores'],
             'command': ' '.join(['python experiments/study_cifar10.py'] + [
                 f'--{k}={v}' for k, v in plan.items() if v is not None and
                 (k != 'scale' or v != 'cpu')])}
    md = write_report(study, args.out)
    print(md)


if __name__ == '__main__':
    main()
