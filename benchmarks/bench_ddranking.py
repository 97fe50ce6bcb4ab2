"""Side by side: one exported set scored by the DD-Ranking package and by ``evaluate --report``.

    python benchmarks/bench_ddranking.py --synthetic=RUN --cifar10_dir=DIR \\
        --ddranking_python=ddr-venv/bin/python --num_eval=2 --epochs=20
    python benchmarks/bench_ddranking.py --table      # the table of results/bench_ddranking.json

``RUN`` is a hard-label CIFAR-10 run folder (or its ``best.npz``) and ``DIR`` the CIFAR-10
``train.npz``/``test.npz`` it was distilled from. The script

1. exports the set (``python -m mct_jax.evaluate --synthetic=RUN --export=...``);
2. writes the training images the set's experts saw and the test set as torchvision's
   ``cifar-10-batches-py`` (``benchmarks/cifar_folder.py``);
3. scores the export with ``ddranking.metrics.LabelRobustScoreHard`` (``ddranking`` 0.2.0)
   in its own Python environment (``benchmarks/ddranking_side.py`` says how to make it);
4. scores the same set with ``python -m mct_jax.evaluate --report`` under
   ``--protocol=ddranking`` and ``--protocol=mct_jax``, the ConvNet only, with the same
   number of networks and epochs;

and prints one table, saved with every per-network accuracy to
``benchmarks/results/bench_ddranking.json``. Every row reports its accuracies (mean over
the networks, percent), IOR and HLR (points of accuracy) and LRS twice, each averaged over
the runs from the per-run accuracies: as the paper defines it, on accuracies in [0, 1]
(percent of the score's range), and as the package computes it, on accuracies in percent,
whose exponential floors at -e^-1/(e - e^-1) = -0.1565 for any set more than a few points
below the full data (docs/evaluation.md).

The two sides draw different random images and networks, so their accuracies agree within
the spread of a few networks, not to the digit; the spread is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results', 'bench_ddranking.json')
LRS_FLOOR = -math.exp(-1) / (math.e - math.exp(-1))


def lrs(syn: float, rnd: float, full: float, lam: float = 0.5, scale: float = 100.0) -> float:
    """LRS of one run from accuracies in percent: ``scale=100`` as the paper defines it
    (accuracies as fractions), ``scale=1`` as the package computes it (in percent)."""
    a = lam * (syn - rnd) / scale - (1 - lam) * (full - syn) / scale
    return (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def row(name: str, syn: list, rnd: list, full: list, lam: float = 0.5) -> dict:
    """A table row from per-run accuracies (percent): means, the per-run scores averaged."""
    mean = statistics.mean
    runs = list(zip(syn, rnd, full))
    return {'scorer': name, 'synthetic': mean(syn), 'random': mean(rnd), 'full': mean(full),
            'synthetic_all': list(syn), 'random_all': list(rnd), 'full_all': list(full),
            'IOR': mean(s - r for s, r, _ in runs), 'HLR': mean(f - s for s, _, f in runs),
            'LRS_paper': 100 * mean(lrs(*r, lam) for r in runs),
            'LRS_package': mean(lrs(*r, lam, scale=1.0) for r in runs)}


def table(results: dict) -> str:
    s = results['settings']
    lines = [f"{s['dataset']}, ipc {s['ipc']}, a width-{s['width']} {s['method']} set "
             f"distilled from the first {s['train_images_per_class']} training images of each "
             f"class; ConvNet networks: {s['num_eval']} per scorer, {s['epochs']} epochs; test "
             f"set {s['test_images']:,} images",
             '',
             '| scorer | synthetic (%) | random real (%) | full data (%) | IOR | HLR | '
             'LRS, paper (%) | LRS, package | seconds |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in results['rows']:
        lines.append(f"| {r['scorer']} | {r['synthetic']:.2f} | {r['random']:.2f} | "
                     f"{r['full']:.2f} | {r['IOR']:+.2f} | {r['HLR']:+.2f} | "
                     f"{r['LRS_paper']:.2f} | {r['LRS_package']:.4f} | {r['seconds']:.0f} |")
    pkg = results.get('package_scores')
    if pkg:
        lines += ['', f"The package's own return values: HLR {pkg['hard_label_recovery_mean']:.2f}"
                  f", IOR {pkg['improvement_over_random_mean']:.2f}, LRS "
                  f"{pkg['label_robust_score_mean']:.4f} (floor {LRS_FLOOR:.4f})."]
    return '\n'.join(lines)


def _run(cmd: list[str], log: str) -> str:
    """Runs a command, its output kept in ``log``; exits with the log's tail on failure."""
    t = time.time()
    with open(log, 'w') as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, cwd=REPO)
        f.write(proc.stdout)
    if proc.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        sys.exit(f"error: {' '.join(cmd[:4])} ... failed ({log}):\n{tail}")
    print(f'  {os.path.basename(log)[:-4]}: {time.time() - t:.0f} s', flush=True)
    return proc.stdout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--table', action='store_true', help='print the table of --out and stop')
    p.add_argument('--synthetic', help='a hard-label CIFAR-10 run folder or its best.npz')
    p.add_argument('--cifar10_dir', default=os.environ.get('MCT_CIFAR10_DIR'),
                   help='train.npz and test.npz of CIFAR-10 (default $MCT_CIFAR10_DIR)')
    p.add_argument('--ddranking_python', help="the DD-Ranking environment's python")
    p.add_argument('--num_eval', type=int, default=2, help='networks per scorer')
    p.add_argument('--epochs', type=int, default=20, help='epochs of every network (>= 10)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--work', default=os.path.join(REPO, 'runs', 'bench_ddranking'))
    p.add_argument('--out', default=RESULTS)
    a = p.parse_args(argv)
    if a.table:
        with open(a.out) as f:
            print(table(json.load(f)))
        return
    missing = [n for n in ('synthetic', 'cifar10_dir', 'ddranking_python') if not getattr(a, n)]
    if missing:
        p.error('needs ' + ', '.join(f'--{n}' for n in missing))
    if a.epochs < 10:
        p.error('--epochs must be >= 10: DD-Ranking tests every 10 epochs')
    os.makedirs(a.work, exist_ok=True)
    log = lambda name: os.path.join(a.work, f'{name}.log')
    export = os.path.join(a.work, 'export')
    # the set's own settings name its data (evaluate takes them from the set)
    py = [sys.executable, '-m', 'mct_jax.evaluate', f'--synthetic={a.synthetic}']
    print('scoring', a.synthetic, flush=True)
    _run(py + [f'--export={export}'], log('export'))
    with open(os.path.join(export, 'preprocessing.json')) as f:
        prep = json.load(f)
    if prep.get('dataset') != 'cifar10' or prep.get('soft_labels'):
        sys.exit(f"error: {a.synthetic} is a {prep.get('dataset')} set"
                 f"{' with soft labels' if prep.get('soft_labels') else ''}; the package's "
                 'hard-label score needs a hard-label CIFAR-10 set.')
    sys.path.insert(0, HERE)
    import cifar_folder
    k = prep.get('train_images_per_class')
    cifar_folder.write(a.cifar10_dir, os.path.join(a.work, 'cifar'), k)

    rows = []
    t = time.time()
    side_json = os.path.join(a.work, 'ddranking_side.json')
    _run([a.ddranking_python, os.path.join(HERE, 'ddranking_side.py'), f'--export_dir={export}',
          f"--cifar_dir={os.path.join(a.work, 'cifar')}", f'--num_eval={a.num_eval}',
          f'--num_epochs={a.epochs}', f'--seed={a.seed}', f'--out_json={side_json}'],
         log('ddranking_package'))
    with open(side_json) as f:
        side = json.load(f)
    runs = side['per_run']
    rows.append(dict(row('DD-Ranking 0.2.0 (the package)', [r['synthetic_acc'] for r in runs],
                         [r['random_acc'] for r in runs], [r['full_acc'] for r in runs]),
                     seconds=time.time() - t))
    ours = {}
    for protocol in ('ddranking', 'mct_jax'):
        t = time.time()
        out = _run(py + ['--models=convnet', '--report', f'--protocol={protocol}',
                         f'--num_eval={a.num_eval}', f'--eval_epochs={a.epochs}',
                         f'--full_data_epochs={a.epochs}', f'--seed={a.seed}',
                         f"--baseline_cache={os.path.join(a.work, 'cache_' + protocol)}",
                         f"--report_dir={os.path.join(a.work, 'report_' + protocol)}",
                         '--progress=log'], log(f'mct_jax_{protocol}'))
        r = json.loads(out.strip().splitlines()[-1])['convnet']
        ours[protocol] = r
        rows.append(dict(row(f'mct_jax, --protocol={protocol}', r['test']['all'],
                             r['random']['all'], r['full']['all']),
                         seconds=time.time() - t, reported=r['scores']))
    results = {
        'settings': {'dataset': 'cifar10', 'ipc': prep.get('ipc'), 'method': prep.get('method'),
                     'width': (prep.get('network') or {}).get('width'),
                     'train_images_per_class': k, 'num_eval': a.num_eval, 'epochs': a.epochs,
                     'seed': a.seed, 'test_images': side['settings']['cifar_test_images'],
                     'synthetic': os.path.relpath(a.synthetic, REPO)},
        'rows': rows, 'package_scores': side['scores'], 'package': side['package'],
        'package_side': side, 'mct_jax': ours,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, 'w') as f:
        json.dump(results, f, indent=1)
    print(table(results))


if __name__ == '__main__':
    main()
