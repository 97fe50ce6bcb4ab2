"""Benchmark: memory and speed at real dataset sizes, against the PyTorch reference.

    python benchmarks/bench_data_scale.py --cifar10_dir=PATH   # folder with train.npz/test.npz

Every measurement runs in a child process of its own, whose peak resident memory is the
kernel's (``ru_maxrss``); the parent also samples the child's anonymous and file-backed
pages (``/proc/PID/status``) every 50 ms, to tell the program's own memory from the
memory-mapped images the page cache lends it. The kernel's peak of a child also counts the
parent that started it, so the parent stays small: of the library it imports only
``mct_jax.host`` (no JAX) and it generates the datasets in children too (its own peak is
recorded as ``launcher_peak_mb``). Rows:

* **expert training** (plain SGD, batch 256, DSA, width 128), ours and the PyTorch
  reference style (``torch_expert.py``: the float32 training split in memory, as MTT's
  ``buffer.py``) on the same data, back to back: images per second over the timed batches
  and peak memory. Datasets: full CIFAR-10 (real, depth 3); Tiny ImageNet's shape (100,000
  generated 64x64 images, 200 classes, depth 4); an ImageNet subset's shape (13,000
  generated 128x128 images, 10 classes, depth 5). Generated images are random pixels in
  the prepared (memory-mapped) format: speed and memory do not depend on the content.
* **growth with the dataset**: ours at ImageNet-1K's shape (64x64, 1,000 classes, depth 4)
  on 25,000 / 50,000 / 100,000 generated images, the peak's growth per image fitted and
  extrapolated to ImageNet-1K's 1,281,167 images.
* **the commands**, cold unless said (no compilation cache): expert training on full
  CIFAR-10 at width 128 (one epoch and its test accuracy); distillation at CIFAR-10 500
  per class, width 32, ipc 1, N 20 (the setting measured side by side with the MCT
  authors' code), cold and with a warm compilation cache; evaluation of its 10-image set
  (5 networks, 100 epochs).
* **distillation at larger shapes** (width 128, ipc 1): seconds per iteration and student
  images per second (N x batch / seconds: the rate that scales with the setting) of the
  default meta-gradient and the update, on CIFAR-10 (real, depth 3, N 20, all 10 images),
  Tiny ImageNet's shape (depth 4; N 5 on minibatches of 20 of the 200 images) and an
  ImageNet subset's shape (128 px, depth 5; N 5, all 10 images). N and the minibatch are
  cut from the presets' to fit a 2-core CPU; memory then counts fewer stored residuals
  than a preset's run.
* **XLA:CPU's emitters** (``--rows=emitters``): the distillation and evaluation commands
  (cold) and expert training batches at width 128, each twice with XLA's default emitters
  and twice with the commands' setting (``mct_jax.cli.app.XLA_FLAGS``), alternating: peak
  memory and seconds (images per second for the batches).

Prints a Markdown table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from mct_jax import host

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
IMAGENET_1K = 1_281_167


def _status(pid: int) -> dict:
    out = {}
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'RssAnon', 'RssFile'):
                out[key] = int(value.split()[0]) / 1024
    return out


def run_child(cmd, env=None, timeout=3600) -> dict:
    """Runs ``cmd``; returns its last stdout line as JSON (if any) with its peak resident
    memory as the kernel counted it (``ru_maxrss`` from ``wait4``) and the peaks of its
    anonymous and file-backed pages as sampled every 50 ms (MiB)."""
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err,
                                env=dict(os.environ, **(env or {})))
        peaks = {'VmRSS': 0.0, 'RssAnon': 0.0, 'RssFile': 0.0}
        start = time.time()
        status = None
        while status is None:
            try:
                for k, v in _status(proc.pid).items():
                    peaks[k] = max(peaks[k], v)
            except (OSError, ValueError):
                pass
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status = code
            elif time.time() - start > timeout:
                proc.kill()
                raise RuntimeError(f'{cmd} took more than {timeout} s')
            else:
                time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f'{cmd} failed:\n{stderr[-3000:]}')
    lines = [line for line in stdout.strip().splitlines() if line.startswith('{')]
    result = json.loads(lines[-1]) if lines else {}
    result.update(peak_rss_mb=usage.ru_maxrss / 1024, sampled_rss_mb=peaks['VmRSS'],
                  peak_anon_mb=peaks['RssAnon'], peak_file_mb=peaks['RssFile'],
                  wall_seconds=time.time() - start)
    return result


# ---------------------------------------------------------------------- the children

def child_expert(args) -> None:
    """Ours: expert training batches on a dataset, timed after a warm-up group."""
    import jax
    from mct_jax import data, expert, models
    ds = data.load_dataset(args.dataset, args.source, args.data_dir)
    model = models.convnet(ds.image_shape, ds.num_classes, args.width, args.depth)
    trainer = expert.EpochTrainer(model, 0.01, 256, group=args.group)
    params = model.init(jax.random.key(0))
    real = expert.RealData.of(ds)
    groups = 1 + -(-args.batches // args.group)
    marks = []

    class Stop(Exception):
        pass

    def on_group(g, carry):
        jax.block_until_ready(carry)
        marks.append(time.perf_counter())
        if g == groups:
            raise Stop
    try:
        trainer.epoch(params, real, jax.random.key(1), on_group=on_group)
    except Stop:
        pass
    timed = (len(marks) - 1) * args.group * 256
    seconds = marks[-1] - marks[0]
    print(json.dumps({'images_per_second': timed / seconds, 'seconds': seconds,
                      'images': int(len(ds.y_train)), 'peak_mb': host.peak_resident_mb()}))


def child_distill(args) -> None:
    """Ours: distillation iterations at a dataset's shape (ConvNet of --width and --depth),
    timed after a warm-up: the synthetic set starts from the first --ipc training images of
    each class, each iteration takes the default meta-gradient (forward, DSA, the default
    residual budget) of --steps student steps on minibatches of --batch images, on one
    device, and applies distill's update; the time is the median of --batches iterations
    after two untimed ones (the first compiles, and the second compiles the meta-gradient
    once more for the set the update returns). The start and target parameters stand in for
    an expert's (two initialisations apart): speed and memory do not depend on their
    values."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from mct_jax import data, distill, models, parallel, rollout
    ds = data.load_dataset(args.dataset, args.source, args.data_dir)
    model = models.convnet(ds.image_shape, ds.num_classes, args.width, args.depth)
    rows = np.concatenate([np.flatnonzero(np.asarray(ds.y_train) == c)[:args.ipc]
                           for c in range(ds.num_classes)])
    images = jnp.asarray(ds.prepare(np.asarray(ds.x_train[np.sort(rows)])))
    labels = jnp.asarray(np.asarray(ds.y_train)[np.sort(rows)])
    start = model.init(jax.random.key(0))
    target = jax.tree.map(lambda a, b: a + 0.1 * b, start, model.init(jax.random.key(1)))
    batch = args.batch or len(labels)
    meta_grad = parallel.make_meta_grad(model, rollout.RolloutOptions(
        args.steps, batch, True, residual_budget=distill.Settings().residual_budget_gb * 1e9),
        devices=jax.local_devices()[:1])
    if REPO not in sys.path:   # the outer iteration as bench_distill times it
        sys.path.insert(0, REPO)
    from benchmarks.bench_distill import _iteration
    one = lambda tree: jax.tree.map(lambda a: a[None], tree)
    iteration = _iteration(lambda syn, i: meta_grad(
        syn, labels, one(start), one(target), one(jax.random.fold_in(jax.random.key(2), i))),
        images, jnp.float32(0.01))
    t0 = time.perf_counter()
    iteration(0)                      # compiles
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    iteration(1)   # the set the update returns has its own layout: compiled once more
    second = time.perf_counter() - t0
    times = []
    for i in range(args.batches):
        t0 = time.perf_counter()
        iteration(i + 2)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    print(json.dumps({'seconds_per_iteration': seconds, 'first_iteration_seconds': first,
                      'second_iteration_seconds': second,
                      'images_per_second': args.steps * batch / seconds,
                      'synthetic_images': int(len(labels)), 'batch': batch,
                      'steps': args.steps,
                      'peak_mb': host.peak_resident_mb()}))


