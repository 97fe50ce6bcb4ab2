"""Benchmark: images per gradient pass (expert training) and per prediction chunk.

    python benchmarks/bench_passes.py            # prints a table, writes results/bench_passes.json

One training step of the expert (plain SGD, batch 256, DSA, raw uint8 images preprocessed
on the device, the ConvNet's hand-written gradient) is compiled for each pass size
(:func:`mct_jax.train.microbatched`; 0 is the whole batch in one pass, the reference's
arithmetic) and timed over a few batches; the compiler's temporaries
(``memory_analysis().temp_size_in_bytes``) are what a step needs beyond its inputs and
parameters. The same for prediction (:func:`mct_jax.train.predict_correct`) by chunk size.
Every variant of a row runs in this one process, back to back, so their ratios compare like
with like; the defaults of :data:`mct_jax.train.MICROBATCH_BY_BACKEND` and
:data:`mct_jax.train.PREDICT_BATCH_BY_BACKEND` come from this table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from mct_jax import expert, models, train
from mct_jax.data import preprocess

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, image size, depth, classes, pass sizes timed, pass sizes only compiled)
SHAPES = [
    ('CIFAR-10 (32x32, depth 3)', 32, 3, 10, (0, 128, 64, 32, 16, 8), ()),
    ('Tiny ImageNet (64x64, depth 4)', 64, 4, 200, (0, 64, 32, 16, 8), ()),
    ('ImageNet subset (128x128, depth 5)', 128, 5, 10, (32, 16), (0, 64)),
]
PREDICT_SIZES = (128, 64, 32, 16, 8)


def _prep():
    return preprocess.make(np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32), 255.0)


def _time(fn, repeats):
    jax.block_until_ready(fn())     # compiled and warm
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def step_row(size, depth, classes, timed, compiled_only, batches, repeats, width=128):
    model = models.convnet((size, size, 3), classes, width=width, depth=depth)
    params, prep = model.init(jax.random.key(0)), _prep()
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.integers(0, 256, (batches, 256, size, size, 3), np.uint8))
    ys = jnp.asarray(rng.integers(0, classes, (batches, 256)), jnp.int32)
    keys = jax.random.split(jax.random.key(1), batches)
    out = []
    for passes in timed + compiled_only:
        trainer = expert.EpochTrainer(model, 0.01, 256, microbatch=passes)
        carry = train.sgd_carry(params, trainer.tx)
        compiled = trainer._run.lower(carry, xs, ys, keys, prep).compile()
        r = {'microbatch': passes,
             'temp_mb': compiled.memory_analysis().temp_size_in_bytes / 2**20}
        if passes in timed:
            seconds = _time(lambda: compiled(carry, xs, ys, keys, prep), repeats)
            r['images_per_second'] = batches * 256 / seconds
        out.append(r)
        print(f'  passes of {passes or "all"}: {r}', flush=True)
    return out


def predict_row(images, repeats, width=128):
    model = models.convnet((32, 32, 3), 10, width=width, depth=3)
    params, prep = model.init(jax.random.key(0)), _prep()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (images, 32, 32, 3), np.uint8))
    y = jnp.asarray(rng.integers(0, 10, images), jnp.int32)
    out = []
    for chunk in PREDICT_SIZES:
        fn = jax.jit(lambda p, x, y, chunk=chunk: train.predict_correct(
            model.apply, p, x, y, batch_size=chunk, prep=prep))
        compiled = fn.lower(params, x, y).compile()
        seconds = _time(lambda: compiled(params, x, y), repeats)
        r = {'chunk': chunk, 'temp_mb': compiled.memory_analysis().temp_size_in_bytes / 2**20,
             'images_per_second': images / seconds}
        out.append(r)
        print(f'  chunks of {chunk}: {r}', flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batches', type=int, default=2, help='batches of 256 per timed call')
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_passes.json'))
    p.add_argument('--table', action='store_true', help='only print the table of --out')
    args = p.parse_args()
    if args.table:
        with open(args.out) as f:
            print(table(json.load(f)), end='')
        return
    results = {'machine': {'backend': jax.default_backend(), 'devices': str(jax.devices()[0]),
                           'cpus': os.cpu_count(), 'platform': platform.platform(),
                           'jax': jax.__version__},
               'steps': [], 'predict': None}
    for name, size, depth, classes, timed, compiled_only in SHAPES:
        print(name, flush=True)
        batches = args.batches if size <= 64 else 1
        results['steps'].append({'data': name, 'width': 128, 'batch': 256,
                                 'batches_timed': batches,
                                 'rows': step_row(size, depth, classes, timed, compiled_only,
                                                  batches, args.repeats)})
    print('prediction, CIFAR-10 width 128', flush=True)
    results['predict'] = {'data': 'CIFAR-10 (32x32, depth 3), 2,048 images', 'width': 128,
                          'rows': predict_row(2048, args.repeats)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=1)
    print(table(results), end='')


def table(results) -> str:
    """The Markdown tables of a results JSON: each variant against the whole batch (or
    chunks of 128) of its row."""
    lines = ['| expert step (batch 256, width 128) | images per pass | temporaries MB | '
             'images/s | speed vs one pass |', '|---|---|---|---|---|']
    for s in results['steps']:
        base = next((r.get('images_per_second') for r in s['rows'] if r['microbatch'] == 0),
                    None)
        for r in s['rows']:
            ips = r.get('images_per_second')
            ratio = f'{ips / base:.2f}x' if ips and base else '-'
            lines.append(f"| {s['data']} | {r['microbatch'] or 'all 256'} | "
                         f"{r['temp_mb']:.0f} | {f'{ips:.0f}' if ips else 'not timed'} | "
                         f"{ratio} |")
    p = results['predict']
    base = next(r['images_per_second'] for r in p['rows'] if r['chunk'] == train.PREDICT_BATCH)
    lines += ['', f"| prediction: {p['data']} | images per chunk | temporaries MB | images/s | "
              'speed vs chunks of 128 |', '|---|---|---|---|---|']
    for r in p['rows']:
        lines.append(f"| | {r['chunk']} | {r['temp_mb']:.0f} | {r['images_per_second']:.0f} | "
                     f"{r['images_per_second'] / base:.2f}x |")
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main()
