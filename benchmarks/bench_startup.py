"""Benchmark: start-up time of a distillation command, cold and warm compilation cache.

    python benchmarks/bench_startup.py [--flagfile=experiments/quickstart.cfg]

Runs ``python -m mct_jax.distill`` with the given preset for a single iteration into a
fresh output folder three times: with the persistent compilation cache disabled, with an
empty cache (cold: compiles and fills it), and again with that cache (warm). For each it
reports the seconds from launching the process to the first finished distillation
iteration (its log line), which includes importing JAX, loading data and experts, and the
evaluation at iteration 0. Experts must exist (run ``python -m mct_jax.expert`` with the
same preset first). Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def time_to_first_iteration(flagfile: str, out_dir: str, cache: str) -> dict:
    cmd = [sys.executable, '-m', 'mct_jax.distill', f'--flagfile={flagfile}',
           f'--out_dir={out_dir}', '--iterations=1', f'--compilation_cache={cache}',
           '--progress=log']
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    first = None
    for line in proc.stderr:
        if first is None and 'distill 1/1' in line:   # the progress line of iteration 1
            first = time.perf_counter() - start
    proc.wait()
    total = time.perf_counter() - start
    if proc.returncode or first is None:
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {proc.returncode})')
    return dict(first_iteration_seconds=first, total_seconds=total)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--flagfile', default='experiments/quickstart.cfg')
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_startup.json'))
    a = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, 'cache')
        for name, cache_dir in (('no cache', ''), ('cold cache', cache), ('warm cache', cache)):
            out = os.path.join(tmp, 'run')
            shutil.rmtree(out, ignore_errors=True)
            rows[name] = time_to_first_iteration(a.flagfile, out, cache_dir)
            print(f"{name}: first iteration after {rows[name]['first_iteration_seconds']:.1f} s",
                  flush=True)
    print('\n| cache | launch to first iteration (s) | whole command (s) |\n|---|---|---|')
    for name, r in rows.items():
        print(f"| {name} | {r['first_iteration_seconds']:.1f} | {r['total_seconds']:.1f} |")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, 'w') as f:
        json.dump(dict(flagfile=a.flagfile, rows=rows), f, indent=1)


if __name__ == '__main__':
    main()
