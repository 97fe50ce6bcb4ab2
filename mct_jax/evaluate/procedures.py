"""What ``python -m mct_jax.evaluate`` runs, as functions of their choices (no flags): one
set on one network architecture, and a set on several architectures with DD-Ranking's
scores (``--models``, ``--report``)."""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from absl import logging

from mct_jax import data, interop, keys, models, monitor
from mct_jax.evaluate import make_evaluator, ranking, report, summarize


class Scoring(NamedTuple):
    """What DD-Ranking's scores need beyond the networks' recipe."""
    cache_dir: str          # baseline accuracies (:class:`ranking.BaselineCache`)
    data_key: dict          # what a baseline depends on: dataset, source, subset, shape
    full_lr: float
    full_epochs: int | None
    seed: int
    weight: float           # LRS's w


class Choices(NamedTuple):
    """How a set is evaluated across architectures."""
    models: Sequence[str]   # architecture names; the first ConvNet is the set's own
    model_config: dict      # the set's ConvNet (:func:`mct_jax.models.from_config`)
    num_eval: int
    epochs: int
    use_dsa: bool
    eval_lrs: dict = {}     # {architecture or '*': lr}; empty: the set's learned lr
    protocol: str = 'mct_jax'
    scoring: Scoring | None = None       # None: no scores (``--models`` alone)
    progress: str = 'auto'


def check_same_data(syn: dict, settings: dict, defaults: dict) -> None:
    """Raises ``ValueError`` when the data ``settings`` of this run differ from those the set
    was distilled with (``defaults``: the values of settings older sets do not record)."""
    for k, v in settings.items():
        stored = syn['settings'].get(k, defaults.get(k))
        if stored != v:
            raise ValueError(f'The synthetic set was distilled with {k}={stored!r} but this '
                             f'run has {k}={v!r}; pass the same data flags (or leave them out).')


def export(syn: dict, ds, path: str, folder: str, names: str) -> dict:
    """Writes the set at ``path`` for PyTorch into ``folder`` (:func:`interop.export_set`),
    saying when it never changed from its initial images; returns what was written."""
    prep = interop.export_set(syn, ds, folder, names)
    if not prep['learned']:
        logging.warning('%s never changed from its initial real images (every update of its '
                        'run was skipped); preprocessing.json says "learned": false.', path)
    logging.info('Wrote %s: %s, preprocessing.json%s.', folder,
                 ', '.join(prep['files'].values()), ', zca.pt' if ds.zca is not None else '')
    return {'export': folder, 'images': int(len(syn['images']))}


def baseline_set(ds, kind: str, ipc: int, lr: float, key):
    """(images, labels, lr, name) of a real-data baseline: ``random``, ``ipc`` random
    training images of each class (drawn from the ``evaluate/random_subset`` stream,
    :mod:`mct_jax.keys`), or ``full``, every
    training image."""
    if kind == 'random':
        images, labels = data.random_per_class(keys.stream(key, 'evaluate/random_subset'),
                                               ds.x_train, ds.y_train, ds.num_classes, ipc)
        return ds.prepare(images), labels, lr, f'random real, ipc {ipc}'
    return data.arrays.materialize(ds.x_train), ds.y_train, lr, 'full training set'


def one_model(ds, model, images, labels, lr, name, key, *, num_eval, epochs, use_dsa,
              progress='auto') -> dict:
    """The evaluation protocol on one set with one architecture: ``num_eval`` networks, their
    test accuracy (and validation accuracy when the data holds out a split)."""
    sets = tuple((jax.device_put(x), jax.device_put(y)) for x, y in ds.eval_splits().values())
    evaluator = make_evaluator(model, num_eval, epochs, use_dsa=use_dsa)
    with monitor.Progress(num_eval, 'evaluate', unit='net', mode=progress) as bar:
        acc = evaluator(keys.stream(key, 'evaluate/networks'), jax.device_put(images),
                        jax.device_put(labels), jnp.float32(lr), sets,
                        on_network=lambda i, a: bar.update(acc=round(100 * a[0], 2)),
                        prep=ds.preprocessing)
    s = summarize(acc[:, 0])
    logging.info('%s: %.2f +- %.2f %% over %d networks (%d images, lr %.4g, %d epochs)',
                 name, s['mean'], s['std'], num_eval, len(images), lr, epochs)
    out = dict(s, name=name, images=int(len(images)), lr=lr, epochs=epochs)
    if ds.has_validation:
        out['validation'] = summarize(acc[:, 1])
    return out


