"""``python -m mct_jax.expert``: train expert trajectories (:mod:`mct_jax.expert`), or import
the field's PyTorch buffers as experts (:func:`mct_jax.interop.import_buffers`).

    python -m mct_jax.expert --flagfile=experiments/quickstart.cfg
    python -m mct_jax.expert --import_buffers=buffers/CIFAR10/ConvNet --dataset=cifar10 --zca

Every flag is listed in ``docs/flags.md``; re-running the same command skips finished
experts and resumes an interrupted one.
"""

import os

import jax
from absl import logging

from mct_jax import data, expert, interop, models
from mct_jax.cli import app, validate
from mct_jax.cli import flags as cli_flags

FLAGS = cli_flags.FLAGS


def import_buffers():
    """``--import_buffers``: the architecture and epochs are read off the first buffer file
    (flags that are set must agree); the data flags say what the experts were trained on."""
    folder = FLAGS.import_buffers
    setup = interop.read_setup(folder)
    validate.raise_if_any(cli_flags.inherit_from_buffers(folder, setup), 'import')
    validate.raise_if_any(validate.import_command_problems(), 'import')
    name = FLAGS.dataset
    size, channels = data.IMAGE_SIZE[name], data.CHANNELS[name]
    expected = interop.BufferModel(channels, FLAGS.width, FLAGS.depth, FLAGS.norm,
                                   data.NUM_CLASSES[name], size)
    model = {'image_shape': [size, size, channels], 'num_classes': data.NUM_CLASSES[name],
             'width': FLAGS.width, 'depth': FLAGS.depth, 'norm': FLAGS.norm,
             'act': cli_flags.ACT, 'pool': cli_flags.POOL}
    config = dict(model, **cli_flags.data_settings(), **cli_flags.training_settings(),
                  anchors=list(cli_flags.anchors()), **cli_flags.data_location(),
                  imported_from=os.path.abspath(folder))
    done = interop.import_buffers(folder, cli_flags.expert_dir(), config, expected,
                                  log=logging.info)
    logging.info('Imported %d experts into %s.', len(done), cli_flags.expert_dir())


def main(argv):
    del argv
    if FLAGS.import_buffers:
        return import_buffers()
    validate.raise_if_any(validate.expert_command_problems(), 'expert')
    ds = cli_flags.load_data()
    config = cli_flags.expert_config(ds)
    expert.train_experts(models.from_config(config), ds, cli_flags.expert_dir(), config,
                         FLAGS.num_experts, FLAGS.seed, jax.process_index(),
                         jax.process_count(), outputs=cli_flags.outputs(),
                         checkpoint_seconds=FLAGS.expert_checkpoint_seconds,
                         microbatch=FLAGS.microbatch)


# XLA:CPU's concurrency-optimised scheduler keeps more feature maps alive at once so that
# independent operations may overlap; for the expert training step it buys no speed and
# costs memory (docs/benchmarks.md, "Real dataset sizes"). Other backends ignore the flag.
XLA_FLAGS = ('--xla_cpu_enable_concurrency_optimized_scheduler=false',)


def run():
    """Console script ``mct-expert``."""
    app.run(main, XLA_FLAGS)


if __name__ == '__main__':
    run()
