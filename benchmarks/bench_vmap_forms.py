"""Benchmark: could a vmapped form of the evaluation networks' training beat running them
one after another?

    python benchmarks/bench_vmap_forms.py [--widths=32] [--ipcs=1,10] [--steps=50]

``benchmarks/bench_eval.py`` measures the evaluator as built (vmapped: 0.30-0.38x of one
after another on the 2-core CPU). This one isolates the training loop of five networks (SGD
with momentum and weight decay, DSA on every step, full synthetic batch) and times, in one
run, alternately:

* ``map``: ``lax.map`` over the networks, the hand-written gradient (the evaluator's
  default form);
* ``vmap``: ``vmap`` over the networks, the hand-written gradient (native convolutions:
  grouped convolutions under vmap), each network its own DSA draw;
* ``vmap_shared_dsa``: the same, but one DSA draw (family and parameters) per step shared by
  all networks, so ``lax.switch`` stays a single branch;
* ``vmap_im2col``: autodiff's gradient of the im2col ConvNet (batched matrix products under
  vmap instead of grouped convolutions), own DSA draws;
* ``vmap_im2col_shared_dsa``: both changes.

CIFAR-shaped 32x32x3 inputs, 10 classes. Seconds are the best of ``--repeats``; the table
gives each form's speed relative to ``map``. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import optax

from mct_jax import augment, models, train

HERE = os.path.dirname(os.path.abspath(__file__))
FORMS = ('map', 'vmap', 'vmap_shared_dsa', 'vmap_im2col', 'vmap_im2col_shared_dsa')


def build(form: str, model, x, y, steps: int, nets: int):
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
    grad_fn = (train.autodiff_loss_grad(model.apply) if 'im2col' in form
               else model.loss_grad)

    def train_one(key, aug_keys):
        params = model.init(key)

        def step(carry, k):
            p, s = carry
            g, _, _ = grad_fn(p, augment.dsa(k, x), y)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), aug_keys)
        return params

    keys = jax.random.split(jax.random.key(1), nets)
    own = jax.vmap(lambda k: jax.random.split(k, steps))(keys)   # [nets, steps]
    shared = jax.random.split(jax.random.key(2), steps)          # [steps]
    if form == 'map':
        return jax.jit(lambda: jax.lax.map(lambda a: train_one(*a), (keys, own)))
    if 'shared' in form:
        return jax.jit(lambda: jax.vmap(train_one, in_axes=(0, None))(keys, shared))
    return jax.jit(lambda: jax.vmap(train_one)(keys, own))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--widths', default='32')
    p.add_argument('--ipcs', default='1,10')
    p.add_argument('--steps', type=int, default=50)
    p.add_argument('--nets', type=int, default=5)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_vmap_forms.json'))
    a = p.parse_args()
    rows = []
    for width in [int(w) for w in a.widths.split(',')]:
        for ipc in [int(i) for i in a.ipcs.split(',')]:
            model = models.convnet((32, 32, 3), 10, width, 3)
            x = jax.random.normal(jax.random.key(0), (10 * ipc, 32, 32, 3))
            y = jnp.arange(10 * ipc) % 10
            fns = {f: build(f, model, x, y, a.steps, a.nets) for f in FORMS}
            for f in fns.values():
                jax.block_until_ready(f())   # compile
            times = {f: [] for f in FORMS}
            for _ in range(a.repeats):
                for f, fn in fns.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(fn())
                    times[f].append(time.perf_counter() - t0)
            row = dict(width=width, ipc=ipc, steps=a.steps, nets=a.nets,
                       seconds={f: min(t) for f, t in times.items()})
            rows.append(row)
            print(f'width {width} ipc {ipc}: ' + ', '.join(
                f'{f} {s:.2f} s' for f, s in row['seconds'].items()), flush=True)
    print('\n| width | ipc | ' + ' | '.join(f'{f} (s, speed vs map)' for f in FORMS) + ' |')
    print('|---|---|' + '---|' * len(FORMS))
    for r in rows:
        base = r['seconds']['map']
        print(f"| {r['width']} | {r['ipc']} | " + ' | '.join(
            f"{s:.2f} ({base / s:.2f}x)" for s in r['seconds'].values()) + ' |')
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, 'w') as f:
        json.dump(dict(devices=str(jax.devices()), rows=rows), f, indent=1)


if __name__ == '__main__':
    main()
