"""The evaluation protocol (``docs/method.md`` section 7).

Train ``num_eval`` freshly initialised networks on a (synthetic) training set with SGD
(lr = the learned student lr, momentum 0.9, weight decay 5e-4, batch 256, DSA, lr x0.1 at
half of the epochs) and report their accuracy on the real test set as mean +- std.

:func:`make_network_trainer` is one network's training and test, a traceable function of
its key; :func:`make_evaluator` runs ``num_eval`` of them, one compiled program called per
network so that progress shows between networks. The command ``python -m mct_jax.evaluate``
is :mod:`mct_jax.evaluate.__main__`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mct_jax import train


def make_network_trainer(model, epochs: int, batch_size: int = 256, momentum: float = 0.9,
                         weight_decay: float = 5e-4, use_dsa: bool = True, test_every: int = 0,
                         lr_step: int = 0):
    """``train_and_test(key, images, labels, lr, eval_sets, prep=None) -> accuracies
    [len(eval_sets)]``.

    Trains one network initialised from ``fold_in(key, 0)`` (epoch e shuffles and augments
    with ``fold_in(key, e + 1)``) and returns its accuracy in [0, 1] on each ``(x, y)`` of
    ``eval_sets`` (e.g. the validation and the test images). Raw (integer) images, the
    training ones or the evaluation ones, become network inputs batch by batch through
    ``prep`` (:mod:`mct_jax.data.preprocess`). A model with batch norm trains with batch
    statistics and is tested with its running ones. Traceable: ``jit``, ``lax.map`` or
    ``vmap`` it over keys; ``lr`` is traced, so a changing learned lr does not recompile.

    The reference protocol keeps the last epoch's network and multiplies the lr by 0.1 once,
    at half of the epochs. ``test_every=k`` instead tests after every k-th epoch and returns
    each split's best accuracy over those checkpoints (DD-Ranking's choice; epochs after the
    last multiple of k are not trained, since nothing would test them); ``lr_step=s``
    multiplies the lr by 0.1 every s epochs (PyTorch's ``StepLR``).
    """
    if test_every and epochs < test_every:
        raise ValueError(f'Testing every {test_every} epochs needs at least {test_every} '
                         f'epochs of training, got {epochs}: raise the epochs.')

    def train_and_test(k, images, labels, lr, eval_sets, prep=None):
        n = images.shape[0]
        steps_per_epoch = -(-n // min(batch_size, n))
        boundary = (epochs // 2) * steps_per_epoch

        def schedule(count):
            if lr_step:
                return lr * 0.1 ** (count // (lr_step * steps_per_epoch))
            return lr * jnp.where(count >= boundary, 0.1, 1.0)
        # PyTorch SGD order: weight decay is added to the gradient before momentum.
        tx = optax.chain(optax.add_decayed_weights(weight_decay),
                         optax.sgd(schedule, momentum=momentum))
        params = model.init(jax.random.fold_in(k, 0))
        if model.init_stats is None:
            def epoch(carry, e):
                p, s = carry
                p, s, _ = train.sgd_epoch(model.apply, p, s, tx, images, labels,
                                          jax.random.fold_in(k, e + 1), batch_size, use_dsa,
                                          model.loss_grad, prep)
                return (p, s), None
            state = (params, tx.init(params))
            apply_of = lambda state: model.apply
        else:
            def epoch(carry, e):
                p, st, s = carry
                p, st, s, _ = train.sgd_epoch_with_stats(
                    model.apply_stats, p, st, s, tx, images, labels,
                    jax.random.fold_in(k, e + 1), batch_size, use_dsa, prep)
                return (p, st, s), None
            state = (params, model.init_stats(), tx.init(params))
            apply_of = lambda state: (
                lambda p, x: model.apply_stats(p, state[1], x, False)[0])

        def test(state):
            apply = apply_of(state)
            return jnp.stack([train.predict_correct(apply, state[0], x, y, prep=prep)
                              / x.shape[0] for x, y in eval_sets])

        if not test_every:
            state, _ = jax.lax.scan(epoch, state, jnp.arange(epochs))
            return test(state)

        def checkpoint(state, c):
            state, _ = jax.lax.scan(epoch, state, c * test_every + jnp.arange(test_every))
            return state, test(state)
        _, accs = jax.lax.scan(checkpoint, state, jnp.arange(epochs // test_every))
        return accs.max(axis=0)
    return train_and_test


def network_keys(key, num_nets: int):
    """[num_nets] keys, network i's being ``fold_in(key, i)``."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_nets))


def make_evaluator(model, num_nets: int, epochs: int, batch_size: int = 256,
                   momentum: float = 0.9, weight_decay: float = 5e-4, use_dsa: bool = True,
                   test_every: int = 0, lr_step: int = 0):
    """Builds ``evaluate(key, images, labels, lr, eval_sets, on_network=None, prep=None)
    -> acc``.

    ``acc`` is [num_nets, len(eval_sets)]; network i is trained from
    ``network_keys(key, num_nets)[i]`` by :func:`make_network_trainer` (``test_every`` and
    ``lr_step`` as there), one compiled
    program called once per network (exposed as ``evaluate.network``);
    ``on_network(i, accuracies)`` is called after each.
    """
    one = jax.jit(make_network_trainer(model, epochs, batch_size, momentum, weight_decay,
                                       use_dsa, test_every, lr_step))
    keys_of = jax.jit(network_keys, static_argnums=1)

    def evaluate(key, images, labels, lr, eval_sets, on_network=None, prep=None):
        keys, accs = keys_of(key, num_nets), []
        for i in range(num_nets):
            accs.append(one(keys[i], images, labels, lr, tuple(eval_sets), prep))
            if on_network is not None:
                on_network(i, [float(a) for a in accs[-1]])
        return jnp.stack(accs)
    evaluate.network = one   # the compiled per-network program
    return evaluate


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


