"""The quickstart's published figures, measured: runs ``experiments/quickstart.cfg`` and
writes ``experiments/results/quickstart.json``, from which README.md and docs/ quote.

    python experiments/quickstart_results.py            # about 3 min on a 2-core CPU
    python experiments/quickstart_results.py --lines    # the sentences the docs quote

It runs, in a scratch folder, the preset's two commands as the README gives them; the same
distillation on two (virtual) devices; and the random-real baseline at the same ipc,
network and data (``python -m mct_jax.evaluate --baseline=random``). It records the best
set (chosen on the validation split) and the last one with their test accuracy, the
real-image initialisation (the evaluation at iteration 0) and the wall time of each
command. ``tests/test_published.py`` checks that every quoted figure equals this file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, 'results', 'quickstart.json')
PRESET = '--flagfile=experiments/quickstart.cfg'


def _run(module: str, *args, devices: int = 1) -> tuple[str, float]:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    start = time.time()
    proc = subprocess.run([sys.executable, '-m', f'mct_jax.{module}', PRESET, *args,
                           '--progress=log', '--compilation_cache='], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f'{module} failed:\n{proc.stderr[-3000:]}')
    printed = proc.stdout.strip().splitlines()
    return (printed[-1] if printed else ''), time.time() - start


def _evaluations(run_dir: str) -> dict:
    """iteration -> the test summary of each evaluation in the run's metrics."""
    out = {}
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        for line in f:
            rec = json.loads(line)
            if 'eval' in rec:
                out[rec['iteration']] = rec['eval']
    return out


def _distill(work: str, name: str, devices: int) -> dict:
    run_dir = os.path.join(work, name)
    last, seconds = _run('distill', f'--expert_dir={work}/experts', f'--out_dir={run_dir}',
                         devices=devices)
    last = json.loads(last)
    evals = _evaluations(run_dir)
    final = max(evals)
    return {'devices': devices, 'seconds': seconds,
            'best': {'iteration': last['best_iteration'], 'selected_on': last['selected_on'],
                     'test': evals[last['best_iteration']]},
            'last': {'iteration': final, 'test': evals[final]},
            'initialisation': evals[0]}


def measure() -> dict:
    with tempfile.TemporaryDirectory() as work:
        _, expert_seconds = _run('expert', f'--expert_dir={work}/experts')
        one = _distill(work, 'one_device', 1)
        two = _distill(work, 'two_devices', 2)
        random, _ = _run('evaluate', '--baseline=random', '--ipc=1',
                         f'--expert_dir={work}/experts')
    random = json.loads(random)
    return {'preset': 'experiments/quickstart.cfg', 'expert_seconds': expert_seconds,
            'distill': one, 'distill_two_devices': two,
            'random_real': {k: random[k] for k in ('mean', 'std', 'all')}}


def lines(r: dict) -> dict:
    """The sentences README.md and docs/ quote, each formatted from the results."""
    one, two, rnd = r['distill'], r['distill_two_devices'], r['random_real']
    pm = lambda s: f"{s['mean']:.2f} +- {s['std']:.2f} %"
    best, last = one['best'], one['last']
    same = best['iteration'] == last['iteration']
    result = (f"best = last {pm(best['test'])} (iteration {best['iteration']})" if same else
              f"best {pm(best['test'])} (iteration {best['iteration']}), last "
              f"{pm(last['test'])}")
    two_best, two_last = two['best'], two['last']
    return {
        'readme': f"{best['test']['mean']:.2f} +- {best['test']['std']:.2f} % on the test set, "
                  f"chosen on validation (random real {rnd['mean']:.2f})",
        'reproduction': f"MCT: {result}; its real-image initialisation "
                        f"{pm(one['initialisation'])}; random real images (`python -m "
                        f"mct_jax.evaluate --baseline=random --ipc=1`) {pm(rnd)}; "
                        f"{r['expert_seconds'] + one['seconds']:.0f} s for experts "
                        f"({r['expert_seconds']:.0f} s) and distillation "
                        f"({one['seconds']:.0f} s)",
        'usage_devices': f"in the quickstart: best {pm(two_best['test'])} at iteration "
                         f"{two_best['iteration']} and last {pm(two_last['test'])}, against "
                         f"best {pm(best['test'])} at iteration {best['iteration']} and last "
                         f"{pm(last['test'])} on one device",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--lines', action='store_true', help='only print the quoted sentences')
    args = p.parse_args()
    if not args.lines:
        results = measure()
        with open(OUT, 'w') as f:
            json.dump(results, f, indent=1)
    with open(OUT) as f:
        for name, line in lines(json.load(f)).items():
            print(f'{name}: {line}')


if __name__ == '__main__':
    main()
