"""DD-Ranking's scores of a distilled set (IOR, HLR, LRS) and the baselines they need.

DD-Ranking's definitions (Li et al., "DD-Ranking: Rethinking the evaluation of dataset
distillation"), with accuracies as fractions, for each evaluation run (network) i:

* IOR_i = acc_i(synthetic images, their own labels) - acc_i(random real images, same ipc,
  labelled the way the set is, same recipe): improvement over random;
* HLR_i = acc_i(full training set, hard labels) - acc_i(synthetic images, hard labels):
  what is left to recover (for a hard-label set its own accuracy; a soft-label set is
  trained once more on its images with their classes);
* LRS_i = (e^a - e^-1) / (e - e^-1), a = w IOR_i - (1 - w) HLR_i, w = 0.5 by default;

each score is the mean over runs (:func:`scores_per_run`; LRS is not linear, so the mean of
LRS_i is not the LRS of the mean accuracies). With IOR in [-1, 1] and HLR in [0, 1] (a set
no better than the full data), a lies in [-1, w]: LRS reaches 1 only with w = 1, and at
w = 0.5 a perfect set (full-data accuracy, 100 points above random) scores
(e^0.5 - e^-1) / (e - e^-1) = 0.545.

DD-Ranking's code (``ddranking`` 0.2.0) passes accuracies in percent to the exponential:
any set more than a few points below the full data then has a << -1 and scores the floor
-e^-1 / (e - e^-1) = -0.1565, so its LRS cannot tell such sets apart. Fractions keep LRS
within [0, 1], as its paper defines it; reported in percent.

The accuracies themselves depend on how networks are trained and which one is kept: a
:class:`Protocol`. ``mct_jax`` (the default) is this project's evaluation protocol
throughout; ``ddranking`` makes the package's choices so that its numbers can be matched
(``docs/evaluation.md``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mct_jax import checkpoint, data, expert_store, keys, monitor, trajectory
from mct_jax import labels as label_kinds
from mct_jax.evaluate import make_evaluator, summarize
from mct_jax.evaluate.report import Recipe

DDRANKING_LRS = (0.001, 0.005, 0.01, 0.05, 0.1)


class Protocol(NamedTuple):
    """How the accuracies behind the scores are taken.

    Attributes:
      name: how reports name it.
      test_every: 0 keeps each network's last epoch; k keeps its best test accuracy over
        checkpoints every k epochs (hard-label sets), ``test_every_soft`` for soft-label sets.
      lr_search: learning rates tried for the random baseline (and, with
        ``search_hard_run``, for a soft-label set's hard-label training); each run keeps the
        best on the test set. Empty: the set's lr.
      full_lr: the full-data baseline's lr; None: the experts' (``--lr_teacher``).
      full_lr_step: 0 drops the full-data lr x0.1 at half of its epochs; s every s epochs.
      full_dsa: whether the full-data baseline trains with DSA augmentation.
      convnet_width: the ConvNet's width for every accuracy; None: the set's own.
    """
    name: str
    test_every: int = 0
    test_every_soft: int = 0
    lr_search: tuple = ()
    search_hard_run: bool = False
    full_lr: float | None = None
    full_lr_step: int = 0
    full_dsa: bool = True
    convnet_width: int | None = None

    def recipe(self, base: Recipe, soft: bool) -> Recipe:
        """The recipe of the set's own networks and of the random baseline."""
        return base._replace(test_every=self.test_every_soft if soft else self.test_every)

    def full_recipe(self, base: Recipe, soft: bool, epochs: int = 0) -> Recipe:
        """The full-data baseline's recipe (``epochs``: 0 keeps the base recipe's)."""
        return self.recipe(base, soft)._replace(epochs=epochs or base.epochs,
                                                lr_step=self.full_lr_step,
                                                use_dsa=base.use_dsa and self.full_dsa)

    def describe(self) -> str:
        if self.name == 'mct_jax':
            return ('mct_jax: each network\'s last epoch; random real images at the set\'s lr; '
                    'full data at the experts\' lr with the same recipe')
        return (f'{self.name}: each network\'s best test accuracy over checkpoints every '
                f'{self.test_every} epochs ({self.test_every_soft} for soft labels, so test '
                f'accuracies are optimistic); random real images\' lr searched over '
                f'{", ".join(map(str, self.lr_search))} on the test set; full data at lr '
                f'{self.full_lr} x0.1 every {self.full_lr_step} epochs'
                + ('' if self.full_dsa else ', no augmentation')
                + (f'; ConvNet width {self.convnet_width}' if self.convnet_width else ''))


PROTOCOLS = {
    'mct_jax': Protocol('mct_jax'),
    # ddranking 0.2.0: LabelRobustScoreHard / LabelRobustScoreSoft (test_interval 10 / 20,
    # lr_list, REAL_DATA_TRAINING_CONFIG's CIFAR ConvNet-3 recipe, get_convnet's width).
    'ddranking': Protocol('ddranking', test_every=10, test_every_soft=20,
                          lr_search=DDRANKING_LRS, search_hard_run=True, full_lr=0.01,
                          full_lr_step=100, full_dsa=False, convnet_width=128),
}


def scores(synthetic: float, random: float, full: float, weight: float = 0.5,
           hard: float | None = None) -> dict:
    """IOR, HLR and LRS (DD-Ranking) of one run from accuracies in percent; all three in
    percent. ``hard``: the set's images trained with hard labels (default ``synthetic``, a
    hard-label set)."""
    if not 0 <= weight <= 1:
        raise ValueError(f'The LRS weight must lie in [0, 1], got {weight}.')
    ior = (synthetic - random) / 100
    hlr = (full - (synthetic if hard is None else hard)) / 100
    a = weight * ior - (1 - weight) * hlr
    lrs = (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))
    return {'IOR': 100 * ior, 'HLR': 100 * hlr, 'LRS': 100 * lrs, 'weight': weight}


