"""mct_jax: dataset distillation by trajectory matching (MCT and MTT) in JAX.

Modules: ``models`` (ConvNet), ``data`` (datasets, ZCA), ``augment`` (DSA), ``trajectory``
(betas, convexified trajectories), ``train`` (SGD epochs), ``expert`` (expert trajectories),
``rollout`` (differentiable student rollout), ``distill`` (MTT/MCT), ``evaluate``.
Nothing is imported here so that ``import mct_jax.models`` stays light.
"""

__version__ = '0.1.0'
