"""A prepared GPU check: what mct_jax does on an accelerator, measured in one go.

    bash benchmarks/gpu_check.sh --out=$OUT                 # on the GPU machine (7 min budget)
    python -m benchmarks.gpu_check --dry_run --out=/tmp/gc   # anywhere: tiny sizes, same path

Stages, in order of importance; each runs only if the time left (``--budget_s``, default
420) allows its estimate, and the report says what was skipped:

1. ``environment``: device, JAX, jaxlib and CUDA versions, the fp32 and bf16 matrix-multiply
   rates measured here;
2. ``tests``: the test subset that matters on an accelerator (the ConvNet's numerics, the
   rollout, the meta-gradient's equality across methods, soft labels, TESLA, the reference
   architectures), at JAX's highest matmul precision;
3. ``distill``: one distillation iteration (the meta-gradient and the update) at the
   paper's CIFAR-10 settings (width 128, depth 3): ipc 10 / N 30, ipc 50 / N 30, ipc 1 /
   N 50, for each meta-gradient method with and without remat: seconds, compile seconds,
   XLA's memory estimate and the device's peak memory;
4. ``pytorch``: the same iteration in PyTorch on the same device (``torch_reference.py``, MTT
   style);
5. ``expert``: expert training throughput (images/s, batch 256, in one gradient pass and in
   passes of 64 and 16 images);
6. ``evaluate``: five evaluation networks vmapped against one after another;
7. ``conv``: the reference architectures' convolution as ``lax.conv_general_dilated`` and as
   im2col (``bench_conv.py``), the measurement :data:`mct_jax.models.layers.CONV_FORM_BY_BACKEND`
   is chosen from.

Synthetic data of CIFAR-10's shapes: nothing is downloaded. Writes ``gpu_check.json`` and
``gpu_check.md`` to ``--out``.
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
sys.path.insert(0, REPO)   # run from a checkout, installed or not

FULL = dict(width=128, image=32, classes=10, configs=[(10, 30), (50, 30), (1, 50)], repeats=3,
            matmul=8192, expert_images=5120, eval_epochs=50, eval_ipc=10, nets=5,
            tests=['tests/test_models.py', 'tests/test_distill.py', 'tests/test_toolbox.py',
                   'tests/test_reference_models.py'],
            # every test of these files (slow ones too) but the loop-level ones, which train
            # evaluation networks on a CPU-sized schedule, and those needing 4 devices
            test_args=['-k', 'not same_seed and not resume and not devices_give and not '
                             'no_retrace and not residual_plan and not test_the_test_set and '
                             'not without_a_validation and not teacher_labels_and'])
DRY = dict(width=8, image=16, classes=10, configs=[(1, 2)], repeats=1, matmul=256,
           expert_images=512, eval_epochs=2, eval_ipc=1, nets=2, conv_networks=('lenet',),
           tests=['tests/test_trajectory.py'], test_args=[])
METHODS = [('forward', False), ('reverse', False), ('tesla', False), ('forward', True),
           ('reverse', True), ('tesla', True)]


class Budget:
    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()

    def allows(self, estimate: float) -> bool:
        return self.left() > estimate


def log(msg: str) -> None:
    print(f'[gpu_check {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def _sync(tree):
    import jax
    return jax.block_until_ready(tree)


def environment(size: int) -> dict:
    import jax
    import jax.numpy as jnp
    import jaxlib
    dev = jax.devices()[0]
    out = dict(platform=dev.platform, device=str(getattr(dev, 'device_kind', dev)),
               devices=jax.device_count(), jax=jax.__version__, jaxlib=jaxlib.__version__,
               python=platform.python_version())
    try:
        out['backend_version'] = dev.client.platform_version   # e.g. the CUDA version
    except Exception:   # noqa: BLE001 -- not every backend reports one
        out['backend_version'] = None
    for dtype in ('float32', 'bfloat16'):
        a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
        f = jax.jit(lambda a: a @ a)
        _sync(f(a))
        best = min(_timed_once(lambda: _sync(f(a))) for _ in range(5))
        out[f'matmul_{dtype}_tflops'] = 2 * size ** 3 / best / 1e12
    return out


def _timed_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_tests(cfg: dict, timeout: float) -> dict:
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION='highest')
    # -o addopts= : the project's pytest options name pytest-xdist's, which the GPU machine
    # need not have; these tests run in one process
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-o', 'addopts=',
           *cfg['tests'], *cfg['test_args']]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
        tail = proc.stdout.strip().splitlines()[-1:] or ['']
        return dict(command=' '.join(cmd[1:]), returncode=proc.returncode, summary=tail[0],
                    seconds=time.time() - t0,
                    failures=[l for l in proc.stdout.splitlines() if l.startswith('FAILED')])
    except subprocess.TimeoutExpired:
        return dict(command=' '.join(cmd[1:]), returncode=None, seconds=time.time() - t0,
                    summary=f'stopped after {timeout:.0f} s (budget)')


def _inputs(cfg, ipc, seed=0):
    import jax
    from mct_jax import models
    m = models.convnet((cfg['image'], cfg['image'], 3), cfg['classes'], cfg['width'], 3)
    start = m.init(jax.random.key(seed))
    target = jax.tree.map(lambda a, b: a + 0.1 * b, start, m.init(jax.random.key(seed + 1)))
    images = jax.random.normal(jax.random.key(seed + 2),
                               (cfg['classes'] * ipc, cfg['image'], cfg['image'], 3))
    labels = jax.numpy.arange(cfg['classes'] * ipc) % cfg['classes']
    return m, start, target, images, labels


def peak_bytes():
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get('peak_bytes_in_use')


def distill_iteration(cfg, ipc, steps, method, remat) -> dict:
    """One outer iteration as distill runs it: the meta-gradient (DSA on) and the update."""
    import jax
    import jax.numpy as jnp
    from mct_jax import distill, rollout
    m, start, target, images, labels = _inputs(cfg, ipc)
    options = rollout.RolloutOptions(steps, images.shape[0], True, method, remat, 4e9)
    grad = jax.jit(jax.value_and_grad(
        lambda syn, k: rollout.meta_loss(syn, labels, start, target, k, m, options)))
    syn = {'images': images, 'lr': jnp.float32(0.01)}
    t0 = time.perf_counter()
    compiled = grad.lower(syn, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_gb = None
    if mem is not None:
        xla_gb = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                  + mem.output_size_in_bytes) / 1e9
    tx = distill.make_optimizer(100.0, 1e-5)
    update = distill.make_update(tx)
    state = [syn, tx.init(syn)]

    def iteration(i):
        loss, g = compiled(state[0], jax.random.key(i))
        new, opt, _ = update(state[0], state[1], g, loss)
        state[:] = _sync((new, opt))
    iteration(0)   # warm-up (compiles the update)
    times = [_timed_once(lambda i=i: iteration(i + 1)) for i in range(cfg['repeats'])]
    return dict(ipc=ipc, steps=steps, method=method, remat=remat,
                seconds=statistics.median(times), all_seconds=times, compile_s=compile_s,
                xla_gb=xla_gb, peak_gb=(peak_bytes() or 0) / 1e9 or None)


def pytorch_iteration(cfg, ipc, steps) -> dict:
    import numpy as np
    import torch
    from benchmarks import torch_reference
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    m, start, target, images, labels = _inputs(cfg, ipc)
    net = torch_reference.FlatConvNet(3, cfg['width'], 3, cfg['classes'], cfg['image'])
    t_start, t_img = torch_reference.from_jax(start, images)
    t_target, _ = torch_reference.from_jax(target, images)
    t_start, t_target, t_img = (t.to(device) for t in (t_start, t_target, t_img))
    t_img.requires_grad_(True)
    t_labels = torch.tensor(np.asarray(labels)).to(device)
    t_lr = torch.tensor(0.01, device=device, requires_grad=True)
    opt = torch.optim.SGD([t_img], lr=100.0, momentum=0.5)
    opt_lr = torch.optim.SGD([t_lr], lr=1e-5, momentum=0.5)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()

    def iteration():
        _, gi, gl = torch_reference.meta_loss_and_grads(net, t_img, t_labels, t_lr, t_start,
                                                        t_target, steps)
        t_img.grad, t_lr.grad = gi, gl
        opt.step()
        opt_lr.step()
        sync()
    iteration()
    times = [_timed_once(iteration) for _ in range(cfg['repeats'])]
    return dict(ipc=ipc, steps=steps, device=device, torch=torch.__version__,
                seconds=statistics.median(times), all_seconds=times,
                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if device == 'cuda' else None)


def expert_throughput(cfg) -> dict:
    import jax
    from mct_jax import expert
    m, _, _, _, _ = _inputs(cfg, 1)
    n = cfg['expert_images']
    x = jax.random.normal(jax.random.key(3), (n, cfg['image'], cfg['image'], 3))
    y = jax.numpy.arange(n) % cfg['classes']
    params = m.init(jax.random.key(0))
    out = dict(images=n, batch=256, passes={})
    # Images per gradient pass: the whole batch (the default off CPU) against 64 and 16
    # (the CPU default), to see where this backend's balance lies.
    for passes in (0, 64, 16):
        epoch = expert.make_epoch_fn(m.apply, 0.01, 256, m.loss_grad, microbatch=passes)
        _sync(epoch(params, x, y, jax.random.key(1)))
        seconds = min(_timed_once(lambda i=i: _sync(epoch(params, x, y, jax.random.key(i))))
                      for i in range(cfg['repeats']))
        out['passes'][str(passes)] = dict(seconds_per_epoch=seconds,
                                          images_per_second=n / seconds)
    out['images_per_second'] = out['passes']['0']['images_per_second']
    return out


def evaluation(cfg) -> dict:
    """Five networks of the protocol: vmapped in one program against one after another."""
    import jax
    from mct_jax import evaluate
    m, _, _, images, labels = _inputs(cfg, cfg['eval_ipc'])
    xt = jax.random.normal(jax.random.key(4), (1000, cfg['image'], cfg['image'], 3))
    yt = jax.numpy.arange(1000) % cfg['classes']
    lr, nets = jax.numpy.float32(0.01), cfg['nets']
    one = evaluate.make_network_trainer(m, cfg['eval_epochs'])
    vmapped = jax.jit(lambda k: jax.vmap(lambda kk: one(kk, images, labels, lr, ((xt, yt),)))(
        evaluate.network_keys(k, nets)))
    loop = evaluate.make_evaluator(m, nets, cfg['eval_epochs'])
    out = {}
    for name, fn in (('vmapped', lambda: vmapped(jax.random.key(1))),
                     ('one_after_another', lambda: loop(jax.random.key(1), images, labels, lr,
                                                        ((xt, yt),)))):
        t0 = time.perf_counter()
        _sync(fn())
        first = time.perf_counter() - t0
        out[name] = dict(first_seconds=first, seconds=_timed_once(lambda: _sync(fn())))
    out.update(nets=nets, epochs=cfg['eval_epochs'], images=int(images.shape[0]),
               vmapped_over_loop=out['vmapped']['seconds'] / out['one_after_another']['seconds'])
    return out


def conv_forms(cfg) -> dict:
    """The reference architectures' two convolution forms (``bench_conv.py``)."""
    import jax
    from benchmarks import bench_conv
    results = {'machine': {'backend': jax.default_backend()},
               'rows': bench_conv.measure(3, 2, networks=cfg['conv_networks'])}
    return dict(results, faster=bench_conv.choice(results), table=bench_conv.table(results))


