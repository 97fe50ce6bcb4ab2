"""Benchmark: one distillation outer iteration, ours (JAX) against the PyTorch reference style.

    python benchmarks/bench_distill.py                      # the full grid
    python benchmarks/bench_distill.py --widths=32 --steps=10,20 --ipcs=10

For each (width, N, ipc) of the grid it times, side by side in one run and close together
in time, one outer iteration (N student steps, the exact meta-gradient, the update) of:
ours with the default ``--meta_grad=forward`` (storing each step's residuals within the
default ``--residual_budget_gb``) and with ``--remat`` (recomputing them), with
``--meta_grad=reverse`` without and with ``--remat``, and the PyTorch version of ``torch_reference.py`` (flat
parameters, ``create_graph=True``, as the reference MTT code). Every measurement runs in
its own child process (so peak memory is that configuration's own) on the same inputs:
CIFAR-shaped 32x32x3 images, 10 classes, all ``10 * ipc`` synthetic images in every step,
no augmentation on either side (so both compute exactly the same thing; the parity test
``tests/test_torch_parity.py`` checks they do).

Reported per configuration: seconds per iteration (median of at least ``--repeats``
iterations, and of as many as fill ``--min_time``, after ``--warmup`` iterations: PyTorch's
first iterations after the first are still slower, by up to 2x, while its allocator
settles),
compile time, XLA's FLOP count of the meta-gradient and the achieved GFLOP/s against the
machine's matrix-multiply rate measured in the same run, peak resident memory of the child
(MB) and XLA's own buffer estimate, and our time over PyTorch's. Configurations whose
predicted memory exceeds ``--max_gb`` are skipped and marked so. Results go to a Markdown
table on stdout and to JSON (``--out``).

``--rounds=R`` runs each configuration's children R times, in turn (ours, then PyTorch,
then ours again...), because on a shared machine one side's speed drifts from minute to
minute: the ratio is then the median of the R ratios of the same round, and the table
shows their range (seconds: the median over the rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _peak_rss_mb() -> float:
    from mct_jax import host
    return host.peak_resident_mb()


def _inputs(width, ipc, seed=0):
    import jax
    from mct_jax import models
    m = models.convnet((32, 32, 3), 10, width, 3)
    start = m.init(jax.random.key(seed))
    target = jax.tree.map(lambda a, b: a + 0.1 * b, start, m.init(jax.random.key(seed + 1)))
    images = jax.random.normal(jax.random.key(seed + 2), (10 * ipc, 32, 32, 3))
    labels = jax.numpy.arange(10 * ipc) % 10
    return m, start, target, images, labels


def iteration_flops(m, start, target, images, labels, steps):
    """FLOPs of one exact meta-gradient (no recomputation) for N steps.

    XLA's cost analysis counts a loop body once, so count fully unrolled rollouts of 1 and 2
    steps and extrapolate: every step costs the same.
    """
    import jax
    import jax.numpy as jnp
    from mct_jax import rollout
    # The reverse method through autodiff of apply, one student step per rollout call:
    # chaining n one-step rollouts unrolls n steps from public pieces.
    student = m._replace(loss_grad=None, stored_hvp=None)
    one_step = rollout.RolloutOptions(1, images.shape[0], use_dsa=False, method='reverse')

    def loss(syn, k, n):
        theta = start
        for i in range(n):
            theta = rollout.rollout(student, theta, syn, labels, jax.random.fold_in(k, i),
                                    one_step)
        return rollout.matching_loss(theta, start, target)

    def count(n):
        f = jax.jit(lambda syn, k: jax.grad(loss)(syn, k, n))
        syn = {'images': images, 'lr': jnp.float32(0.01)}
        cost = f.lower(syn, jax.random.key(0)).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get('flops', float('nan')))
    f1, f2 = count(1), count(2)
    return f1 + (steps - 1) * (f2 - f1)


VARIANTS = {  # name: (RolloutOptions.method, remat, hand-written student gradient)
    'forward': ('forward', False, True),        # the default (--meta_grad=forward)
    'forward_remat': ('forward', True, True),   # --meta_grad=forward --remat
    'reverse': ('reverse', False, False),       # --meta_grad=reverse
    'reverse_remat': ('reverse', True, False),  # --meta_grad=reverse --remat
    # the default on one XLA CPU device per core (--cpu_devices), through mct_jax.parallel
    # as distill runs it: each student step's minibatch split across them
    'forward_devices': ('forward', False, True),
}
RESIDUAL_BUDGET = 4e9   # the default --residual_budget_gb


def child_jax(width, steps, ipc, variant, repeats, max_gb, count_flops=False, warmup=2,
              min_time=0.0):
    import jax
    import jax.numpy as jnp
    from mct_jax import rollout
    m, start, target, images, labels = _inputs(width, ipc)
    lr = jnp.float32(0.01)
    key = jax.random.key(0)
    method, remat, hand = VARIANTS[variant]
    if variant == 'forward_devices':
        return _child_devices(m, start, target, images, labels, lr, key, steps, repeats,
                              warmup, min_time)
    student = m if hand else m._replace(loss_grad=None, stored_hvp=None)
    options = rollout.RolloutOptions(steps, images.shape[0], False, method, remat,
                                     RESIDUAL_BUDGET)
    grad_fn = jax.jit(lambda syn, k: jax.value_and_grad(rollout.meta_loss)(
        syn, labels, start, target, k, student, options))
    t0 = time.perf_counter()
    compiled = grad_fn.lower({'images': images, 'lr': lr}, key).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_bytes = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    out = dict(compile_s=compile_s, xla_gb=xla_bytes / 1e9)
    if count_flops:
        out['flops'] = iteration_flops(m, start, target, images, labels, steps)
    if xla_bytes > max_gb * 1e9:
        return dict(out, skipped=f'predicted {xla_bytes / 1e9:.1f} GB > --max_gb={max_gb}')
    if not repeats:
        return out

    def grads(syn, i):
        return compiled(syn, jax.random.fold_in(key, i))

    # the first iteration also compiles the update
    return dict(out, **_timed(_iteration(grads, images, lr), repeats, warmup, min_time))


def _iteration(grads, images, lr):
    """``iteration(i)``: one outer iteration, the meta-gradient
    ``grads(syn, i) -> (loss, grads)`` and distill's update of the synthetic set (SGD with
    momentum), carried from call to call."""
    import jax
    from mct_jax import distill
    tx = distill.make_optimizer(100.0, 1e-5)
    update = distill.make_update(tx)
    syn = {'images': images, 'lr': lr}
    state = [syn, tx.init(syn)]

    def iteration(i):
        syn, opt = state
        loss, g = grads(syn, i)
        syn, opt, _ = update(syn, opt, g, loss)
        state[:] = jax.block_until_ready((syn, opt))
    return iteration


def _child_devices(m, start, target, images, labels, lr, key, steps, repeats, warmup,
                   min_time):
    """The forward variant through :func:`mct_jax.parallel.make_meta_grad` on all devices."""
    import jax
    from mct_jax import parallel
    from mct_jax import rollout
    meta_grad = parallel.make_meta_grad(
        m, rollout.RolloutOptions(steps, images.shape[0], False,
                                  residual_budget=RESIDUAL_BUDGET))
    one = lambda tree: jax.tree.map(lambda a: a[None], tree)   # S = 1 sample
    iteration = _iteration(lambda syn, i: meta_grad(
        syn, labels, one(start), one(target), one(jax.random.fold_in(key, i))), images, lr)

    t0 = time.perf_counter()
    iteration(0)   # compiles (the other variants compile before their warm-ups)
    compile_s = time.perf_counter() - t0
    return dict(_timed(lambda i: iteration(i + 1), repeats, warmup, min_time),
                compile_s=compile_s, devices=jax.device_count())


def _timed(iteration, repeats, warmup, min_time):
    """Runs ``iteration(i)`` for ``warmup`` untimed and then at least ``repeats`` timed
    iterations filling ``min_time`` seconds; their median, fastest, all, and peak memory."""
    for i in range(warmup):
        iteration(i)
    times = []
    while len(times) < repeats or sum(times) < min_time:
        t0 = time.perf_counter()
        iteration(warmup + len(times))
        times.append(time.perf_counter() - t0)
    return dict(seconds=statistics.median(times), min_seconds=min(times), all_seconds=times,
                peak_rss_mb=_peak_rss_mb())


def child_torch(width, steps, ipc, repeats, threads, warmup=2, min_time=0.0):
    import numpy as np
    import torch
    from benchmarks import torch_reference
    torch.set_num_threads(threads)
    m, start, target, images, labels = _inputs(width, ipc)
    net = torch_reference.FlatConvNet(3, width, 3, 10, 32)
    t_start, t_img = torch_reference.from_jax(start, images)
    t_target, _ = torch_reference.from_jax(target, images)
    t_labels = torch.tensor(np.asarray(labels))
    t_img.requires_grad_(True)
    t_lr = torch.tensor(0.01, requires_grad=True)
    opt = torch.optim.SGD([t_img], lr=100.0, momentum=0.5)
    opt_lr = torch.optim.SGD([t_lr], lr=1e-5, momentum=0.5)

    def iteration(_):
        _, gi, gl = torch_reference.meta_loss_and_grads(net, t_img, t_labels, t_lr, t_start,
                                                        t_target, steps)
        t_img.grad, t_lr.grad = gi, gl
        opt.step()
        opt_lr.step()

    return dict(_timed(iteration, repeats, warmup, min_time), threads=torch.get_num_threads())


def child_matmul():
    """The machine's float32 matrix-multiply rate through XLA (GFLOP/s)."""
    import jax
    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float('inf')
    for _ in range(5):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return dict(gflops=2 * n ** 3 / best / 1e9)


