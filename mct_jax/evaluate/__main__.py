"""``python -m mct_jax.evaluate``: the evaluation protocol on a set (:mod:`mct_jax.evaluate`).

    python -m mct_jax.evaluate --synthetic=OUT_DIR                     # a distilled set
    python -m mct_jax.evaluate --synthetic=OUT_DIR --models=convnet,alexnet,vgg11,resnet18
    python -m mct_jax.evaluate --synthetic=OUT_DIR --report           # + IOR, HLR, LRS
    python -m mct_jax.evaluate --baseline=random --ipc=10 [data flags]  # random real images
    python -m mct_jax.evaluate --baseline=full [data flags]             # all training images

With ``--synthetic`` the dataset, its subset and the model come from the set's settings (and
its experts' config) unless the command line sets them. ``--models`` or ``--report`` write a
Markdown table, JSON and a bar chart to ``--report_dir``. Prints the result as JSON.
"""

import json

import jax
from absl import logging

from mct_jax import data, evaluate, models
from mct_jax.cli import app, validate
from mct_jax.cli import flags as cli_flags
from mct_jax.evaluate import procedures, report

FLAGS = cli_flags.FLAGS


def _choices(ds) -> procedures.Choices:
    """The cross-architecture choices of the flags (scores with ``--report``)."""
    # where the images came from matters: TFDS's CIFAR test split is not the python
    # tarball's order, and a validation split changes the training images
    data_key = dict(cli_flags.data_settings(), image_shape=list(ds.image_shape),
                    data_source=FLAGS.data_source or data.DEFAULT_SOURCE[FLAGS.dataset])
    scoring = procedures.Scoring(cli_flags.baseline_cache(), data_key, FLAGS.lr_teacher,
                                 FLAGS.full_data_epochs, FLAGS.seed, FLAGS.lrs_weight)
    return procedures.Choices(FLAGS.models or [FLAGS.model], cli_flags.model_settings(ds),
                              FLAGS.num_eval, FLAGS.eval_epochs, FLAGS.dsa,
                              cli_flags.eval_lrs(), FLAGS.protocol,
                              scoring if FLAGS.report else None, FLAGS.progress)


def main(argv):
    del argv
    if FLAGS.synthetic:
        cli_flags.inherit_from_set(FLAGS.synthetic)
    elif FLAGS['expert_dir'].present:
        cli_flags.inherit_from_experts()
    validate.raise_if_any(validate.evaluate_command_problems(), 'evaluation')
    ds = cli_flags.load_data()
    key = jax.random.key(FLAGS.seed)
    if FLAGS.synthetic:
        syn = evaluate.load_synthetic(FLAGS.synthetic)
        procedures.check_same_data(syn, cli_flags.data_settings(), cli_flags.DATA_DEFAULTS)
        if FLAGS.export:
            print(json.dumps(procedures.export(syn, ds, FLAGS.synthetic, FLAGS.export,
                                               FLAGS.export_names)))
            return
        if FLAGS.models or FLAGS.report:
            out = procedures.cross_architecture(ds, syn, FLAGS.synthetic, _choices(ds), key)
            folder = cli_flags.report_dir()
            print(report.write_report(out, folder), end='')
            logging.info('Report written to %s (cross_architecture.md, .json, .png).', folder)
            print(json.dumps(out['results']))
            return
        images, labels, lr, name = syn['images'], syn['labels'], float(syn['lr']), FLAGS.synthetic
    else:
        images, labels, lr, name = procedures.baseline_set(ds, FLAGS.baseline, FLAGS.ipc,
                                                           FLAGS.lr_teacher, key)
    model = models.from_config(cli_flags.model_settings(ds))
    print(json.dumps(procedures.one_model(ds, model, images, labels, lr, name, key,
                                          num_eval=FLAGS.num_eval, epochs=FLAGS.eval_epochs,
                                          use_dsa=FLAGS.dsa, progress=FLAGS.progress)))


def run():
    """Console script ``mct-evaluate``."""
    app.run(main)


if __name__ == '__main__':
    run()
