"""mct_jax: dataset distillation by trajectory matching (MCT and MTT) in JAX.

Three layers; imports point down only (``tests/test_layers.py`` checks it):

* mathematics: ``models`` (networks as init/apply pairs), ``augment`` (DSA), ``trajectory``
  (betas, convexified trajectories), ``train`` (SGD epochs), ``rollout`` (the differentiable
  student rollout), ``parallel`` (the meta-gradient across devices);
* procedures: ``data``, ``checkpoint``, ``monitor``, ``expert`` and ``expert_store`` (train
  and store experts), ``distill`` and ``run_folder`` (the distillation loop and its files),
  ``evaluate``;
* commands: ``cli`` (flags, their checks, the runner) and the ``__main__`` of ``expert``,
  ``distill`` and ``evaluate``: the only code that reads flags.

Nothing is imported here, so that ``import mct_jax.models`` stays light.
"""

__version__ = '0.1.0'
