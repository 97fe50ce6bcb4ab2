"""Benchmark: expert training throughput and expert storage on disk (MCT vs full MTT).

    python benchmarks/bench_expert.py [--widths=32,64,128] [--epochs=50]

Throughput: steady-state images/s of the jitted expert SGD epoch (batch 256, DSA, step norms
accumulated), CIFAR-shaped 32x32x3 inputs, 10 classes, 5,120 images per epoch, median of
``--repeats`` epochs after a compiling one.

Storage: one expert of the reference ConvNet (width 128, 320,010 parameters) with
``--epochs`` K saved the way ``python -m mct_jax.expert`` saves it, as MCT (2 anchors +
(K+1) x L betas + step norms) and as the full trajectory (K+1 snapshots, MTT's format);
bytes on disk of each, their ratio, and the expected ratio 2/(K+1).

Prints a Markdown table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from mct_jax import checkpoint, expert, expert_store, models

HERE = os.path.dirname(os.path.abspath(__file__))


def throughput(width: int, repeats: int, n: int = 5120) -> dict:
    m = models.convnet((32, 32, 3), 10, width, 3)
    params = m.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (n, 32, 32, 3))
    y = jnp.arange(n) % 10
    epoch = expert.make_epoch_fn(m.apply, 0.01, 256)
    t0 = time.perf_counter()
    params, norms, _ = epoch(params, x, y, jax.random.key(2))
    jax.block_until_ready(norms)
    first = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        params, norms, _ = epoch(params, x, y, jax.random.key(3 + i))
        jax.block_until_ready(norms)
        times.append(time.perf_counter() - t0)
    return dict(width=width, images_per_second=n / statistics.median(times),
                first_epoch_seconds=first, epoch_seconds=times)


def storage(num_epochs: int) -> dict:
    m = models.convnet((32, 32, 3), 10, 128, 3)
    rng = np.random.default_rng(0)
    base = jax.tree.map(np.asarray, m.init(jax.random.key(0)))
    snaps = [jax.tree.map(lambda a: (a + 0.01 * t * rng.normal(size=a.shape)).astype(np.float32),
                          base) for t in range(num_epochs + 1)]
    norms = np.stack([[np.linalg.norm(a - b) for a, b in
                       zip(jax.tree.leaves(snaps[t]), jax.tree.leaves(snaps[t - 1]))]
                      for t in range(1, num_epochs + 1)]).astype(np.float32)
    run = expert_store.ExpertRun([snaps[0], snaps[-1]], (0, num_epochs), norms, snaps, [], [])
    with tempfile.TemporaryDirectory() as d:
        expert_store.save_expert(d + '/e', run, {})
        mct = checkpoint.folder_bytes(d + '/e/state')
        full = checkpoint.folder_bytes(d + '/e/full')
    n_params = models.num_params(base)
    return dict(num_params=n_params, epochs=num_epochs, mct_bytes=mct, full_bytes=full,
                ratio=mct / full, expected_ratio=2 / (num_epochs + 1),
                raw_model_bytes=4 * n_params)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--widths', default='32,64,128')
    p.add_argument('--epochs', type=int, default=50)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_expert.json'))
    a = p.parse_args()
    rows = [throughput(w, a.repeats) for w in map(int, a.widths.split(','))]
    st = storage(a.epochs)
    print('| width | images/s (batch 256, DSA) | first epoch incl. compile (s) |')
    print('|---|---|---|')
    for r in rows:
        print(f"| {r['width']} | {r['images_per_second']:.0f} | {r['first_epoch_seconds']:.1f} |")
    print()
    print(f"Storage per expert, ConvNet width 128 ({st['num_params']:,} parameters), K = "
          f"{st['epochs']}: MCT {st['mct_bytes'] / 1e6:.2f} MB, full trajectory "
          f"{st['full_bytes'] / 1e6:.1f} MB, ratio {st['ratio']:.4f} "
          f"(2/(K+1) = {st['expected_ratio']:.4f})")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, 'w') as f:
        json.dump(dict(throughput=rows, storage=st, cpus=os.cpu_count()), f, indent=1)


if __name__ == '__main__':
    main()
