"""Benchmark: the evaluation protocol's networks trained together (vmap) or one after another.

    python benchmarks/bench_eval.py [--widths=32,128] [--ipcs=1,10] [--epochs=100]

Three forms of five networks, all built on ``mct_jax.evaluate.make_network_trainer``: in
one vmapped program, one after another in one program (``lax.map``), and a one-network
program called five times (what ``make_evaluator`` does). CIFAR-shaped
32x32x3 synthetic sets, 10 classes, 1,000 test images, DSA on. Seconds are the best of
``--repeats`` after compiling; both variants are timed alternately in one run. Prints a
table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp

from mct_jax import evaluate, models

HERE = os.path.dirname(os.path.abspath(__file__))


def bench(width: int, ipc: int, epochs: int, repeats: int, nets: int = 5) -> dict:
    m = models.convnet((32, 32, 3), 10, width, 3)
    x = jax.random.normal(jax.random.key(0), (10 * ipc, 32, 32, 3))
    y = jnp.arange(10 * ipc) % 10
    xt = jax.random.normal(jax.random.key(1), (1000, 32, 32, 3))
    yt = jnp.arange(1000) % 10
    # The library trains one network per call; the two other forms are built here from its
    # per-network program: all networks in one program, batched (vmap) or in turn (lax.map).
    one_net = evaluate.make_network_trainer(m, epochs)

    def all_nets(batch):
        def run(key, x, y, lr, xt, yt):
            keys = evaluate.network_keys(key, nets)
            return batch(lambda k: one_net(k, x, y, lr, ((xt, yt),)), keys)
        return jax.jit(run)
    together = all_nets(lambda f, keys: jax.vmap(f)(keys))
    mapped = all_nets(jax.lax.map)
    alone = evaluate.make_evaluator(m, 1, epochs)
    lr = jnp.float32(0.01)

    def run_together():
        return together(jax.random.key(2), x, y, lr, xt, yt).block_until_ready()

    def run_mapped():
        return mapped(jax.random.key(2), x, y, lr, xt, yt).block_until_ready()

    def run_sequential():
        return [alone(jax.random.key(3 + i), x, y, lr, ((xt, yt),)).block_until_ready()
                for i in range(nets)]

    variants = {'vmapped_seconds': run_together, 'mapped_seconds': run_mapped,
                'sequential_seconds': run_sequential}
    for f in variants.values():
        f()  # compile
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    out = dict(width=width, ipc=ipc, epochs=epochs, nets=nets,
               **{k: min(v) for k, v in times.items()})
    out['vmap_speedup'] = out['sequential_seconds'] / out['vmapped_seconds']
    out['map_speedup'] = out['sequential_seconds'] / out['mapped_seconds']
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--widths', default='32,128')
    p.add_argument('--ipcs', default='1,10')
    p.add_argument('--epochs', type=int, default=100)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_eval.json'))
    a = p.parse_args()
    rows = []
    print('| width | ipc | epochs | vmapped (s) | lax.map (s) | 5 separate calls (s) | '
          'vmap speed-up | lax.map speed-up |')
    print('|---|---|---|---|---|---|---|---|')
    for w in map(int, a.widths.split(',')):
        for ipc in map(int, a.ipcs.split(',')):
            r = bench(w, ipc, a.epochs, a.repeats)
            rows.append(r)
            print(f"| {w} | {ipc} | {a.epochs} | {r['vmapped_seconds']:.2f} | "
                  f"{r['mapped_seconds']:.2f} | {r['sequential_seconds']:.2f} | "
                  f"{r['vmap_speedup']:.2f} | {r['map_speedup']:.2f} |", flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, 'w') as f:
        json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