def markdown(report: dict) -> str:
    env = report.get('environment', {})
    lines = ['# mct_jax GPU check', '',
             f"- device: {env.get('device')} ({env.get('platform')}, {env.get('devices')} "
             f"device(s)); JAX {env.get('jax')}, jaxlib {env.get('jaxlib')}, backend "
             f"{env.get('backend_version')}",
             f"- matmul: fp32 {env.get('matmul_float32_tflops', 0):.1f} TFLOP/s, bf16 "
             f"{env.get('matmul_bfloat16_tflops', 0):.1f} TFLOP/s",
             f"- scale: {report['scale']}; budget {report['budget_s']:.0f} s, used "
             f"{report['seconds']:.0f} s"]
    t = report.get('tests')
    if t:
        lines.append(f"- tests: {t['summary']} ({t['seconds']:.0f} s)")
    lines += ['', f"## One distillation iteration (width {report['width']}, depth 3, "
                  f"{report['image']}x{report['image']}x3 images)", '',
              '| ipc | N | method | remat | seconds | compile (s) | XLA estimate (GB) | '
              'device peak so far (GB) |', '|---|---|---|---|---|---|---|---|']
    for r in report.get('distill', []):
        if 'skipped' in r:
            lines.append(f"| {r['ipc']} | {r['steps']} | {r['method']} | {r['remat']} | "
                         f"skipped: {r['skipped']} | | | |")
            continue
        fmt = lambda v: '-' if v is None else f'{v:.2f}'
        lines.append(f"| {r['ipc']} | {r['steps']} | {r['method']} | {r['remat']} | "
                     f"{r['seconds']:.3f} | {r['compile_s']:.1f} | {fmt(r['xla_gb'])} | "
                     f"{fmt(r['peak_gb'])} |")
    if report.get('pytorch'):
        lines += ['', '## The same iteration in PyTorch (MTT style)', '',
                  '| ipc | N | seconds | peak (GB) | forward (JAX) / PyTorch |', '|---|---|---|---|---|']
        for r in report['pytorch']:
            if 'skipped' in r:
                lines.append(f"| {r['ipc']} | {r['steps']} | skipped: {r['skipped']} | | |")
                continue
            ours = [d['seconds'] for d in report.get('distill', []) if 'seconds' in d and
                    (d['ipc'], d['steps'], d['method'], d['remat']) ==
                    (r['ipc'], r['steps'], 'forward', False)]
            ratio = f"{ours[0] / r['seconds']:.2f}" if ours else '-'
            peak = '-' if r['peak_gb'] is None else f"{r['peak_gb']:.2f}"
            lines.append(f"| {r['ipc']} | {r['steps']} | {r['seconds']:.3f} | {peak} | {ratio} |")
    e = report.get('expert')
    if e and 'skipped' not in e:
        by_pass = ', '.join(f"{v['images_per_second']:.0f} in passes of {k}"
                            for k, v in e['passes'].items() if k != '0')
        lines += ['', f"Expert training: {e['images_per_second']:.0f} images/s (batch 256 "
                      f"in one pass; {by_pass})."]
    v = report.get('evaluate')
    if v and 'skipped' not in v:
        lines += ['', f"Evaluation, {v['nets']} networks x {v['epochs']} epochs on "
                      f"{v['images']} images: vmapped {v['vmapped']['seconds']:.2f} s, one "
                      f"after another {v['one_after_another']['seconds']:.2f} s "
                      f"(ratio {v['vmapped_over_loop']:.2f})."]
    c = report.get('conv')
    if c and 'skipped' not in c:
        lines += ['', '## The reference architectures\' convolution', '', c['table'].rstrip()]
    skipped = report.get('skipped', [])
    if skipped:
        lines += ['', 'Skipped for the budget: ' + ', '.join(skipped) + '.']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--budget_s', type=float, default=420.0)
    p.add_argument('--dry_run', action='store_true', help='tiny sizes, the same code path')
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'gpu_check'))
    p.add_argument('--skip', default='', help='comma-separated stages not to run')
    args = p.parse_args(argv)
    cfg = DRY if args.dry_run else FULL
    budget, t0 = Budget(args.budget_s), time.time()
    skip = set(filter(None, args.skip.split(',')))
    report = {'scale': 'dry run (tiny sizes)' if args.dry_run else 'paper (CIFAR-10, width 128)',
              'budget_s': args.budget_s, 'skipped': [], 'width': cfg['width'],
              'image': cfg['image']}
    # The later stages' share of the budget, kept back from the distillation timings.
    reserve = 0 if 'pytorch' in skip else 75.0
    os.makedirs(args.out, exist_ok=True)

    def save():
        report['seconds'] = time.time() - t0
        with open(os.path.join(args.out, 'gpu_check.json'), 'w') as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(args.out, 'gpu_check.md'), 'w') as f:
            f.write(markdown(report))

    log('environment')
    report['environment'] = environment(cfg['matmul'])
    log(json.dumps(report['environment']))
    save()
    if 'tests' not in skip and budget.allows(30):
        log('tests')
        report['tests'] = run_tests(cfg, min(120.0, budget.left() - 20))
        log(report['tests']['summary'])
        save()
    else:
        report['skipped'].append('tests')
    report['distill'] = []
    for ipc, steps in cfg['configs']:
        for method, remat in METHODS:
            row = dict(ipc=ipc, steps=steps, method=method, remat=remat)
            if 'distill' in skip or not budget.allows(25 + reserve):
                report['distill'].append(dict(row, skipped='budget'))
                continue
            log(f'distill ipc {ipc} N {steps} {method}{" remat" if remat else ""}')
            try:
                report['distill'].append(distill_iteration(cfg, ipc, steps, method, remat))
            except Exception as e:   # noqa: BLE001 -- e.g. out of memory: recorded, go on
                report['distill'].append(dict(row, skipped=f'{type(e).__name__}: {e}'[:300]))
            save()
    report['pytorch'] = []
    for ipc, steps in cfg['configs']:
        row = dict(ipc=ipc, steps=steps)
        if 'pytorch' in skip or not budget.allows(20):
            report['pytorch'].append(dict(row, skipped='budget'))
            continue
        log(f'pytorch ipc {ipc} N {steps}')
        try:
            report['pytorch'].append(pytorch_iteration(cfg, ipc, steps))
        except Exception as e:   # noqa: BLE001 -- no torch, or out of memory: recorded
            report['pytorch'].append(dict(row, skipped=f'{type(e).__name__}: {e}'[:300]))
        save()
    for name, fn, estimate in (('expert', expert_throughput, 15), ('evaluate', evaluation, 40),
                               ('conv', conv_forms, 60)):
        if name in skip or not budget.allows(estimate):
            report[name] = {'skipped': 'budget'}
            report['skipped'].append(name)
            continue
        log(name)
        report[name] = fn(cfg)
        save()
    report['skipped'] += sorted({f"distill ipc {r['ipc']} N {r['steps']}"
                                 for r in report['distill'] if r.get('skipped') == 'budget'})
    save()
    print(markdown(report), end='')
    return report


if __name__ == '__main__':
    main()