def _spawn(args, timeout, devices=None):
    cmd = [sys.executable, os.path.abspath(__file__), '--child', json.dumps(args)]
    env = dict(os.environ)
    # the children import mct_jax and benchmarks from this checkout, installed or not
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO, env.get('PYTHONPATH')]))
    if devices:  # XLA's CPU client: this many devices (set before JAX starts)
        env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                            f' --xla_force_host_platform_device_count={devices}').strip()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env=env)
    except subprocess.TimeoutExpired:
        return dict(skipped=f'timed out after {timeout} s')
    if proc.returncode:
        return dict(skipped=f'failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--widths', default='32,64,128')
    p.add_argument('--steps', default='10,20,40')
    p.add_argument('--ipcs', default='1,10')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--warmup', type=int, default=2, help='untimed iterations before the timed ones')
    p.add_argument('--rounds', type=int, default=1,
                   help='run each configuration this many times, ours and PyTorch in turn; '
                        'ratios: the median of the per-round ratios')
    p.add_argument('--min_time', type=float, default=3.0,
                   help='time more than --repeats iterations until they take this many seconds '
                        '(short iterations are noisier)')
    p.add_argument('--cpu_devices', type=int, default=os.cpu_count(),
                   help='XLA CPU devices for the forward_devices variant (one per core)')
    p.add_argument('--variants', default=','.join(VARIANTS),
                   help='which of ours to run (forward is always run: it is what is compared)')
    p.add_argument('--max_gb', type=float, default=12.0)
    p.add_argument('--timeout', type=int, default=1800)
    p.add_argument('--no_torch', action='store_true')
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_distill.json'))
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        c = json.loads(a.child)
        kind = c.pop('kind')
        fn = {'jax': child_jax, 'torch': child_torch, 'matmul': child_matmul}[kind]
        print(json.dumps(fn(**c)))
        return

    chosen = set(a.variants.split(','))
    unknown = chosen - set(VARIANTS)
    if unknown:
        p.error(f'unknown --variants {sorted(unknown)}; choose from {list(VARIANTS)}')
    if a.rounds < 1:
        p.error(f'--rounds={a.rounds}: each configuration needs at least one round')
    threads = os.cpu_count()
    matmul = _spawn({'kind': 'matmul'}, 600)
    rows = []
    for width in map(int, a.widths.split(',')):
        for steps in map(int, a.steps.split(',')):
            for ipc in map(int, a.ipcs.split(',')):
                row = dict(width=width, N=steps, ipc=ipc)
                ours = [v for v in VARIANTS if v == 'forward' or v in chosen]
                for variant in VARIANTS:
                    if variant not in ours:
                        row[variant] = dict(skipped='not in --variants')
                if 'reverse' not in ours:   # still compiled: PyTorch's memory follows it
                    row['reverse'] = {**_spawn(dict(kind='jax', width=width, steps=steps,
                                                    ipc=ipc, variant='reverse', repeats=0,
                                                    max_gb=a.max_gb), a.timeout),
                                      'skipped': 'not in --variants'}
                runs = {k: [] for k in ours + ['torch']}   # child results, round by round
                torch_skip = None
                for rnd in range(a.rounds):
                    for variant in ours:
                        runs[variant].append(_spawn(
                            dict(kind='jax', width=width, steps=steps, ipc=ipc,
                                 variant=variant, repeats=a.repeats, max_gb=a.max_gb,
                                 warmup=a.warmup, min_time=a.min_time,
                                 count_flops=variant == 'forward' and rnd == 0), a.timeout,
                            devices=a.cpu_devices if variant == 'forward_devices' else None))
                    if torch_skip is None:
                        # PyTorch keeps the graph of all N steps, measured at about 0.6x of
                        # our reverse no-remat buffers; skip what would not fit.
                        reverse = runs['reverse'][0] if 'reverse' in runs else row['reverse']
                        predicted = 0.6 * reverse.get('xla_gb', 0)
                        torch_skip = ('--no_torch' if a.no_torch else
                                      f'graph of all N steps predicted ~{predicted:.0f} GB > '
                                      f'--max_gb={a.max_gb}' if predicted > a.max_gb else '')
                    runs['torch'].append(dict(skipped=torch_skip) if torch_skip else _spawn(
                        dict(kind='torch', width=width, steps=steps, ipc=ipc,
                             repeats=a.repeats, threads=threads, warmup=a.warmup,
                             min_time=a.min_time), a.timeout))
                for side, results in runs.items():
                    row[side] = combine_rounds(results)
                for variant in ours:
                    ratios = round_ratios(runs[variant], runs['torch'])
                    if ratios:
                        row[f'{variant}_over_torch'] = statistics.median(ratios)
                        if len(ratios) > 1:
                            row[f'{variant}_over_torch_rounds'] = ratios
                flops = row['forward'].get('flops')
                if flops and 'seconds' in row['forward']:
                    row['gflops_achieved'] = flops / row['forward']['seconds'] / 1e9
                rows.append(row)
                print(_fmt_row(row), flush=True)
                _save(a.out, matmul, rows, vars(a))  # after every row: a long grid keeps what it has
    print()
    print(f"matrix multiply (XLA, float32, 2048^2): {matmul.get('gflops', float('nan')):.0f} GFLOP/s")
    print(table(rows))