def scores_per_run(own, random, hard, full, weight: float = 0.5) -> dict:
    """DD-Ranking's scores averaged over evaluation runs (see the module docstring).

    Args:
      own: per-run test accuracies (percent) of the set with its own labels;
      random: of random real images at the same ipc;
      hard: of the set's images with hard labels (``own`` for a hard-label set);
      full: of the full training set.
      Run i pairs the i-th accuracy of each list; the lists are cut to the shortest.
    Returns:
      ``IOR``, ``HLR``, ``LRS`` (means over runs, percent), their ``_std``, ``runs`` and
      ``weight``.
    """
    n = min(len(own), len(random), len(hard), len(full))
    if n == 0:
        raise ValueError('Scores need at least one run of each of the four accuracies.')
    per_run = [scores(own[i], random[i], full[i], weight, hard=hard[i]) for i in range(n)]
    out = {'runs': n, 'weight': weight}
    for k in ('IOR', 'HLR', 'LRS'):
        values = np.array([r[k] for r in per_run], np.float64)
        out[k], out[f'{k}_std'] = float(values.mean()), float(values.std())
    return out


def set_labeller(settings: dict, model):
    """Labels images as a distilled set's labels were made, for the random baseline of a
    soft-label set: ``(labeller, description)``, where ``labeller(images, classes) -> [n, K]``
    probabilities of network inputs; ``(None, 'hard')`` for a hard-label set.

    * ``teacher``: the same expert at the same epoch and temperature
      (:func:`mct_jax.labels.teacher`; the epoch defaults to the start window's upper bound,
      as distillation does);
    * ``learned``: the labels learned labels start from (:func:`mct_jax.labels.
      learned_init`, the experts at their last epoch), softmaxed: what the scheme gives an
      image before distillation moves it.

    ``model`` is the set's own network (the experts'); the experts are read from the
    settings' ``expert_dir``.
    """
    kind = settings.get('labels', 'hard')
    if kind == 'hard':
        return None, 'hard'
    folders = expert_store.list_experts(settings['expert_dir'])[:settings.get('max_experts')]
    method = 'full' if settings.get('method') == 'mtt' else 'mct'
    load = lambda f: expert_store.load_trajectory(f, method, settings.get('beta_mode', 'steps'))
    if kind == 'teacher':   # one expert: read only that one
        e = settings.get('label_expert', 0)
        traj = load(folders[e])
        epoch = settings.get('label_epoch')
        epoch = settings['max_start_epoch'] if epoch is None else epoch
        params = trajectory.point(traj, min(float(epoch), traj.num_epochs))
        temperature = settings.get('label_temperature', 1.0)
        return (lambda images, classes: label_kinds.teacher(model.apply, params, images,
                                                            temperature),
                f'teacher (expert {e}, epoch {epoch:g}, temperature {temperature:g})')
    params = [trajectory.point(t, t.num_epochs) for t in map(load, folders)]
    return (lambda images, classes: jax.nn.softmax(label_kinds.learned_init(
        model.apply, params, images, classes), axis=-1),
        f'learned labels\' initial values ({len(params)} experts, last epoch)')