def architectures(ds, syn, choices: Choices, protocol: ranking.Protocol):
    """({name: Model}, {name: lr}, {name: baseline-cache identity}) of ``choices.models``:
    each lr is ``eval_lrs``' entry, else the set's learned lr; ``convnet`` is the ConvNet of
    the set's width, depth and norm (the protocol's width when it fixes one); a set
    distilled with a Flax module is evaluated on it by its import path."""
    built, lrs, cache_keys = {}, {}, {}
    width = protocol.convnet_width or choices.model_config['width']
    for raw in choices.models:
        name = raw if ':' in raw else models.canonical_name(raw)
        cache_keys[name] = {'name': name}
        if ':' in name:      # a user's Flax module, package.module:Name
            built[name] = models.from_module_path(name, ds.image_shape, ds.num_classes)
        elif name == 'convnet':
            config = dict(choices.model_config, width=width, model='convnet')
            built[name] = models.from_config(config)
            cache_keys[name].update({k: config[k] for k in ('width', 'depth', 'norm')})
        else:
            built[name] = models.get(name, ds.image_shape, ds.num_classes,
                                     choices.model_config['width'])
        lrs[name] = choices.eval_lrs.get(name, choices.eval_lrs.get('*', float(syn['lr'])))
    return built, lrs, cache_keys


def selection(path: str, syn: dict) -> str:
    """On which split the set at ``path`` was chosen: a run folder or its ``best.npz`` was
    chosen on its selection split; any other file (``synthetic.npz``, the last evaluated
    iteration) was not chosen at all."""
    chosen = os.path.isdir(path) or os.path.basename(path) == 'best.npz'
    return str(syn.get('selected_on', 'test')) if chosen else 'none (the set as saved)'


def cross_architecture(ds, syn, path: str, choices: Choices, key) -> dict:
    """Every architecture's networks on the set at ``path`` and, with ``choices.scoring``,
    the random-real and full-data baselines and DD-Ranking's scores against them. Returns
    the report (:func:`report.write_report` writes it)."""
    protocol = ranking.PROTOCOLS[choices.protocol if choices.scoring else 'mct_jax']
    built, lrs, arch_keys = architectures(ds, syn, choices, protocol)
    soft = syn['labels'].ndim == 2
    recipe = protocol.recipe(report.Recipe(choices.num_eval, choices.epochs,
                                           use_dsa=choices.use_dsa), soft)
    total = len(built) * recipe.num_nets
    with monitor.Progress(total, 'architectures', unit='net', mode=choices.progress) as bar:
        results = report.evaluate_models(
            built, syn['images'], syn['labels'], lrs, ds.eval_splits(), recipe,
            keys.stream(key, 'evaluate/networks'),
            on_network=lambda name, i, a: bar.update(model=name, acc=round(100 * a['test'], 2)),
            prep=ds.preprocessing)
    for name, r in results.items():
        logging.info('%s: test %.2f +- %.2f %% over %d networks (lr %.4g, %.0f s)', name,
                     r['test']['mean'], r['test']['std'], recipe.num_nets, r['lr'],
                     r['seconds'])
    selected = selection(path, syn)
    given = [f'{k}={v}' if k != '*' else str(v) for k, v in choices.eval_lrs.items()]
    out = {'title': f'Cross-architecture evaluation of {path}', 'set': path,
           'selected_on': selected,
           'recipe': dict(recipe._asdict(), lr=','.join(given) if given else 'learned'),
           'results': results}
    if selected == 'test':
        out['note'] = ('the set was selected on the test set (no validation split), so its '
                       'test accuracies are optimistic')
    if choices.scoring:
        out['protocol'] = protocol.describe()
        out['full_data'] = full_data(ds, choices.scoring.data_key)
        _add_scores(out, ds, syn, built, arch_keys, recipe, protocol, choices, key)
    return out


def full_data(ds, data_key: dict) -> str:
    """How the report names the full data: the run's training images, their subset and the
    validation split held out before the subset was taken (:func:`mct_jax.data.load_dataset`)."""
    k, held = data_key.get('train_images_per_class'), data_key.get('val_images_per_class')
    return (f'{len(ds.y_train):,} training images ('
            + (f'the first {k} of each class' if k else 'all of them')
            + (f'; the last {held} of each class held out for validation, not among them'
               if held else '') + ')')


def _add_scores(out, ds, syn, built, arch_keys, recipe, protocol, choices, key) -> None:
    """Random-real and full-data baselines of every architecture (cached) and the set's
    IOR, HLR and LRS against them (:func:`ranking.score_architectures`)."""
    scoring = choices.scoring
    soft = syn['labels'].ndim == 2
    labeller, labelled = (ranking.set_labeller(syn['settings'],
                                               models.from_config(choices.model_config))
                          if soft else (None, 'hard'))
    ipc = int(syn['settings'].get('ipc', len(syn['labels']) // ds.num_classes))
    ranking.score_architectures(
        out['results'], built, syn, ds, recipe, protocol, key,
        ranking.BaselineCache(scoring.cache_dir), scoring.data_key, arch_keys,
        full_lr=scoring.full_lr, full_epochs=scoring.full_epochs, ipc=ipc, seed=scoring.seed,
        labeller=labeller, labelled=labelled, weight=scoring.weight, progress=choices.progress)
    if soft:
        out['scores_note'] = (
            'soft labels: HLR trains the images once more with their classes, and the random '
            f'real images of IOR are labelled as the set is ({labelled}), as DD-Ranking '
            'defines them')