def combine_rounds(results):
    """One side's child results over the rounds, as one entry.

    With one round, that round's result. Otherwise the first timed round's fields (compile
    time, FLOPs, memory estimates), with ``seconds`` and ``min_seconds`` the median and the
    fastest over the rounds, ``peak_rss_mb`` the largest, and ``rounds`` each round's
    seconds; if a round failed, the entry says so and keeps the others' times.
    """
    timed = [r for r in results if 'seconds' in r]
    if len(results) == 1 or not timed:
        return results[0]
    out = dict(timed[0])
    out.update(seconds=statistics.median(r['seconds'] for r in timed),
               min_seconds=min(r['min_seconds'] for r in timed),
               peak_rss_mb=max(r['peak_rss_mb'] for r in timed),
               rounds=[r['seconds'] for r in timed])
    out.pop('all_seconds', None)
    failed = [r['skipped'] for r in results if 'seconds' not in r]
    if failed:
        out['failed_rounds'] = failed
    return out


def round_ratios(ours, theirs):
    """Our seconds over PyTorch's, for each round in which both sides were timed."""
    return [a['seconds'] / b['seconds'] for a, b in zip(ours, theirs)
            if 'seconds' in a and 'seconds' in b]


def _save(path, matmul, rows, args):
    result = dict(machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                               matmul_gflops=matmul.get('gflops')),
                  note='no augmentation on either side; seconds = median of repeats after '
                       'the warm-up iterations (min_seconds: the fastest); FLOPs: XLA cost analysis of the exact meta-gradient '
                       '(reverse method, unrolled 1- and 2-step rollouts, extrapolated to N; '
                       'no recomputation); GFLOP/s: those FLOPs over the forward method time. '
                       'Variants: forward = --meta_grad=forward (default, hand-written student '
                       'gradient, residuals stored within the default --residual_budget_gb=4), '
                       'forward_remat = with --remat (each step recomputed), reverse = '
                       '--meta_grad=reverse, reverse_remat = with --remat',
                  args={k: v for k, v in args.items() if k not in ('child', 'out')}, rows=rows)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)


