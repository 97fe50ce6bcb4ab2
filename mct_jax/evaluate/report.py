"""Cross-architecture evaluation of a set, and its scores against baselines.

:func:`evaluate_models` trains the evaluation protocol's networks of several architectures
on one set; :func:`scores` are DD-Ranking's scores of a set against the two baselines of
the same recipe; :class:`BaselineCache` keeps baseline accuracies on disk so that a second
report does not train them again; :func:`write_report` writes the Markdown table, the JSON
and a bar chart.

DD-Ranking's definitions (Li et al., "DD-Ranking: Rethinking the evaluation of dataset
distillation"), with accuracies as fractions, for each evaluation run (network) i:

* IOR_i = acc_i(synthetic images, their own labels) - acc_i(random real images, same ipc,
  same recipe): improvement over random;
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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mct_jax import checkpoint, expert_store, trajectory
from mct_jax import labels as label_kinds
from mct_jax.evaluate import make_evaluator, summarize


class Recipe(NamedTuple):
    """How evaluation networks are trained (``docs/method.md`` section 7)."""
    num_nets: int = 5
    epochs: int = 300
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    use_dsa: bool = True


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
    """Labels images as a distilled set's labels were made, for DD-Ranking's random
    baseline of a soft-label set: ``(labeller, description)``, where ``labeller(images,
    classes) -> [n, K]`` probabilities of network inputs; ``(None, 'hard')`` for a
    hard-label set.

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


def evaluate_models(models: dict, images, labels, lrs: dict, eval_sets: dict, recipe: Recipe,
                    key, on_network: Callable | None = None, prep=None) -> dict:
    """Trains ``recipe.num_nets`` networks of each architecture on (images, labels).

    Args:
      models: name -> :class:`mct_jax.models.Model`.
      lrs: name -> learning rate of that architecture's networks.
      eval_sets: split name ('test', 'validation') -> (x, y), the images each network is
        tested on after training.
      key: network i of every architecture starts from ``network_keys(key, n)[i]``.
      on_network: ``on_network(name, i, {split: accuracy})`` after each network.
      prep: the preprocessing of raw (integer) images (:mod:`mct_jax.data.preprocess`).
    Returns:
      name -> ``{split: summary (mean, std, all, in percent), 'lr': ..., 'seconds': ...}``.
    """
    splits = list(eval_sets)
    sets = tuple((jax.device_put(x), jax.device_put(y)) for x, y in eval_sets.values())
    out = {}
    for name, model in models.items():
        evaluate = make_evaluator(model, recipe.num_nets, recipe.epochs, recipe.batch_size,
                                  recipe.momentum, recipe.weight_decay, recipe.use_dsa)
        start = time.time()
        notify = None
        if on_network is not None:
            notify = lambda i, a, name=name: on_network(name, i, dict(zip(splits, a)))
        acc = np.asarray(evaluate(key, jax.device_put(images), jax.device_put(labels),
                                  jnp.float32(lrs[name]), sets, on_network=notify, prep=prep))
        out[name] = {split: summarize(acc[:, j]) for j, split in enumerate(splits)}
        out[name].update(lr=float(lrs[name]), seconds=time.time() - start)
    return out


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


def write_report(report: dict, folder: str, name: str = 'cross_architecture') -> str:
    """``NAME.md`` (one row per architecture: accuracy mean +- std per split, seconds, and
    the scores when present), ``NAME.json`` and ``NAME.png`` (bars with their std) in
    ``folder``. Returns the Markdown."""
    os.makedirs(folder, exist_ok=True)
    results = report['results']
    splits = [s for s in ('validation', 'test') if any(s in r for r in results.values())]
    has_scores = any('scores' in r for r in results.values())
    head = ['architecture'] + [f'{s} accuracy (%)' for s in splits] + ['lr', 'networks',
                                                                     'seconds']
    if has_scores:
        head += ['random real (%)', 'full data (%)', 'IOR', 'HLR', 'LRS']
    lines = [f'# {report.get("title", "Cross-architecture evaluation")}', '']
    for k in ('set', 'selected_on', 'recipe', 'note', 'full_data', 'scores_note'):
        if k in report:
            lines.append(f'- {k.replace("_", " ")}: {report[k]}')
    lines += ['', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for arch, r in results.items():
        row = [arch] + [f'{r[s]["mean"]:.2f} +- {r[s]["std"]:.2f}' for s in splits]
        row += [f'{r["lr"]:.4g}', str(len(r[splits[-1]]['all'])), f'{r["seconds"]:.0f}']
        if has_scores:
            sc = r.get('scores')
            row += ([f'{r["random"]["mean"]:.2f}', f'{r["full"]["mean"]:.2f}']
                    + [f'{sc[k]:.2f} +- {sc[k + "_std"]:.2f}' if k + '_std' in sc
                       else f'{sc[k]:.2f}' for k in ('IOR', 'HLR', 'LRS')]
                    if sc else ['-'] * 5)
        lines.append('| ' + ' | '.join(row) + ' |')
    md = '\n'.join(lines) + '\n'
    with open(os.path.join(folder, f'{name}.md'), 'w') as f:
        f.write(md)
    checkpoint.write_json(os.path.join(folder, f'{name}.json'), report)
    _bar_chart(results, splits[-1], os.path.join(folder, f'{name}.png'),
               report.get('title', ''))
    return md


def _bar_chart(results: dict, split: str, png: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(results)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    x = np.arange(len(names))
    series = [('synthetic', lambda r: r[split])]
    if any('random' in r for r in results.values()):
        series += [('random real', lambda r: r.get('random')),
                   ('full data', lambda r: r.get('full'))]
    width = 0.8 / len(series)
    for j, (label, get) in enumerate(series):
        vals = [get(results[n]) for n in names]
        ax.bar(x + (j - (len(series) - 1) / 2) * width,
               [v['mean'] if v else 0 for v in vals], width,
               yerr=[v['std'] if v else 0 for v in vals], capsize=3, label=label)
    ax.set_xticks(x, names)
    ax.set(ylabel=f'{split} accuracy (%)', title=title)
    ax.grid(alpha=0.3, axis='y')
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = png + '.tmp.png'
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


def baseline_key(kind: str, dataset: dict, arch: str, recipe: Recipe, lr: float,
                 ipc: int | None, seed: int) -> dict:
    """What a baseline accuracy depends on: the data (dataset, subset, preprocessing), the
    architecture, the recipe, the lr, the ipc (random real images) and the seed."""
    return {'baseline': kind, 'data': dataset, 'architecture': arch,
            'recipe': recipe._asdict(), 'lr': lr, 'ipc': ipc, 'seed': seed}