def best_over_lrs(per_lr: dict) -> tuple[list, list]:
    """``{lr: [accuracy of run i]}`` -> (each run's best accuracy, the lr that gave it)."""
    lrs = list(per_lr)
    table = np.array([per_lr[lr] for lr in lrs], np.float64)   # [lrs, runs]
    best = table.argmax(axis=0)
    return table.max(axis=0).tolist(), [float(lrs[j]) for j in best]


def baseline(kind: str, ds, model, lrs, recipe: Recipe, key, ipc: int | None = None,
             labeller: Callable | None = None, progress: str = 'auto') -> dict:
    """Test accuracy of random real images (a fresh draw of ``ipc`` per class for each
    network, labelled by ``labeller`` when given: :func:`set_labeller`) or of the whole
    training set (``kind='full'``), ``recipe.num_nets`` networks trained with ``recipe``.

    ``lrs``: one learning rate, or several: each network is trained with each (same draw,
    same initialisation) and keeps its best test accuracy, DD-Ranking's lr search.
    Returns the summary (percent) with ``lr`` (the lr, or the list searched), ``best_lr``
    (per network, when searched), ``ipc`` and ``epochs``.
    """
    lrs = tuple(float(lr) for lr in np.atleast_1d(lrs))
    one_net = make_evaluator(model, **recipe._replace(num_nets=1)._asdict())
    test = ((jax.device_put(data.arrays.materialize(ds.x_test)), jax.device_put(ds.y_test)),)
    per_lr = {lr: [] for lr in lrs}
    if kind != 'random':   # every network trains on the same images: read them once
        x, y = jax.device_put(data.arrays.materialize(ds.x_train)), jax.device_put(ds.y_train)
    with monitor.Progress(recipe.num_nets * len(lrs), f'{kind} baseline', unit='net',
                          mode=progress) as bar:
        for i in range(recipe.num_nets):
            k = jax.random.fold_in(keys.stream(key, 'evaluate/baselines'), i)
            if kind == 'random':
                x, y = data.random_per_class(k, ds.x_train, ds.y_train, ds.num_classes, ipc)
                x = ds.prepare(x)
                if labeller is not None:
                    y = labeller(jnp.asarray(x), y)
                x, y = jax.device_put(x), jax.device_put(y)
            for lr in lrs:
                acc = float(one_net(k, x, y, jnp.float32(lr), test, prep=ds.preprocessing)[0, 0])
                per_lr[lr].append(acc)
                bar.update(acc=round(100 * acc, 2))
    accs, best_lr = best_over_lrs(per_lr)
    out = dict(summarize(accs), lr=lrs[0] if len(lrs) == 1 else list(lrs),
               ipc=ipc if kind == 'random' else None, epochs=recipe.epochs)
    if len(lrs) > 1:
        out['best_lr'] = best_lr
    return out


def hard_label_run(model, syn: dict, ds, lrs, recipe: Recipe, key) -> dict:
    """A soft-label set's images trained with their classes (HLR's synthetic accuracy), the
    same networks as the set's own evaluation; with several ``lrs`` each network keeps its
    best (:func:`best_over_lrs`). One compiled evaluator serves every lr (the lr is traced)."""
    run = make_evaluator(model, **recipe._asdict())
    x_test, y_test = ds.eval_splits()['test']
    test = ((jax.device_put(x_test), jax.device_put(y_test)),)
    images, classes = jax.device_put(syn['images']), jax.device_put(syn['classes'])
    per_lr = {lr: np.asarray(run(key, images, classes, jnp.float32(lr), test,
                                 prep=ds.preprocessing))[:, 0]
              for lr in tuple(float(lr) for lr in np.atleast_1d(lrs))}
    accs, best_lr = best_over_lrs(per_lr)
    out = summarize(accs)
    if len(per_lr) > 1:
        out.update(lr=list(per_lr), best_lr=best_lr)
    return out


