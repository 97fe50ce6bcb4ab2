"""``python -m mct_jax.evaluate``: the evaluation protocol on a set (:mod:`mct_jax.evaluate`).

    python -m mct_jax.evaluate --synthetic=OUT_DIR                     # a distilled set
    python -m mct_jax.evaluate --baseline=random --ipc=10 [data flags]  # random real images
    python -m mct_jax.evaluate --baseline=full [data flags]             # all training images

With ``--synthetic`` the dataset, its subset and the model come from the set's settings (and
its experts' config) unless the command line sets them. Prints the result as JSON.
"""

import json
import os

import jax
import jax.numpy as jnp
from absl import logging

from mct_jax import evaluate, expert_store, models, monitor
from mct_jax.cli import app, validate
from mct_jax.cli import flags as cli_flags

FLAGS = cli_flags.FLAGS


def _inherit_from_set(path: str) -> None:
    """Settings the command line leaves open, from the set and from its experts' config."""
    try:
        settings = evaluate.load_synthetic(path)['settings']
        cli_flags.inherit(settings, path)
        experts = settings.get('expert_dir')
        if experts:
            cli_flags.inherit(expert_store.read_config(experts),
                              os.path.join(experts, expert_store.CONFIG_FILE))
    except Exception:   # noqa: BLE001 -- a missing or broken set is reported by validate
        pass


def main(argv):
    del argv
    if FLAGS.synthetic:
        _inherit_from_set(FLAGS.synthetic)
    elif FLAGS['expert_dir'].present:
        cli_flags.inherit_from_experts()
    validate.raise_if_any(validate.evaluate_command_problems(), 'evaluation')
    ds = cli_flags.load_data()
    model = models.from_config(cli_flags.model_settings(ds))
    key = jax.random.key(FLAGS.seed)
    if FLAGS.synthetic:
        syn = evaluate.load_synthetic(FLAGS.synthetic)
        for k, v in cli_flags.data_settings().items():
            if syn['settings'].get(k) != v:
                raise ValueError(f'The synthetic set was distilled with {k}='
                                 f'{syn["settings"].get(k)!r} but this run has {k}={v!r}; '
                                 'pass the same data flags (or leave them out).')
        images, labels, lr, name = syn['images'], syn['labels'], float(syn['lr']), FLAGS.synthetic
    elif FLAGS.baseline == 'random':
        images, labels = evaluate.random_real_subset(jax.random.fold_in(key, 1), ds.x_train,
                                                     ds.y_train, ds.num_classes, FLAGS.ipc)
        lr, name = FLAGS.lr_teacher, f'random real, ipc {FLAGS.ipc}'
    else:
        images, labels, lr, name = ds.x_train, ds.y_train, FLAGS.lr_teacher, 'full training set'
    evaluator = evaluate.make_evaluator(model, FLAGS.num_eval, FLAGS.eval_epochs,
                                        use_dsa=FLAGS.dsa)
    with monitor.Progress(FLAGS.num_eval, 'evaluate', unit='net', mode=FLAGS.progress) as bar:
        acc = evaluator(jax.random.fold_in(key, 2), jnp.asarray(images), jnp.asarray(labels),
                        jnp.float32(lr), jnp.asarray(ds.x_test), jnp.asarray(ds.y_test),
                        on_network=lambda i, a: bar.update(acc=round(100 * a, 2)))
    s = evaluate.summarize(acc)
    logging.info('%s: %.2f +- %.2f %% over %d networks (%d images, lr %.4g, %d epochs)',
                 name, s['mean'], s['std'], FLAGS.num_eval, len(images), lr, FLAGS.eval_epochs)
    print(json.dumps(dict(s, name=name, images=int(len(images)), lr=lr,
                          epochs=FLAGS.eval_epochs)))


def run():
    """Console script ``mct-evaluate``."""
    app.run(main)


if __name__ == '__main__':
    run()
