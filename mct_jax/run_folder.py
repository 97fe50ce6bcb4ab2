"""The files of one distillation run, in one place.

``--out_dir`` holds::

    settings.json   every setting; a run resumes only with the same ones
    synthetic.npz   latest evaluated synthetic set: images, labels, lr, images_display, ...
    best.npz        the best evaluated one by the selection split (validation when the run
                    has one, else test; ``selected_on`` says which), never replaced by a
                    worse or broken set
    metrics.jsonl   one JSON line per iteration and per evaluation
    checkpoint/     Orbax: the whole state (and checkpoint.prev/, the one before)
    tensorboard/    the same metrics and the image grids as TensorBoard events
    synthetic.png   the latest synthetic images (one row per class; images/ keeps every
                    evaluation's grid), progress.png: accuracy, loss and learned lr curves

The distillation loop (:mod:`mct_jax.distill`) calls :meth:`RunFolder.restore`,
:meth:`RunFolder.record_evaluation` and :meth:`RunFolder.record_iteration`; everything
written to disk happens here. In a multi-process run only process 0 writes.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mct_jax import checkpoint, monitor, pictures

SETTINGS_FILE = 'settings.json'
METRICS_FILE = 'metrics.jsonl'
# Settings that may differ when a run is resumed: extending it, computing the same
# meta-gradient another way, or reading the data from another folder.
RESUMABLE_CHANGES = ('iterations', 'meta_grad', 'remat', 'residual_budget_gb', 'data_source',
                     'data_dir')


class RunFolder:
    """Writes (and on resume reads back) one run's files.

    Args:
      path: the run folder.
      settings: every setting of the run, JSON-able; stored in ``settings.json`` and in
        each saved synthetic set.
      to_display: maps preprocessed images to [0, 1] for pictures.
      class_names: for the image grids.
      title: of the progress plot.
      primary: whether this process writes (process 0 of a multi-process run).
      outputs: whether TensorBoard events and pictures are written (its ``progress`` is the
        caller's).
      selected_on: the split whose accuracy chooses ``best.npz``, 'validation' or 'test'.
      added_defaults: settings added to the library after some runs were written, with the
        value those runs had; a folder without them resumes as if it had them.
    """

    def __init__(self, path: str, settings: dict, to_display: Callable, class_names: Sequence,
                 title: str = '', primary: bool = True,
                 outputs: monitor.Outputs = monitor.Outputs(), selected_on: str = 'test',
                 added_defaults: dict | None = None):
        self.path, self.settings = path, settings
        self.added_defaults = json.loads(json.dumps(added_defaults or {}))
        self.selected_on = selected_on
        self.best_iteration = None
        self.to_display, self.class_names, self.title = to_display, class_names, title
        self.primary = primary
        self.tensorboard = outputs.tensorboard and primary
        self.pictures = outputs.pictures and primary
        self.best = -np.inf
        self.lines = 0            # metrics lines written so far (kept in the checkpoint)
        self.metrics = self.writer = self.background = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # -- opening

    def check_settings(self) -> None:
        """Creates the folder and stores the settings, or refuses a folder that holds a run
        with other settings (``--iterations`` may grow, see :data:`RESUMABLE_CHANGES`)."""
        if not self.primary:
            return
        os.makedirs(self.path, exist_ok=True)
        path = self.file(SETTINGS_FILE)
        if not os.path.isfile(path):
            checkpoint.write_json(path, self.settings)
            return
        stored = dict(self.added_defaults, **checkpoint.read_json(path))
        mine = dict(self.added_defaults, **json.loads(json.dumps(self.settings)))  # as stored
        diffs = [f'{k}: folder has {stored.get(k)!r}, this run asks for {mine.get(k)!r}'
                 for k in sorted(set(stored) | set(mine))
                 if k not in RESUMABLE_CHANGES and stored.get(k) != mine.get(k)]
        if diffs:
            raise ValueError(f'{self.path} holds a run with other settings:\n  '
                             + '\n  '.join(diffs) + '\nUse another --out_dir to start a new '
                             'run, or the same settings to resume this one.')

    def restore(self, opt_state, place: Callable):
        """``(syn, opt_state, iteration)`` of the last checkpoint, or None when there is none.

        ``opt_state`` gives the optimiser state's structure; ``place`` puts arrays where the
        loop keeps them. A damaged latest checkpoint falls back to the previous one (a
        warning says so); the best accuracy so far becomes the larger of the checkpoint's
        and ``best.npz``'s, so a resumed run never replaces ``best.npz`` with a worse set.
        """
        path = self.file('checkpoint')
        if not any(os.path.isdir(path + sfx) for sfx in checkpoint.FALLBACKS):
            return None
        try:
            tree, _ = checkpoint.load_tree_or_previous(path)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(
                f'{e} Nothing was overwritten; remove {path}* to restart this run from '
                'scratch.') from e
        treedef = jax.tree.structure(opt_state)
        opt_state = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in tree['opt']])
        syn = jax.tree.map(jnp.asarray, tree['syn'])
        syn, opt_state = place((syn, opt_state))
        self.best = float(tree['best'])
        best_path = self.file('best.npz')
        if os.path.isfile(best_path):
            try:
                with np.load(best_path) as z:
                    key = ('val_accuracy_mean' if self.selected_on == 'validation'
                           else 'accuracy_mean')
                    self.best = max(self.best, float(z[key]))
                    self.best_iteration = int(z['iteration'])
            except Exception as e:  # a damaged best.npz may be replaced by the next best
                logging.warning('Cannot read %s (%s); it will be replaced by the next '
                                'evaluated set.', best_path, e)
        self.lines = int(tree['metrics_lines'])
        return syn, opt_state, int(tree['iteration'])

    def open(self, resumed_at: int | None) -> None:
        """Opens the metrics file (cut back to the checkpoint's lines on resume), the event
        writer and the background thread that draws pictures."""
        path = self.file(METRICS_FILE)
        if self.primary:
            kept = []
            if resumed_at is not None:
                with open(path) as f:
                    kept = f.read().splitlines()[:self.lines]
            with open(path, 'w') as f:
                f.write(''.join(line + '\n' for line in kept))
        self.metrics = open(path if self.primary else os.devnull, 'a')
        if self.tensorboard:
            self.writer = monitor.EventWriter(self.file('tensorboard'), purge_step=resumed_at)
        self.background = monitor.Background()

    def close(self) -> None:
        """Flushes everything; waits for pictures still being drawn (they read the
        metrics)."""
        if self.metrics is not None:
            self.metrics.flush()
        if self.background is not None:
            self.background.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()

    # -- records

    def _log(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + '\n')
        self.metrics.flush()
        self.lines += 1

    def record_iteration(self, record: dict, fault: int) -> None:
        """One metrics line per distillation iteration, and its TensorBoard scalars
        (``fault``: the fault's code, 0 for none)."""
        self._log(record)
        if self.writer:
            self.writer.scalars(record['iteration'], {
                'train/matching_loss': record['loss'], 'train/learned_lr': record['lr'],
                'train/seconds_per_iteration': record['seconds'], 'train/fault': fault})

    def record_evaluation(self, iteration: int, syn, labels, summaries: dict,
                          opt_state, classes=None, changed: bool = True) -> bool:
        """Everything an evaluation writes, in crash-safe order: the metrics line, the
        latest and (if better on the selection split) best synthetic sets, events and
        pictures, then the checkpoint (which marks all of it done). ``summaries``: split
        name -> summary, 'test' always, 'validation' when the run has one. ``labels``: [n]
        classes or [n, K] probabilities; ``classes``: each image's class, for pictures (the
        labels themselves when they are classes); ``changed``: whether the set differs from
        the one the run started from (saved with it). Returns whether the set is the best
        so far."""
        classes = np.asarray(labels if classes is None else classes)
        lr = float(syn['lr'])
        record = {'iteration': iteration, 'eval': summaries['test']}
        if 'validation' in summaries:
            record['val'] = summaries['validation']
        self._log(dict(record, selected_on=self.selected_on, lr=lr))
        self._save_set('synthetic.npz', syn, labels, classes, iteration, summaries, changed)
        score = summaries[self.selected_on]['mean']
        improved = score > self.best
        if improved:
            self.best, self.best_iteration = score, iteration
            self._save_set('best.npz', syn, labels, classes, iteration, summaries, changed)
        if self.writer:
            scalars = {'eval/accuracy_mean': summaries['test']['mean'],
                       'eval/accuracy_std': summaries['test']['std'], 'eval/best': self.best}
            if 'validation' in summaries:
                scalars['eval/val_accuracy_mean'] = summaries['validation']['mean']
            self.writer.scalars(iteration, scalars)
            self.writer.flush()
        if self.pictures:
            self.background.submit(self._draw, np.asarray(syn['images']), classes, iteration)
        self._save_checkpoint(syn, opt_state, iteration)
        return improved

    def _save_set(self, name, syn, labels, classes, iteration, summaries,
                  changed: bool = True) -> None:
        """A synthetic set with its accuracies: ``accuracy_mean``/``_std`` on the test set,
        ``val_accuracy_mean``/``_std`` on the validation split when there is one,
        ``selected_on``, the split that chooses ``best.npz``, and ``changed``, False for a
        set still equal to the run's initial one. Soft labels are saved as
        probabilities ``labels`` [n, K], with ``classes`` [n] and, when learned, their
        ``label_logits``."""
        if not self.primary:
            return
        images = np.asarray(syn['images'])
        extra = {}
        if np.ndim(labels) == 2:
            extra.update(classes=np.asarray(classes, np.int32),
                         labels=np.asarray(labels, np.float32))
            if 'label_logits' in syn:
                extra['label_logits'] = np.asarray(syn['label_logits'], np.float32)
        else:
            extra['labels'] = np.asarray(labels)
        if 'validation' in summaries:
            extra.update(val_accuracy_mean=np.float64(summaries['validation']['mean']),
                         val_accuracy_std=np.float64(summaries['validation']['std']))
        checkpoint.write_npz(self.file(name), images=images, **extra,
                             lr=np.float32(syn['lr']), iteration=np.int64(iteration),
                             changed=np.bool_(changed),
                             accuracy_mean=np.float64(summaries['test']['mean']),
                             accuracy_std=np.float64(summaries['test']['std']),
                             selected_on=np.asarray(self.selected_on),
                             images_display=self.to_display(images).astype(np.float32),
                             class_names=np.asarray(self.class_names),
                             settings=np.asarray(json.dumps(self.settings)))

    def _save_checkpoint(self, syn, opt_state, iteration) -> None:
        if not self.primary:
            return
        checkpoint.save_tree(self.file('checkpoint'), {
            'syn': syn, 'opt': jax.tree.leaves(opt_state),
            'iteration': np.int64(iteration), 'best': np.float64(self.best),
            'metrics_lines': np.int64(self.lines)}, keep_previous=True)

    def _draw(self, images, labels, iteration) -> None:
        """Runs on the background thread, from NumPy copies."""
        grid = pictures.image_grid(self.to_display(images), labels, self.class_names)
        os.makedirs(self.file('images'), exist_ok=True)
        pictures.save_png(os.path.join(self.file('images'), f'iteration_{iteration:06d}.png'),
                         grid)
        pictures.save_png(self.file('synthetic.png'), grid)
        if self.writer:
            self.writer.image('synthetic_images', iteration, grid)
        pictures.plot_distillation(self.file(METRICS_FILE), self.file('progress.png'),
                                  self.title)