def _s(d, key='seconds', fmt='{:.2f}'):
    if 'skipped' in d:
        return '-' if d['skipped'] == 'not in --variants' else 'skip'
    return fmt.format(d[key]) if key in d else '-'


def _fmt_row(r):
    timed = ', '.join(f"{NAMES[k]} {_s(r[k])} s" for k in NAMES
                      if k in r and r[k].get('skipped') != 'not in --variants')
    return f"width {r['width']} N {r['N']} ipc {r['ipc']}: {timed}"


NAMES = {'forward': 'forward', 'forward_remat': 'forward, remat', 'reverse': 'reverse',
         'reverse_remat': 'reverse, remat', 'forward_devices': 'forward, one device per core',
         'torch': 'PyTorch'}


def table(rows) -> str:
    """Markdown table of a result list (only the variants that were timed)."""
    timed = [k for k in NAMES if any('seconds' in r.get(k, {}) for r in rows)]
    ours = [k for k in timed if k != 'torch']
    rounds = any(k.endswith('_rounds') for r in rows for k in r)
    head = (['width', 'N', 'ipc'] + [f'{NAMES[k]} (s)' for k in timed]
            + [f'{NAMES[k]} / PyTorch' + (' (range over rounds)' if rounds else '')
               for k in ours if 'torch' in timed]
            + (['forward / PyTorch, fastest of each'] if 'torch' in timed else [])
            + ['GFLOP', 'GFLOP/s', 'peak MB: ' + ' / '.join(NAMES[k] for k in timed)])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    def ratio(r, k):
        if k not in r:
            return '-'
        spread = r.get(f'{k}_rounds')
        return (f"{r[k]:.2f} ({min(spread):.2f}-{max(spread):.2f})" if spread
                else f"{r[k]:.2f}")
    for r in rows:
        flops = r['forward'].get('flops')
        cells = [str(r['width']), str(r['N']), str(r['ipc'])]
        cells += [_s(r.get(k, {})) for k in timed]
        if 'torch' in timed:
            cells += [ratio(r, f'{k}_over_torch') for k in ours]
            fastest = ('min_seconds' in r['forward'] and 'min_seconds' in r['torch'])
            cells.append(f"{r['forward']['min_seconds'] / r['torch']['min_seconds']:.2f}"
                         if fastest else '-')
        cells += [f"{flops / 1e9:.0f}" if flops else '-',
                  f"{r['gflops_achieved']:.0f}" if 'gflops_achieved' in r else '-',
                  ' / '.join(_s(r.get(k, {}), 'peak_rss_mb', '{:.0f}') for k in timed)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
