"""``python -m mct_jax.expert``: train expert trajectories (:mod:`mct_jax.expert`).

    python -m mct_jax.expert --flagfile=experiments/quickstart.cfg

Every flag is listed in ``docs/flags.md``; re-running the same command skips finished
experts and resumes an interrupted one.
"""

import jax

from mct_jax import expert, models
from mct_jax.cli import app, validate
from mct_jax.cli import flags as cli_flags

FLAGS = cli_flags.FLAGS


def main(argv):
    del argv
    validate.raise_if_any(validate.expert_command_problems(), 'expert')
    ds = cli_flags.load_data()
    config = cli_flags.expert_config(ds)
    expert.train_experts(models.from_config(config), ds, cli_flags.expert_dir(), config,
                         FLAGS.num_experts, FLAGS.seed, jax.process_index(),
                         jax.process_count(), progress=FLAGS.progress,
                         tensorboard=FLAGS.tensorboard, pictures=FLAGS.pictures)


def run():
    """Console script ``mct-expert``."""
    app.run(main)


if __name__ == '__main__':
    run()