def make_dataset(folder, name, count, size, classes, seed=0):
    """A prepared folder of ``count`` random uint8 images (test split: 1,000)."""
    import numpy as np
    from mct_jax.data import store
    rng = np.random.default_rng(seed)
    with store.Writer(folder, dataset=name, image_shape=(size, size, 3),
                      class_names=[str(c) for c in range(classes)], origin='generated') as w:
        for split, n in (('train', count), ('test', 1000)):
            images = w.images(split, n)
            for start in range(0, n, 4096):
                stop = min(n, start + 4096)
                images[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3),
                                                  dtype=np.uint8)
            w.labels(split, np.arange(n) % classes)
    return folder


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cifar10_dir', default=None, help='real CIFAR-10: train.npz and test.npz')
    p.add_argument('--work', default=None, help='scratch folder (default: a temporary one)')
    p.add_argument('--rows', default='expert,growth,distill,distill_scale',
                   help='which rows to measure; the others are kept from --out if it exists')
    p.add_argument('--no_torch', action='store_true')
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_data_scale.json'))
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    for name, default in (('dataset', 'cifar10'), ('source', 'npz'), ('data_dir', None)):
        p.add_argument(f'--{name}', default=default, help=argparse.SUPPRESS)
    for name, default in (('width', 128), ('depth', 3), ('batches', 24), ('group', 16)):
        p.add_argument(f'--{name}', type=int, default=default, help=argparse.SUPPRESS)
    p.add_argument('--table', action='store_true',
                   help='only print the tables of the results file --out')
    p.add_argument('--count', type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument('--size', type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument('--classes', type=int, default=0, help=argparse.SUPPRESS)
    for name, default in (('ipc', 1), ('steps', 20), ('batch', 0)):
        p.add_argument(f'--{name}', type=int, default=default, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == 'expert':
        return child_expert(args)
    if args.child == 'distill':
        return child_distill(args)
    if args.child == 'make':
        make_dataset(args.data_dir, args.dataset, args.count, args.size, args.classes)
        return
    if args.table:
        with open(args.out) as f:
            print(table(json.load(f)), end='')
        return

    work = args.work or tempfile.mkdtemp(prefix='bench_data_scale_')
    rows = set(args.rows.split(','))
    results = {'machine': {'cpus': os.cpu_count(), 'platform': platform.platform()},
               'expert': [], 'growth': [], 'commands': [], 'distill_scale': [],
               'emitters': []}
    me = [sys.executable, os.path.abspath(__file__)]

    def generated(name, dataset, count, size, classes):
        folder = os.path.join(work, name)
        if not os.path.exists(os.path.join(folder, 'dataset.json')):
            subprocess.run(me + ['--child=make', f'--data_dir={folder}', f'--dataset={dataset}',
                                 f'--count={count}', f'--size={size}', f'--classes={classes}'],
                           cwd=REPO, check=True)
        return folder

    def fresh(name):
        folder = os.path.join(work, name)
        shutil.rmtree(folder, ignore_errors=True)
        return folder

    # The XLA settings the commands start with (mct_jax.cli.app.xla_flags), read in a child:
    # the expert command's for the expert rows, every command's for the distillation rows.
    def command_env(extra):
        return {'XLA_FLAGS': subprocess.run(
            [sys.executable, '-c', 'from mct_jax.cli import app; from mct_jax.expert import '
             f'__main__ as e; print(" ".join(app.xla_flags({extra})))'], cwd=REPO,
            check=True, capture_output=True, text=True).stdout.strip()}
    expert_env, distill_env = command_env('e.XLA_FLAGS'), command_env('')

    if 'expert' in rows:
        configs = []
        if args.cifar10_dir:
            configs.append(('CIFAR-10, all 50,000 (real)', 'cifar10', 'npz', args.cifar10_dir,
                            3, 24, 8))
        tiny = generated('tiny', 'tiny_imagenet', 100_000, 64, 200)
        configs.append(('Tiny ImageNet shape, 100,000 x 64x64', 'tiny_imagenet', 'prepared',
                        tiny, 4, 8, 4))
        subset = generated('subset', 'imagenette', 13_000, 128, 10)
        configs.append(('ImageNet subset shape, 13,000 x 128x128', 'imagenette', 'prepared',
                        subset, 5, 4, 2))
        for label, dataset, source, folder, depth, batches, group in configs:
            row = {'data': label, 'depth': depth, 'batches': batches}
            print(f'expert training: {label} ...', file=sys.stderr, flush=True)
            row['ours'] = run_child(me + ['--child=expert', f'--dataset={dataset}',
                                          f'--source={source}', f'--data_dir={folder}',
                                          f'--depth={depth}', f'--batches={batches}',
                                          f'--group={group}'], env=expert_env)
            if not args.no_torch:
                row['torch'] = run_child([sys.executable, os.path.join(HERE, 'torch_expert.py'),
                                          f'--data={folder}', f'--depth={depth}',
                                          f'--batches={batches}'])
                row['speed_ratio'] = (row['ours']['images_per_second']
                                      / row['torch']['images_per_second'])
                row['memory_ratio'] = row['ours']['peak_rss_mb'] / row['torch']['peak_rss_mb']
            results['expert'].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    if 'growth' in rows:
        for count in (25_000, 50_000, 100_000):
            folder = generated(f'in64_{count}', 'imagenet64', count, 64, 1000)
            print(f'growth: {count} images ...', file=sys.stderr, flush=True)
            r = run_child(me + ['--child=expert', '--dataset=imagenet64', '--source=prepared',
                                f'--data_dir={folder}', '--depth=4', '--batches=8',
                                '--group=4'], env=expert_env)
            results['growth'].append(dict(r, count=count))
        xs = [g['count'] for g in results['growth']]
        for key in ('peak_anon_mb', 'peak_rss_mb'):
            ys = [g[key] for g in results['growth']]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2
                                                                          for x in xs)
            results[f'growth_{key}'] = {'per_image_bytes': slope * 2**20,
                                        'at_imagenet_1k_mb': my + slope * (IMAGENET_1K - mx)}

    # The setting run side by side with the MCT authors' code (the 'distill' and 'emitters'
    # rows): its data and outputs, its experts and its distillation.
    side_data = ['--dataset=cifar10', '--data_source=npz', f'--data_dir={args.cifar10_dir}',
                 '--train_images_per_class=500', '--width=32', '--progress=none',
                 '--pictures=false', '--tensorboard=false', '--compilation_cache=']
    side_experts = ['--num_experts=2', '--train_epochs=4']
    side_distill = ['--ipc=1', '--syn_steps=20', '--expert_epochs=1', '--max_start_epoch=2',
                    '--lr_lr=1e-07', '--iterations=20', '--eval_every=10', '--num_eval=2',
                    '--eval_epochs=100']

    if 'distill' in rows and args.cifar10_dir:
        common = side_data + [f'--expert_dir={fresh("experts32")}']
        subprocess.run([sys.executable, '-m', 'mct_jax.expert', *common, *side_experts],
                       cwd=REPO, check=True, capture_output=True)
        run_dir, experts128 = fresh('distill32'), fresh('experts128')
        for label, cmd in (
                ('expert training: full CIFAR-10, width 128, 1 expert x 1 epoch with its test '
                 'accuracy (the whole command)',
                 [sys.executable, '-m', 'mct_jax.expert', '--dataset=cifar10',
                  '--data_source=npz', f'--data_dir={args.cifar10_dir}', '--width=128',
                  '--num_experts=1', '--train_epochs=1', f'--expert_dir={experts128}',
                  '--progress=none', '--pictures=false', '--tensorboard=false',
                  '--compilation_cache=']),
                ('distillation: CIFAR-10 500/class, width 32, ipc 1, N 20, 20 iterations, '
                 'evaluated at 0, 10, 20 (2 networks x 100 epochs)',
                 [sys.executable, '-m', 'mct_jax.distill', *common, f'--out_dir={run_dir}',
                  *side_distill]),
                ('evaluation of its 10-image set: 5 networks x 100 epochs',
                 [sys.executable, '-m', 'mct_jax.evaluate', f'--synthetic={run_dir}',
                  '--eval_epochs=100', '--num_eval=5', '--progress=none',
                  '--compilation_cache='])):
            print(f'{label} ...', file=sys.stderr, flush=True)
            r = run_child(cmd)   # keep the measurements only (the commands print paths)
            results['commands'].append(dict(what=label, **{
                k: r[k] for k in ('peak_rss_mb', 'sampled_rss_mb', 'peak_anon_mb',
                                  'peak_file_mb', 'wall_seconds')}))
        # The same distillation with a warm compilation cache: filled by a first run, then
        # measured on a second, each into a fresh folder.
        warm = [a for a in common if not a.startswith('--compilation_cache')] + [
            f'--compilation_cache={fresh("xla")}', *side_distill]
        label = 'the same distillation, warm compilation cache'
        print(f'{label} ...', file=sys.stderr, flush=True)
        for _ in range(2):
            r = run_child([sys.executable, '-m', 'mct_jax.distill', *warm,
                           f'--out_dir={fresh("distill32_warm")}'])
        results['commands'].append(dict(what=label, **{
            k: r[k] for k in ('peak_rss_mb', 'sampled_rss_mb', 'peak_anon_mb',
                              'peak_file_mb', 'wall_seconds')}))

    if 'distill_scale' in rows:
        configs = []
        if args.cifar10_dir:
            configs.append(('CIFAR-10 (real), ipc 1', 'cifar10', 'npz', args.cifar10_dir, 3,
                            1, 20, 0))
        configs += [
            ('Tiny ImageNet shape (200 classes, 64x64), ipc 1', 'tiny_imagenet', 'prepared',
             generated('tiny_distill', 'tiny_imagenet', 2_000, 64, 200), 4, 1, 5, 20),
            ('ImageNet subset shape (10 classes, 128x128), ipc 1', 'imagenette', 'prepared',
             generated('subset_distill', 'imagenette', 1_000, 128, 10), 5, 1, 5, 0)]
        for label, dataset, source, folder, depth, ipc, steps, batch in configs:
            print(f'distillation: {label} ...', file=sys.stderr, flush=True)
            r = run_child(me + ['--child=distill', f'--dataset={dataset}', f'--source={source}',
                                f'--data_dir={folder}', f'--depth={depth}', f'--ipc={ipc}',
                                f'--steps={steps}', f'--batch={batch}', '--batches=3'],
                          env=distill_env)
            results['distill_scale'].append(dict(r, data=label, depth=depth, width=128))
            print(json.dumps(results['distill_scale'][-1]), file=sys.stderr, flush=True)

    if 'emitters' in rows and args.cifar10_dir:
        # XLA:CPU's fusion emitters (XLA's default) against the emitters before them (the
        # commands' setting, mct_jax.cli.app.XLA_FLAGS), alternating, twice each: the
        # distillation and evaluation commands above, cold, and expert training batches.
        experts = os.path.join(work, 'experts32_emitters')
        if not os.path.isfile(os.path.join(experts, 'config.json')):
            subprocess.run([sys.executable, '-m', 'mct_jax.expert', *side_data,
                            f'--expert_dir={experts}', *side_experts],
                           cwd=REPO, check=True, capture_output=True)
        xla_default = '--xla_cpu_use_fusion_emitters=true'
        variants = (("XLA's default", xla_default), ("the commands' setting", ''))
        for rep in range(2):
            for variant, flag in variants:
                run_dir = fresh('distill32_emitters')
                runs = (
                    ('distillation (as above, 20 iterations)',
                     [sys.executable, '-m', 'mct_jax.distill', *side_data,
                      f'--expert_dir={experts}', f'--out_dir={run_dir}', *side_distill], {}),
                    ('evaluation of its set (5 networks x 100 epochs)',
                     [sys.executable, '-m', 'mct_jax.evaluate', f'--synthetic={run_dir}',
                      '--eval_epochs=100', '--num_eval=5', '--progress=none',
                      '--compilation_cache='], {}),
                    ('expert training batches: full CIFAR-10, width 128',
                     me + ['--child=expert', '--dataset=cifar10', '--source=npz',
                           f'--data_dir={args.cifar10_dir}', '--depth=3', '--batches=24',
                           '--group=8'], expert_env))
                for what, cmd, env in runs:
                    print(f'{what}, {variant} ...', file=sys.stderr, flush=True)
                    flags = ' '.join(filter(None, [env.get('XLA_FLAGS', ''), flag]))
                    r = run_child(cmd, env={'XLA_FLAGS': flags} if flags else None)
                    results['emitters'].append(dict(
                        what=what, variant=variant, run=rep, **{
                            k: r[k] for k in ('peak_rss_mb', 'peak_anon_mb', 'wall_seconds',
                                              'images_per_second') if k in r}))

    results['machine']['launcher_peak_mb'] = host.peak_resident_mb()
    if os.path.isfile(args.out):   # rows not run this time are kept from the file
        with open(args.out) as f:
            previous = json.load(f)
        for key, value in previous.items():
            if not results.get(key):
                results[key] = value
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=1)
    print(table(results), end='')


def readme_sentence(results) -> str:
    """README.md's summary of the expert rows and the growth rows (MiB: ``ru_maxrss`` / 1024),
    checked against the results file by tests/test_published.py."""
    cifar, tiny = results['expert'][0], results['expert'][1]
    anon = [g['peak_anon_mb'] for g in results['growth']]
    need = IMAGENET_1K * 64 * 64 * 3 * 4 / 2 ** 30
    return (f"training an expert on all of CIFAR-10 at width 128 peaks at "
            f"{cifar['ours']['peak_rss_mb']:,.0f} MiB resident against "
            f"{cifar['torch']['peak_rss_mb']:,.0f} MiB for the PyTorch reference style "
            f"({cifar['speed_ratio']:.1f}x its speed on the same CPU), on Tiny ImageNet at "
            f"{tiny['ours']['peak_rss_mb']:,.0f} MiB against {tiny['torch']['peak_rss_mb']:,.0f} "
            f"MiB, and at ImageNet-1K's shape the program's own memory stays at "
            f"{min(anon):.0f}-{max(anon):.0f} MiB from {results['growth'][0]['count']:,} to "
            f"{results['growth'][-1]['count']:,} images (the float32 split would need "
            f"{need:.0f} GiB)")


def table(results) -> str:
    """The Markdown tables of a results JSON."""
    lines = []
    if results.get('expert'):
        lines += ['| expert training | depth | ours: images/s | PyTorch: images/s | speed, '
                  'ours / PyTorch | ours: peak MiB (anon) | PyTorch: peak MiB | memory, '
                  'ours / PyTorch |', '|---|---|---|---|---|---|---|---|']
        for r in results['expert']:
            o, t = r['ours'], r.get('torch')
            lines.append(f"| {r['data']} | {r['depth']} | {o['images_per_second']:.0f} | "
                         f"{t['images_per_second']:.0f} | {r['speed_ratio']:.2f} | "
                         f"{o['peak_rss_mb']:.0f} ({o['peak_anon_mb']:.0f}) | "
                         f"{t['peak_rss_mb']:.0f} | {r['memory_ratio']:.2f} |" if t else
                         f"| {r['data']} | {r['depth']} | {o['images_per_second']:.0f} | - | "
                         f"- | {o['peak_rss_mb']:.0f} ({o['peak_anon_mb']:.0f}) | - | - |")
        lines.append('')
    if results.get('growth'):
        lines += ['| ImageNet-1K shape (64x64, 1,000 classes, depth 4): images | peak MiB | '
                  'anonymous (sampled) | file-backed (sampled: libraries and mapped images) |',
                  '|---|---|---|---|']
        for g in results['growth']:
            lines.append(f"| {g['count']:,} | {g['peak_rss_mb']:.0f} | {g['peak_anon_mb']:.0f} "
                         f"| {g['peak_file_mb']:.0f} |")
        a, r = results['growth_peak_anon_mb'], results['growth_peak_rss_mb']
        lines += ['', f"Fitted growth per training image: {a['per_image_bytes']:.0f} bytes "
                  f"anonymous, {r['per_image_bytes']:.0f} bytes of peak; extrapolated to "
                  f"ImageNet-1K ({IMAGENET_1K:,} images): {a['at_imagenet_1k_mb']:.0f} MiB "
                  f"anonymous, {r['at_imagenet_1k_mb']:.0f} MiB peak (the float32 training "
                  f"split alone would be {IMAGENET_1K * 64 * 64 * 3 * 4 / 2**30:.0f} GiB).",
                  '']
    if results.get('distill_scale'):
        lines += ['| distillation, width 128 | depth | N x batch | s / iteration | student '
                  'images/s | first iteration (compiling), s | peak MiB (anon) |',
                  '|---|---|---|---|---|---|---|']
        for r in results['distill_scale']:
            lines.append(f"| {r['data']} | {r['depth']} | {r['steps']} x {r['batch']} | "
                         f"{r['seconds_per_iteration']:.1f} | {r['images_per_second']:.1f} | "
                         f"{r['first_iteration_seconds']:.0f} | {r['peak_rss_mb']:.0f} "
                         f"({r['peak_anon_mb']:.0f}) |")
        lines.append('')
    if results.get('commands'):
        lines += ['| command (no compilation cache unless said) | peak MiB | seconds |',
                  '|---|---|---|']
        for c in results['commands']:
            lines.append(f"| {c['what']} | {c['peak_rss_mb']:.0f} | {c['wall_seconds']:.0f} |")
        lines.append('')
    if results.get('emitters'):
        lines += ["| XLA:CPU's emitters | XLA's default: peak MiB | the commands' setting: "
                  "peak MiB | XLA's default: seconds | the commands' setting: seconds |",
                  '|---|---|---|---|---|']
        for what in dict.fromkeys(e['what'] for e in results['emitters']):
            rs = [e for e in results['emitters'] if e['what'] == what]
            cell = lambda v, k, f: ' / '.join(f.format(e[k]) for e in rs if e['variant'] == v)
            rate = 'images_per_second' in rs[0]
            key, fmt = ('images_per_second', '{:.0f} img/s') if rate else ('wall_seconds',
                                                                           '{:.0f}')
            default, ours = "XLA's default", "the commands' setting"
            lines.append(f"| {what} | {cell(default, 'peak_rss_mb', '{:.0f}')} | "
                         f"{cell(ours, 'peak_rss_mb', '{:.0f}')} | "
                         f"{cell(default, key, fmt)} | {cell(ours, key, fmt)} |")
        lines.append('')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main()