def score_architectures(results: dict, built: dict, syn: dict, ds, recipe: Recipe,
                        protocol: Protocol, key, cache: 'BaselineCache', data_key: dict,
                        arch_keys: dict, *, full_lr: float, full_epochs: int, ipc: int,
                        seed: int, labeller: Callable | None = None, labelled: str = 'hard',
                        weight: float = 0.5, progress: str = 'auto') -> None:
    """Adds each architecture's baselines and scores to its entry of ``results``.

    ``results[name]`` holds the set's own evaluation (``test``, ``lr``) under
    ``protocol.recipe(recipe, soft)``; this adds ``random`` and ``full`` (from ``cache`` when
    computed before, keyed by ``data_key``, ``arch_keys[name]`` and the recipe), for a
    soft-label set ``hard_labels`` (the images trained with their classes), and ``scores``
    (:func:`scores_per_run`, with the protocol's name). ``labeller``/``labelled``: how the
    random real images are labelled (:func:`set_labeller`).
    """
    soft = syn['labels'].ndim == 2
    set_recipe = protocol.recipe(recipe, soft)
    full_recipe = protocol.full_recipe(recipe, soft, full_epochs)
    full_lr = protocol.full_lr or full_lr
    for name, model in built.items():
        r = results[name]
        random_lrs = protocol.lr_search or (r['lr'],)
        lr_key = list(random_lrs) if len(random_lrs) > 1 else random_lrs[0]
        todo = {
            'random': (dict(baseline_key('random', data_key, arch_keys[name], set_recipe,
                                         lr_key, ipc, seed), labels=labelled),
                       lambda: baseline('random', ds, model, random_lrs, set_recipe, key, ipc,
                                        labeller, progress)),
            'full': (baseline_key('full', data_key, arch_keys[name], full_recipe, full_lr,
                                  None, seed),
                     lambda: baseline('full', ds, model, full_lr, full_recipe, key,
                                      progress=progress)),
        }
        for kind, (bkey, compute) in todo.items():
            got = cache.get(bkey)
            if got is None:
                logging.info('%s: training the %s baseline (%d networks)...', name, kind,
                             recipe.num_nets)
                got = compute()
                cache.put(bkey, got)
            else:
                logging.info('%s: %s baseline from %s.', name, kind, cache.path(bkey))
            r[kind] = got
        hard = r['test']
        if soft:   # HLR compares hard labels with hard labels: the set's images once more
            logging.info('%s: training on the set\'s images with hard labels (for HLR)...',
                         name)
            hard = r['hard_labels'] = hard_label_run(
                model, syn, ds, protocol.lr_search if protocol.search_hard_run
                else r['lr'], set_recipe, keys.stream(key, 'evaluate/networks'))
        r['scores'] = dict(scores_per_run(r['test']['all'], r['random']['all'], hard['all'],
                                          r['full']['all'], weight), protocol=protocol.name)
        sc = r['scores']
        logging.info('%s: IOR %.2f, HLR %.2f, LRS %.2f (points of accuracy; LRS in %%; means '
                     'over %d runs; %s protocol)', name, sc['IOR'], sc['HLR'], sc['LRS'],
                     sc['runs'], protocol.name)


class BaselineCache:
    """Baseline accuracies on disk, one JSON file per key (dataset, subset, model, recipe,
    ipc, seed...), so that a report computes each baseline once."""

    def __init__(self, folder: str):
        self.folder = folder

    def path(self, key: dict) -> str:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return os.path.join(self.folder, f'{key.get("baseline", "baseline")}_{digest}.json')

    def get(self, key: dict) -> dict | None:
        path = self.path(key)
        if not os.path.isfile(path):
            return None
        try:
            stored = checkpoint.read_json(path)
        except checkpoint.CheckpointError:
            return None   # a damaged entry is computed again
        return stored['result'] if stored.get('key') == json.loads(json.dumps(key)) else None

    def put(self, key: dict, result: dict) -> None:
        checkpoint.write_json(self.path(key), {'key': key, 'result': result})


def baseline_key(kind: str, dataset: dict, arch: str, recipe: Recipe, lr: float,
                 ipc: int | None, seed: int) -> dict:
    """What a baseline accuracy depends on: the data (dataset, subset, preprocessing), the
    architecture, the recipe, the lr, the ipc (random real images) and the seed."""
    return {'baseline': kind, 'data': dataset, 'architecture': arch,
            'recipe': recipe._asdict(), 'lr': lr, 'ipc': ipc, 'seed': seed}
