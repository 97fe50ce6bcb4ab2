"""Benchmark: which convolution should the evaluation architectures run on this backend?

    python benchmarks/bench_conv.py          # prints a table, writes results/bench_conv.json
    python benchmarks/bench_conv.py --table  # the table of a results file

:func:`mct_jax.models.layers.convolve` has two forms with the same values: ``lax``
(``lax.conv_general_dilated``) and ``im2col`` (windows side by side, one matrix product).
For each architecture of ``--networks`` this times, in one process and taking turns, the two
things evaluation does with a network: training steps (SGD with momentum and weight decay,
forward and gradient, on a batch of 100 CIFAR-shaped images, the size of a 10-image-per-class
set) and inference (forward on 500 images). Seconds are the best of ``--repeats`` calls of
``--steps`` jitted steps. The table gives im2col's time over lax's (below 1: im2col faster);
:data:`mct_jax.models.layers.CONV_FORM_BY_BACKEND` takes, per backend, the form with the lower
total time over the architectures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import optax

from mct_jax import models, train

HERE = os.path.dirname(os.path.abspath(__file__))
NETWORKS = ('convnet_bn', 'lenet', 'alexnet', 'vgg11')
FORMS = ('lax', 'im2col')


def programs(name: str, form: str, steps: int, batch: int, test_batch: int):
    """(train, predict): jitted functions running ``steps`` training steps, and a forward
    pass over ``test_batch`` images, of ``name`` with the convolution ``form``."""
    model = models.get(name, (32, 32, 3), 10, conv=form)
    x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
    y = jnp.arange(batch) % 10
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
    grad_fn = train.autodiff_loss_grad(model.apply)

    def train_steps(key, x, y):
        params = model.init(key)

        def step(carry, _):
            p, s = carry
            g, _, _ = grad_fn(p, x, y)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return params

    # Images are arguments, not constants the compiler could fold the im2col of.
    test = jax.random.normal(jax.random.key(1), (test_batch, 32, 32, 3))
    params = jax.jit(model.init)(jax.random.key(2))
    run, predict = jax.jit(train_steps), jax.jit(model.apply)
    return (lambda: run(jax.random.key(3), x, y)), (lambda: predict(params, test))


def measure(steps: int, repeats: int, batch: int = 100, test_batch: int = 500,
            networks=NETWORKS) -> list[dict]:
    """One row per network: the best seconds of each (kind, form)."""
    rows = []
    for name in networks:
        fns = {(form, kind): fn for form in FORMS
               for kind, fn in zip(('train', 'predict'),
                                   programs(name, form, steps, batch, test_batch))}
        for fn in fns.values():
            jax.block_until_ready(fn())   # compile
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                times[k].append(time.perf_counter() - t0)
        row = {'network': name, 'batch': batch, 'steps': steps, 'test_batch': test_batch,
               'seconds': {f'{kind}_{form}': min(times[(form, kind)])
                           for form in FORMS for kind in ('train', 'predict')}}
        rows.append(row)
        print(name, ', '.join(f'{k} {v:.3f} s' for k, v in row['seconds'].items()), flush=True)
    return rows


def choice(results) -> str:
    """The form with the lower total time (training and inference) over the networks."""
    total = {f: sum(r['seconds'][f'{kind}_{f}'] for r in results['rows']
                    for kind in ('train', 'predict')) for f in FORMS}
    return min(total, key=total.get)


def table(results) -> str:
    """The Markdown table of a results JSON."""
    r0 = results['rows'][0]
    lines = [f"| {results['machine']['backend']}: network | train, {r0['steps']} step(s) of "
             f"{r0['batch']} images: lax (s) | im2col (s) | im2col / lax | predict "
             f"{r0['test_batch']} images: lax (s) | im2col (s) | im2col / lax |",
             '|---|---|---|---|---|---|---|']
    for r in results['rows']:
        s = r['seconds']
        lines.append(f"| {r['network']} | {s['train_lax']:.3f} | {s['train_im2col']:.3f} | "
                     f"{s['train_im2col'] / s['train_lax']:.2f} | {s['predict_lax']:.3f} | "
                     f"{s['predict_im2col']:.3f} | {s['predict_im2col'] / s['predict_lax']:.2f} |")
    lines.append(f"| total | | | | | | faster: {choice(results)} |")
    return '\n'.join(lines) + '\n'


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=1)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--networks', default=','.join(NETWORKS),
                   help='architectures to time (models.ARCHITECTURES)')
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_conv.json'))
    p.add_argument('--table', action='store_true', help='only print the table of --out')
    args = p.parse_args()
    if args.table:
        with open(args.out) as f:
            print(table(json.load(f)), end='')
        return
    results = {'machine': {'backend': jax.default_backend(), 'devices': str(jax.devices()[0]),
                           'cpus': os.cpu_count(), 'platform': platform.platform(),
                           'jax': jax.__version__},
               'rows': measure(args.steps, args.repeats, networks=args.networks.split(','))}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=1)
    print(table(results), end='')


if __name__ == '__main__':
    main()
