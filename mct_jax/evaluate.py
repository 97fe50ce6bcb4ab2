"""The evaluation protocol (METHOD.md section 7), several networks in one compiled program.

Train ``num_eval`` freshly initialised networks on a (synthetic) training set with SGD
(lr = the learned student lr, momentum 0.9, weight decay 5e-4, batch 256, DSA, lr x0.1 at
half of the epochs) and report their accuracy on the real test set as mean +- std. All
networks are trained in one compiled program (see :func:`make_evaluator` for why that
program runs them one after another rather than under ``vmap``).

Command line::

    python -m mct_jax.evaluate --synthetic=OUT_DIR [data flags]        # a distilled set
    python -m mct_jax.evaluate --baseline=random --ipc=10 [data flags]  # random real images
    python -m mct_jax.evaluate --baseline=full [data flags]             # all training images
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags, logging

from mct_jax import cli, monitor, train, validate
from mct_jax import flags as shared

FLAGS = flags.FLAGS


def make_evaluator(model, num_nets: int, epochs: int, batch_size: int = 256,
                   momentum: float = 0.9, weight_decay: float = 5e-4, use_dsa: bool = True,
                   together: str = 'map'):
    """Builds ``evaluate(key, images, labels, lr, x_test, y_test) -> acc [num_nets]``.

    Network i is initialised from ``fold_in(key, i)``; the learning rate ``lr`` is traced,
    so a changing learned lr does not recompile. ``together`` chooses how the networks run:

    * ``'map'``: one compiled program, ``lax.map`` over the networks (one after another);
    * ``'vmap'``: one compiled program, the networks batched;
    * ``'loop'``: one compiled program per network, called from Python, so progress can be
      shown between networks: ``evaluate(..., on_network=f)`` calls ``f(i, accuracy)``.

    Every mode computes the same networks. Measured on the 2-core CPU
    (``benchmarks/bench_eval.py``, width 32) the vmapped form was 0.29-0.62x the speed of
    separate runs (under ``vmap`` each network's own DSA family choice turns ``lax.switch``
    into computing all six families, and the per-network kernels of the hand-written
    gradient's native convolutions become slow grouped convolutions; removing both, in
    ``benchmarks/bench_vmap_forms.py``, still left every vmapped form slower) and ``'map'``
    1.01-1.37x, so ``'map'`` is the default and ``'loop'`` costs little.
    """
    if together not in ('map', 'vmap', 'loop'):
        raise ValueError(f"together={together!r}: use 'map', 'vmap' or 'loop'.")

    def one_net(k, images, labels, lr, x_test, y_test):
        n = images.shape[0]
        steps_per_epoch = -(-n // min(batch_size, n))
        boundary = (epochs // 2) * steps_per_epoch

        def schedule(count):
            return lr * jnp.where(count >= boundary, 0.1, 1.0)
        # PyTorch SGD order: weight decay is added to the gradient before momentum.
        tx = optax.chain(optax.add_decayed_weights(weight_decay),
                         optax.sgd(schedule, momentum=momentum))
        params = model.init(jax.random.fold_in(k, 0))

        def epoch(carry, e):
            p, s = carry
            p, s, _ = train.sgd_epoch(model.apply, p, s, tx, images, labels,
                                      jax.random.fold_in(k, e + 1), batch_size, use_dsa,
                                      model.loss_grad)
            return (p, s), None
        (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jnp.arange(epochs))
        return train.predict_correct(model.apply, params, x_test, y_test) / x_test.shape[0]

    def net_keys(key):
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_nets))

    if together == 'loop':
        one = jax.jit(one_net)
        keys_of = jax.jit(net_keys)

        def evaluate(key, images, labels, lr, x_test, y_test, on_network=None):
            keys, accs = keys_of(key), []
            for i in range(num_nets):
                accs.append(one(keys[i], images, labels, lr, x_test, y_test))
                if on_network is not None:
                    on_network(i, float(accs[-1]))
            return jnp.stack(accs)
        evaluate.network = one   # the compiled per-network program
        return evaluate

    @jax.jit
    def evaluate_all(key, images, labels, lr, x_test, y_test):
        run = lambda k: one_net(k, images, labels, lr, x_test, y_test)
        if together == 'vmap':
            return jax.vmap(run)(net_keys(key))
        return jax.lax.map(run, net_keys(key))
    return evaluate_all


def random_real_subset(key, x, y, num_classes: int, ipc: int):
    """``ipc`` random real images of each class: ([num_classes * ipc, ...], labels).

    Classes appear in order (class 0's images first); raises ``ValueError`` if a class has
    fewer than ``ipc`` images.
    """
    y = np.asarray(y)
    xs, ys = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if len(idx) < ipc:
            raise ValueError(f'Class {c} has only {len(idx)} training images, fewer than '
                             f'--ipc={ipc}; lower --ipc or raise --train_images_per_class.')
        pick = np.asarray(jax.random.choice(jax.random.fold_in(key, c), len(idx), (ipc,),
                                            replace=False))
        xs.append(np.asarray(x)[idx[np.sort(pick)]])
        ys.append(np.full(ipc, c, np.int32))
    return np.concatenate(xs), np.concatenate(ys)


def summarize(acc) -> dict:
    """Mean and (population) std of per-network accuracies, in percent."""
    acc = np.asarray(acc, np.float64) * 100
    return {'mean': float(acc.mean()), 'std': float(acc.std()), 'all': acc.tolist()}


def load_synthetic(path: str) -> dict:
    """Reads a distillation result: a run folder (its ``best.npz``) or an ``.npz`` file."""
    if os.path.isdir(path):
        path = os.path.join(path, 'best.npz')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'No synthetic set at {path}: pass --synthetic=OUT_DIR of a '
                                'distillation run (it writes best.npz and synthetic.npz).')
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    out['settings'] = json.loads(str(out['settings']))
    return out


def main(argv):
    del argv
    validate.raise_if_any(validate.evaluate_command_problems(), 'evaluation')
    ds = shared.load_data()
    model = shared.model_from_settings(shared.model_settings(ds))
    key = jax.random.key(FLAGS.seed)
    if FLAGS.synthetic:
        syn = load_synthetic(FLAGS.synthetic)
        for k, v in shared.data_settings().items():
            if syn['settings'].get(k) != v:
                raise ValueError(f'The synthetic set was distilled with {k}={syn["settings"].get(k)!r} '
                                 f'but this run has {k}={v!r}; pass the same data flags.')
        images, labels, lr, name = syn['images'], syn['labels'], float(syn['lr']), FLAGS.synthetic
    elif FLAGS.baseline == 'random':
        images, labels = random_real_subset(jax.random.fold_in(key, 1), ds.x_train, ds.y_train,
                                            ds.num_classes, FLAGS.ipc)
        lr, name = FLAGS.lr_teacher, f'random real, ipc {FLAGS.ipc}'
    else:
        images, labels, lr, name = ds.x_train, ds.y_train, FLAGS.lr_teacher, 'full training set'
    evaluate = make_evaluator(model, FLAGS.num_eval, FLAGS.eval_epochs, use_dsa=FLAGS.dsa,
                              together='loop')
    with monitor.Progress(FLAGS.num_eval, 'evaluate', unit='net', mode=FLAGS.progress) as bar:
        acc = evaluate(jax.random.fold_in(key, 2), jnp.asarray(images), jnp.asarray(labels),
                       jnp.float32(lr), jnp.asarray(ds.x_test), jnp.asarray(ds.y_test),
                       on_network=lambda i, a: bar.update(acc=round(100 * a, 2)))
    s = summarize(acc)
    logging.info('%s: %.2f +- %.2f %% over %d networks (%d images, lr %.4g, %d epochs)',
                 name, s['mean'], s['std'], FLAGS.num_eval, len(images), lr, FLAGS.eval_epochs)
    print(json.dumps(dict(s, name=name, images=int(len(images)), lr=lr,
                          epochs=FLAGS.eval_epochs)))


if __name__ == '__main__':
    cli.run(main)
