"""Named random streams: which part of a run draws from which key.

Every random choice of a run derives from ``jax.random.key(seed)`` by ``fold_in``, so that a
part's draws depend only on the seed and on where they are used, never on what ran before
(a resumed run repeats an uninterrupted one; a set evaluated twice gets the same networks).
:func:`stream` names the sub-key each part takes; the integers are the ones the project has
always folded in, so results stay those of earlier versions.

Distillation (``key(seed)`` of ``--seed``):

* the draws of the update made at iteration t = 0, 1, ... (its rollouts' augmentation;
  sample j >= 1 of it ``fold_in(that, j)``): ``fold_in(key, t)`` (:mod:`mct_jax.distill`;
  the (expert, start) pairs come from the seed and t by :func:`mct_jax.distill.sample_start`);
* ``distill/initial_images``: which real images start the set;
* ``distill/evaluation``: the evaluation networks at iteration i, ``fold_in(that, i)``.

The update keys share the integers with ``distill/evaluation`` (7): the key of the update at
iteration 7 is the evaluation stream's root, and that update's sample j >= 1 draws with the
key of the evaluation at iteration j. Evaluation networks and rollout samples use their keys
differently (initialisation and shuffling against start sampling and augmentation), and
separating them would change every published run, so they stay as they are.

The evaluate command (``key(seed)``): ``evaluate/random_subset`` draws the random real
images of ``--baseline=random``; ``evaluate/networks`` initialises and shuffles the
networks trained on a set; ``evaluate/baselines`` those of the report's baselines, network
i from ``fold_in(that, i)``.
"""

from __future__ import annotations

import jax

STREAMS = {
    'distill/initial_images': 10**9,
    'distill/evaluation': 7,
    'evaluate/random_subset': 1,
    'evaluate/networks': 2,
    'evaluate/baselines': 3,
}


def stream(key, name: str):
    """The sub-key of ``key`` that the part called ``name`` (a key of :data:`STREAMS`)
    draws from."""
    return jax.random.fold_in(key, STREAMS[name])
