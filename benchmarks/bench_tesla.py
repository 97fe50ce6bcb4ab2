"""Benchmark: how close TESLA's approximate meta-gradient (the MCT release's) is to the exact one.

    python benchmarks/bench_tesla.py --expert_dir=runs/cifar10_local/experts \\
        --flagfile=experiments/cifar10_local.cfg --steps=1,2,5,10,20,40

For each N, on real experts and a real-image initial set (the distillation's first
iteration), it draws ``--samples`` (expert, start) pairs and computes the meta-gradient
twice, exactly (``--meta_grad=forward``) and with ``--meta_grad=tesla``: the cosine
similarity of the image gradients, the ratio of their norms, and whether the learned lr's
gradient has the same sign. Prints a Markdown table and writes JSON (``--out``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from mct_jax import distill, expert_store, models, monitor, rollout  # noqa: E402
from mct_jax.cli import flags as cli_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list('steps', ['1', '2', '5', '10', '20', '40'], 'Values of N to compare at.')
flags.DEFINE_integer('samples', 5, '(expert, start) pairs per N.')
flags.DEFINE_string('out', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                                        'bench_tesla.json'), 'JSON output.')


def cosine(a, b) -> float:
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv):
    del argv
    cli_flags.inherit_from_experts()
    ds = cli_flags.load_data()
    config = cli_flags.model_settings(ds)
    model = models.from_config(config)
    trajs = expert_store.load_experts(cli_flags.expert_dir(), 'mct', 'steps', None,
                                      dict(config, **cli_flags.data_settings()))
    s = cli_flags.distill_settings()
    d = distill.Distiller(s, model, ds, trajs, '/nonexistent', {},
                          outputs=monitor.Outputs(progress='none'))
    syn, _, labels = d.initial_state()
    rows = []
    for n in [int(v) for v in FLAGS.steps]:
        grads = {}
        for method in ('forward', 'tesla'):
            options = rollout.RolloutOptions(n, d.batch, s.dsa, method,
                                             residual_budget=s.residual_budget_gb * 1e9)
            f = jax.jit(jax.value_and_grad(
                lambda syn, a, b, k: rollout.meta_loss(syn, labels, a, b, k, model, options)))
            grads[method] = []
            t0 = time.time()
            for j in range(FLAGS.samples):
                e, c = distill.sample_start(s.seed, j, len(trajs), s.max_start_epoch, True)
                start = d.point(trajs[e], c)
                target = d.point(trajs[e], min(c + s.expert_epochs, trajs[e].num_epochs))
                loss, g = f(syn, start, target, jax.random.fold_in(d.key, j))
                grads[method].append(jax.tree.map(np.asarray, g))
            grads[method + '_seconds'] = (time.time() - t0) / FLAGS.samples
        cos = [cosine(a['images'], b['images']) for a, b in zip(grads['forward'], grads['tesla'])]
        ratio = [float(np.linalg.norm(b['images']) / np.linalg.norm(a['images']))
                 for a, b in zip(grads['forward'], grads['tesla'])]
        same_lr = [bool(np.sign(a['lr']) == np.sign(b['lr']))
                   for a, b in zip(grads['forward'], grads['tesla'])]
        rows.append(dict(steps=n, cosine=cos, cosine_mean=statistics.mean(cos),
                         cosine_min=min(cos), norm_ratio_mean=statistics.mean(ratio),
                         lr_sign_agrees=sum(same_lr), samples=len(cos),
                         exact_seconds=grads['forward_seconds'],
                         tesla_seconds=grads['tesla_seconds']))
        r = rows[-1]
        print(f'N {n}: cosine {r["cosine_mean"]:.3f} (min {r["cosine_min"]:.3f}), norm ratio '
              f'{r["norm_ratio_mean"]:.2f}, lr sign agrees {r["lr_sign_agrees"]}/{len(cos)}',
              file=sys.stderr, flush=True)
    print('| N | cosine, mean (min) | norm ratio tesla / exact | lr gradient sign agrees | '
          'seconds: exact / tesla |')
    print('|---|---|---|---|---|')
    for r in rows:
        print(f'| {r["steps"]} | {r["cosine_mean"]:.3f} ({r["cosine_min"]:.3f}) | '
              f'{r["norm_ratio_mean"]:.2f} | {r["lr_sign_agrees"]} / {r["samples"]} | '
              f'{r["exact_seconds"]:.2f} / {r["tesla_seconds"]:.2f} |')
    os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
        json.dump({'settings': dict(s._asdict()), 'data': cli_flags.data_settings(),
                   'model': config, 'experts': len(trajs), 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    app.run(main)
