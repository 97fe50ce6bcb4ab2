"""``python -m mct_jax.distill``: distil a synthetic set from experts (:mod:`mct_jax.distill`).

    python -m mct_jax.distill --flagfile=experiments/quickstart.cfg
    python -m mct_jax.distill --expert_dir=DIR --out_dir=OUT --ipc=1

The dataset, its subset and the model come from the experts' ``config.json`` unless the
command line sets them. Every flag is listed in ``docs/flags.md``; re-running the same
command resumes from the run's last checkpoint. Prints the last evaluation as JSON.
"""

import json
import os

import jax
import numpy as np
from absl import logging

from mct_jax import distill, expert_store, models
from mct_jax.cli import app, validate
from mct_jax.cli import flags as cli_flags

FLAGS = cli_flags.FLAGS


def main(argv):
    del argv
    cli_flags.inherit_from_experts()
    s = cli_flags.distill_settings()
    validate.raise_if_any(validate.distill_command_problems(jax.device_count()),
                          'distillation')
    ds = cli_flags.load_data()
    m_settings = cli_flags.model_settings(ds)
    expected = dict(m_settings, **cli_flags.data_settings())
    expert_dir = cli_flags.expert_dir()
    trajs = expert_store.load_experts(expert_dir, s.method, s.beta_mode, s.max_experts,
                                      expected)
    counts = np.bincount(ds.y_train, minlength=ds.num_classes).tolist()
    validate.raise_if_any(distill.check_settings(s, trajs[0].num_epochs, counts,
                                                 jax.device_count(), len(trajs)),
                          'distillation')
    out_dir = cli_flags.out_dir(s.method, s.ipc)
    # Where the experts and the data are, absolute, so that a later command run from
    # elsewhere (evaluate --synthetic, say) finds them.
    settings_json = dict(s._asdict(), **expected, **cli_flags.data_location(),
                         expert_dir=os.path.abspath(expert_dir), num_experts_used=len(trajs))
    logging.info('Distilling %s, %d experts, %s -> %s', FLAGS.dataset, len(trajs), s, out_dir)
    result = distill.Distiller(s, models.from_config(m_settings), ds, trajs, out_dir,
                               settings_json, outputs=cli_flags.outputs()).run()
    print(json.dumps(result))


def run():
    """Console script ``mct-distill``."""
    app.run(main)


if __name__ == '__main__':
    run()
