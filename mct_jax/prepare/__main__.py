"""``python -m mct_jax.prepare``: the official archive of a dataset into a prepared folder
(:mod:`mct_jax.prepare`), which ``--data_source=prepared --data_dir=FOLDER`` reads.

    python -m mct_jax.prepare --dataset=cifar10 --source_path=cifar-10-python.tar.gz --data_dir=data/cifar10
    python -m mct_jax.prepare --dataset=tiny_imagenet --source_path=tiny-imagenet-200.zip --data_dir=data/tiny
    python -m mct_jax.prepare --dataset=imagenette --source_path=/datasets/imagenet --data_dir=data/imagenette

Offline; safe to run again (a folder already prepared from the same files is kept).
Prints what it wrote as JSON.
"""

import json

from absl import logging

from mct_jax import prepare
from mct_jax.cli import app
from mct_jax.cli import flags as cli_flags

FLAGS = cli_flags.FLAGS


def main(argv):
    del argv
    problems = []
    if not FLAGS.data_dir:
        problems.append('--data_dir is needed: the folder to write (it must not exist yet).')
    if not FLAGS.source_path and FLAGS.dataset != 'digits':
        problems.append(f'--source_path is needed: the downloaded files of {FLAGS.dataset} '
                        '(see the table in mct_jax/prepare/__init__.py or docs/usage.md).')
    if problems:
        raise ValueError('  '.join(problems))
    meta = prepare.prepare(FLAGS.dataset, FLAGS.source_path, FLAGS.data_dir, log=logging.info)
    print(json.dumps({'data_dir': FLAGS.data_dir, 'dataset': meta['dataset'],
                      'splits': meta['splits'], 'image_shape': meta['image_shape']}))


def run():
    """Console script ``mct-prepare``."""
    app.run(main)


if __name__ == '__main__':
    run()
