"""The figures of docs/evaluation_results.md, measured and formatted.

    python experiments/evaluation_results.py --data_dir=CIFAR10   # about 30 min, 2-core CPU
    python experiments/evaluation_results.py --markdown           # the page's figures

Runs ``experiments/cifar10_local.cfg``'s experts and an MCT ipc-10 distillation on real
CIFAR-10 (its validation split chooses ``best.npz``), in a scratch folder, and writes
``experiments/results/evaluation_results.json``: every evaluation's validation and test
accuracy, the chosen iteration, and the commands' wall time. The cross-architecture table
comes from the seeded study's results (``results/study_cifar10/cross/mct.json``).
``tests/test_published.py`` checks that the page quotes :func:`paragraphs`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import experiment_tools as tools  # noqa: E402

OUT = os.path.join(HERE, 'results', 'evaluation_results.json')
CROSS = os.path.join(HERE, 'results', 'study_cifar10', 'cross', 'mct.json')
PRESET = '--flagfile=experiments/cifar10_local.cfg'
DISTILL = ['--ipc=10', '--syn_steps=10', '--iterations=200', '--eval_every=50']
NAMES = {'convnet': 'ConvNet', 'alexnet': 'AlexNet', 'vgg11': 'VGG11', 'resnet18': 'ResNet18'}


def measure(data_flags: list[str], work: str) -> dict:
    experts, run = os.path.join(work, 'experts'), os.path.join(work, 'mct_ipc10')
    common = [PRESET, *data_flags, f'--expert_dir={experts}', '--progress=log']
    t0 = time.time()
    tools.log('experts')
    tools.run_command(['-m', 'mct_jax.expert', *common], os.path.join(work, 'expert.log'))
    expert_seconds = time.time() - t0
    tools.log('distillation')
    t0 = time.time()
    last = json.loads(tools.run_command(['-m', 'mct_jax.distill', *common, f'--out_dir={run}',
                                         *DISTILL], os.path.join(work, 'distill.log')))
    distill_seconds = time.time() - t0
    evaluations = []
    with open(os.path.join(run, 'metrics.jsonl')) as f:
        for line in f:
            rec = json.loads(line)
            if 'eval' in rec:
                evaluations.append({'iteration': rec['iteration'], 'test': rec['eval'],
                                    'validation': rec['val']})
    return {'preset': PRESET.split('=')[1], 'distill_flags': DISTILL,
            'expert_seconds': expert_seconds, 'distill_seconds': distill_seconds,
            'best_iteration': last['best_iteration'], 'selected_on': last['selected_on'],
            'lr': last['lr'], 'evaluations': evaluations}


def _pm(s: dict) -> str:
    return f"{s['mean']:.2f} +- {s['std']:.2f}"


def paragraphs(results: dict, cross: dict) -> list[str]:
    """The page's figures: its sentences and table rows that quote a number, in order."""
    e = {x['iteration']: x for x in results['evaluations']}
    best = e[results['best_iteration']]
    out = [f"5 width-32 experts of 15 epochs ({results['expert_seconds']:.0f} s)",
           f"MCT at ipc 10, N = 10, 200 iterations ({results['distill_seconds']:.0f} s)",
           '| iteration | validation (%) | test (%) |\n|---|---|---|']
    for it, x in e.items():
        name = '0 (real images)' if it == 0 else str(it)
        row = f"| {name} | {_pm(x['validation'])} | {_pm(x['test'])} |"
        if it == results['best_iteration']:
            row = f"| **{it} (chosen)** | **{_pm(x['validation'])}** | **{_pm(x['test'])}** |"
        out[-1] += '\n' + row
    out.append(f"`best.npz` is iteration {results['best_iteration']}, chosen on "
               f"{results['selected_on']} (`selected_on: {results['selected_on']}`); its test "
               f"accuracy, {_pm(best['test'])} %, was only reported.")
    c = cross['architectures']
    out.append(f"the set's learned lr ({c['convnet']['lr']:.3g})")
    table = ['| architecture | test (%) | validation (%) | seconds for 3 networks |',
             '|---|---|---|---|']
    for name, r in c.items():
        label = NAMES.get(name, name) + (' (width 32)' if name == 'convnet' else '')
        table.append(f"| {label} | {_pm(r['test'])} | {_pm(r['validation'])} | "
                     f"{r['seconds']:.0f} |")
    out.append('\n'.join(table))
    sc = cross['convnet_scores']
    out.append(f"random real images at ipc {sc['random']['ipc']}, a fresh draw per network, "
               f"{sc['random']['mean']:.2f} %; the full 5,000-image training split, "
               f"{sc['full']['epochs']} epochs, {sc['full']['mean']:.2f} %")
    out.append(f"**IOR {sc['scores']['IOR']:.2f}** points, **HLR {sc['scores']['HLR']:.2f}** "
               f"points, **LRS {sc['scores']['LRS']:.2f} %**")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data_dir', default=os.environ.get('MCT_CIFAR10_DIR', 'data/cifar10'))
    p.add_argument('--markdown', action='store_true', help='print the figures the page quotes')
    args = p.parse_args()
    if not args.markdown:
        flags = tools.cifar10_flags(args.data_dir)
        with tempfile.TemporaryDirectory() as work:
            results = measure(flags, work)
        with open(OUT, 'w') as f:
            json.dump(results, f, indent=1)
    with open(OUT) as f, open(CROSS) as g:
        print('\n\n'.join(paragraphs(json.load(f), json.load(g))))


if __name__ == '__main__':
    main()
