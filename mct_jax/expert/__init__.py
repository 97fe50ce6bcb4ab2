"""Expert trajectories: train networks on real data and record them the MCT way.

:func:`train_experts` trains ``num_experts`` networks from fresh random inits with plain SGD
(lr 0.01, no momentum, batch 256, DSA on every batch) for K epochs (``docs/method.md``,
section 2), reading the real images from the host a group of batches at a time
(:class:`EpochTrainer`), so that memory follows the batch and not the dataset.
During training it keeps only the previous epoch's parameters and accumulates per-leaf step
norms (the d_l(t) of eq. 9); each finished expert is written by
:func:`mct_jax.expert_store.save_expert`. Re-running skips complete experts and resumes an
interrupted one after its last finished epoch. Expert i's randomness is
``fold_in(key(seed), i)``, so an expert does not depend on which run or process trained it.

The command ``python -m mct_jax.expert`` is :mod:`mct_jax.expert.__main__`.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from mct_jax import checkpoint, data, host, monitor, rules, train, trajectory
from mct_jax.expert_store import (CONFIG_FILE, ExpertRun, check_config, expert_path,
                                  is_complete, save_expert, write_expert_outputs)
from mct_jax.rules import Rule


# Batches handed to the device per call: enough work per call to hide the dispatch and the
# host's reading of the next group, little memory (16 CIFAR batches of 256 are 12 MB).
GROUP = 16
# Every check of an expert-training setting on its own (the anchors are checked by
# trajectory.check_anchor_epochs, the folder by the command).
RULES = (
    Rule('num_experts', lambda v: v >= 1, rules.AT_LEAST_1),
    Rule('train_epochs', lambda v: v >= 1, rules.AT_LEAST_1),
    Rule('batch_train', lambda v: v >= 1, rules.AT_LEAST_1),
    Rule('lr_teacher', lambda v: v > 0, rules.POSITIVE),
    Rule('microbatch', lambda v: v is None or v >= 0,
         'must be 0 (the whole batch in one pass) or a number of images'),
)


def _to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


class RealData(NamedTuple):
    """The real images an expert trains and is tested on: raw pixels (any image array of
    :mod:`mct_jax.data.arrays`) and the preprocessing that makes each batch network input
    on the device."""
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    prep: data.Preprocessing | None = None

    @classmethod
    def of(cls, ds: data.Dataset) -> 'RealData':
        return cls(ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.preprocessing)


class EpochTrainer:
    """Plain-SGD epochs on real images that stay on the host (``docs/method.md`` section 2:
    lr 0.01, no momentum, batch 256, DSA on every batch).

    An epoch is planned as :func:`mct_jax.train.epoch_plan` plans it and runs as groups of
    ``group`` batches: the host reads each group's rows (:func:`mct_jax.data.batches.
    read_ahead`, one group ahead), the device preprocesses and trains on them in one call
    (:func:`mct_jax.train.run_batches`). Device memory therefore follows the group, not the
    dataset, and the parameters equal those of :func:`mct_jax.train.sgd_epoch` over the
    same images on the device.

    ``microbatch``: images per gradient pass (:func:`mct_jax.train.microbatched`; None: the
    backend's default, :func:`mct_jax.train.default_microbatch`). It changes the temporaries
    of a step and the rounding of its gradient, not the gradient.
    """

    def __init__(self, model, lr: float, batch_size: int, group: int = GROUP,
                 microbatch: int | None = None):
        self.model, self.batch_size, self.group = model, batch_size, group
        self.microbatch = train.default_microbatch() if microbatch is None else microbatch
        self.tx = optax.sgd(lr)
        step = train.sgd_step(model.apply, self.tx, model.loss_grad, self.microbatch)
        self._plan = jax.jit(train.epoch_plan, static_argnums=(1, 2))
        self._run = jax.jit(lambda carry, xs, ys, keys, prep: train.run_batches(
            step, carry, xs, ys, keys, prep))
        self._norms = jax.jit(trajectory.leaf_norms)
        self._correct = jax.jit(lambda params, xs, ys, prep: train.predict_correct(
            model.apply, params, xs, ys, prep=prep))

    def accuracy(self, params, x, y, prep=None) -> float:
        """Top-1 accuracy on images ``x`` that stay on the host (read ``group`` prediction
        batches at a time, as training reads them)."""
        n, chunk = len(y), train.predict_batch() * self.group
        index = [np.arange(s, min(n, s + chunk)) for s in range(0, n, chunk)]
        counts = []
        for xs, ys in data.batches.read_ahead(x, y, index):
            counts.append(self._correct(params, xs, ys, prep))
            if len(counts) > 1:
                jax.block_until_ready(counts[-2])   # as in epoch(): one group queued
        correct = int(sum(int(c) for c in counts))
        host.release_freed_memory()   # the prediction's buffers, before training resumes
        return correct / n

    def groups(self, key, n: int) -> tuple[list, list]:
        """An epoch's groups of batch indices ([K, B] host arrays, the smaller last batch
        as a group of its own) and their augmentation keys ([K] device keys)."""
        full, rest, keys = self._plan(key, n, self.batch_size)
        full, rest = np.asarray(full), np.asarray(rest)
        starts = range(0, len(full), self.group)
        index = [full[i:i + self.group] for i in starts]
        key_groups = [keys[i:min(i + self.group, len(full))] for i in starts]
        if len(rest):
            index.append(rest[None])
            key_groups.append(keys[-1:])
        return index, key_groups

    def epoch(self, params, real: RealData, key, resume=None, on_group=None):
        """One epoch from ``params``: ``(params, step_norms [L], num_correct)``.

        ``resume``: ``(groups_done, carry)`` of an epoch interrupted after that many groups
        (the state ``on_group(groups_done, carry)`` was called with), to finish it.
        """
        index, keys = self.groups(key, len(real.y_train))
        done, carry = resume or (0, train.sgd_carry(params, self.tx))
        reader = data.batches.read_ahead(real.x_train, real.y_train, index[done:])
        for g, (xs, ys) in enumerate(reader, done + 1):
            previous = carry
            carry = self._run(carry, xs, ys, keys[g - 1], real.prep)
            # Dispatch is asynchronous: without this wait the loop would queue every group
            # of the epoch, each holding its images, and memory would follow the dataset.
            # Waiting for the group before keeps one group running and one queued.
            jax.block_until_ready(previous)
            # The buffers of the finished group (and, after the first, of compiling) go
            # back to the system, so that the heap does not grow from group to group.
            host.release_freed_memory()
            if on_group is not None:
                on_group(g, carry)
        new, _, correct = carry
        return new, self._norms(new, params), correct


def make_epoch_fn(apply_fn, lr: float, batch_size: int, loss_grad=None, microbatch: int = 0):
    """Jitted plain-SGD epoch over images on the device: ``(params, x, y, key) -> (params,
    step_norms [L], correct)`` (:func:`mct_jax.train.sgd_epoch`, with ``microbatch`` images
    per gradient pass; raw images need :class:`EpochTrainer`, which also keeps them on the
    host)."""
    tx = optax.sgd(lr)

    @jax.jit
    def epoch(params, x, y, key):
        new, _, correct = train.sgd_epoch(apply_fn, params, tx.init(params), tx, x, y, key,
                                          batch_size, loss_grad=loss_grad,
                                          microbatch=microbatch)
        return new, trajectory.leaf_norms(new, params), correct
    return epoch


def _leaves_to_npz(path: str, tree) -> None:
    checkpoint.write_npz(path, **{f'leaf_{i:03d}': np.asarray(a)
                                  for i, a in enumerate(jax.tree.leaves(tree))})


def _npz_to_tree(path: str, like):
    with np.load(path) as z:
        leaves = [z[f'leaf_{i:03d}'] for i in range(len(z.files))]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def _save_progress(folder: str, t: int, params, norms, train_acc, test_acc, anchors,
                   before_anchor, within=None) -> None:
    """The running state after epoch t, so a killed expert resumes at epoch t + 1; with
    ``within = (groups_done, carry)`` also how far epoch t + 1 got.

    A transient NumPy archive (written atomically, removed when the expert is saved): any
    process of a multi-process run can write it, which Orbax's collective saves do not allow.
    """
    arrays = {'epoch': np.int64(t), 'norms': np.stack(norms).astype(np.float32)
              if norms else np.zeros((0, len(jax.tree.leaves(params))), np.float32),
              'train_acc': np.asarray(train_acc, np.float64),
              'test_acc': np.asarray(test_acc, np.float64)}
    trees = [('params', params)] + [(f'anchor{a}', v) for a, v in anchors.items()] \
        + [(f'before{a}', v) for a, v in before_anchor.items()]
    if within is not None:
        groups, carry = within
        arrays['within_groups'] = np.int64(groups)
        trees.append(('within', carry))
    for prefix, tree in trees:
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f'{prefix}_{i:03d}'] = np.asarray(leaf)
    os.makedirs(folder, exist_ok=True)
    checkpoint.write_npz(os.path.join(folder, 'state.npz'), **arrays)


def _load_progress(folder: str, like_params, like_carry):
    """(t, params, norms, train_acc, test_acc, anchors, before_anchor, within) or None;
    ``within`` is (groups_done, carry) of epoch t + 1 when it was interrupted mid-way."""
    path = os.path.join(folder, 'state.npz')
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as z:
            st = {k: z[k] for k in z.files}

        def as_tree(prefix, like):
            treedef = jax.tree.structure(like)
            return jax.tree.unflatten(treedef, [st[f'{prefix}_{i:03d}']
                                                for i in range(treedef.num_leaves)])
        prefixes = {key.rpartition('_')[0] for key in st
                    if key.rpartition('_')[2].isdigit() and len(key.rpartition('_')[2]) == 3}
        anchors = {int(p[6:]): as_tree(p, like_params) for p in prefixes
                   if p.startswith('anchor')}
        before = {int(p[6:]): as_tree(p, like_params) for p in prefixes
                  if p.startswith('before')}
        within = None
        if 'within_groups' in st:
            within = (int(st['within_groups']), as_tree('within', like_carry))
        return (int(st['epoch']), as_tree('params', like_params), list(st['norms']),
                [float(a) for a in st['train_acc']], [float(a) for a in st['test_acc']],
                anchors, before, within)
    except Exception as e:  # a damaged file: start the expert again
        logging.warning('Ignoring an unreadable in-progress expert state %s (%s); the expert '
                        'restarts from epoch 0.', path, e)
        return None


def train_expert(model, real: RealData, key, num_epochs: int, anchor_epochs: Sequence[int], *,
                 trainer: EpochTrainer | None = None, lr: float = 0.01, batch_size: int = 256,
                 smooth_anchors: bool = False, keep_snapshots: bool = False,
                 progress_dir: str | None = None, checkpoint_seconds: float = 600.0,
                 on_epoch=None, log_prefix: str = '') -> ExpertRun:
    """Trains one expert, recording step norms and anchors without keeping past epochs.

    Args:
      model: a :class:`mct_jax.models.Model`.
      real: the real images (:class:`RealData`).
      key: the expert's PRNG key (init from ``fold_in(key, 0)``; epoch t uses
        ``fold_in(key, t)``).
      num_epochs: K.
      anchor_epochs: where to keep models, increasing from 0 to K.
      trainer: a shared :class:`EpochTrainer` (avoids recompiling per expert); else one is
        made with ``lr`` and ``batch_size``.
      smooth_anchors: the MCT authors' variant: an interior anchor a is replaced by
        mean(theta(a-1), theta(a+1)) and the last by mean(theta(K-1), theta(K)).
      keep_snapshots: also return all K+1 snapshots (the MTT format).
      progress_dir: if given, the running state is saved there after every epoch, and
        within an epoch every ``checkpoint_seconds`` (0: after every group of batches); a
        state found there is resumed. Resuming is bit-identical to an uninterrupted run:
        epoch t depends only on the parameters after epoch t - 1 and on ``fold_in(key, t)``,
        and a group only on the state after the group before.
      on_epoch: called as ``on_epoch(t, train_acc, test_acc)`` after each epoch.
    """
    anchor_epochs = trajectory.check_anchor_epochs(anchor_epochs, num_epochs)
    trainer = trainer or EpochTrainer(model, lr, batch_size)
    test = lambda params: trainer.accuracy(params, real.x_test, real.y_test, real.prep)
    params = model.init(jax.random.fold_in(key, 0))
    anchors: dict[int, Any] = {0: _to_numpy(params)}
    before_anchor: dict[int, Any] = {}   # theta(a-1), kept only while smoothing needs it
    norms, train_acc = [], []
    test_acc = [test(params)]
    done, within = 0, None
    in_memory = [_to_numpy(params)] if keep_snapshots and not progress_dir else None
    snap_path = lambda t: os.path.join(progress_dir, 'snapshots', f'epoch_{t:04d}.npz')
    if progress_dir:
        saved = _load_progress(progress_dir, params, train.sgd_carry(params, trainer.tx))
        if saved and keep_snapshots and not all(os.path.isfile(snap_path(t))
                                                for t in range(saved[0] + 1)):
            logging.warning('%sin-progress snapshots are incomplete; restarting the expert.',
                            log_prefix)
            saved = None
        if saved:
            done, params, norms, train_acc, test_acc, anchors, before_anchor, within = saved
            params = jax.tree.map(jnp.asarray, params)
            logging.info('%sresuming after epoch %d of %d%s', log_prefix, done, num_epochs,
                         f' (epoch {done + 1}: {within[0]} groups of batches done)'
                         if within else '')
        elif keep_snapshots:
            os.makedirs(os.path.dirname(snap_path(0)), exist_ok=True)
            _leaves_to_npz(snap_path(0), params)
    for t in range(done + 1, num_epochs + 1):
        prev = params
        last_save = [time.time()]

        def on_group(g, carry, t=t, prev=prev, last_save=last_save):
            if progress_dir and time.time() - last_save[0] >= checkpoint_seconds:
                _save_progress(progress_dir, t - 1, prev, norms, train_acc, test_acc, anchors,
                               before_anchor, within=(g, carry))
                last_save[0] = time.time()
                checkpoint.crash_point('expert_group')
        resume = None
        if within is not None:
            resume = (within[0], jax.tree.map(jnp.asarray, within[1]))
            within = None
        params, step_norm, correct = trainer.epoch(params, real, jax.random.fold_in(key, t),
                                                   resume, on_group)
        norms.append(np.asarray(step_norm))
        train_acc.append(float(correct) / len(real.y_train))
        test_acc.append(test(params))
        if smooth_anchors:   # trajectory.smoothing_sources, as the epochs pass
            if t + 1 in anchor_epochs[1:-1]:
                before_anchor[t + 1] = _to_numpy(params)
            if t - 1 in before_anchor:
                anchors[t - 1] = trajectory.tree_mean(before_anchor.pop(t - 1), params)
            if t == num_epochs:
                anchors[t] = trajectory.tree_mean(prev, params)
        elif t in anchor_epochs:
            anchors[t] = _to_numpy(params)
        if in_memory is not None:
            in_memory.append(_to_numpy(params))
        if progress_dir and t < num_epochs:
            if keep_snapshots:
                _leaves_to_npz(snap_path(t), params)
            _save_progress(progress_dir, t, params, norms, train_acc, test_acc, anchors,
                           before_anchor)
            checkpoint.crash_point('expert_epoch')
        if on_epoch is not None:
            on_epoch(t, train_acc[-1], test_acc[-1])
    snapshots = in_memory
    if keep_snapshots and progress_dir:   # epochs 0..K-1 were kept on disk, K is in memory
        snapshots = [_npz_to_tree(snap_path(t), params) for t in range(num_epochs)]
        snapshots.append(_to_numpy(params))
    return ExpertRun([anchors[a] for a in anchor_epochs], anchor_epochs,
                     np.stack(norms).astype(np.float32), snapshots, train_acc, test_acc)


def _package(run: ExpertRun | None, index: int, seconds: float, model, num_epochs: int,
             config: dict) -> dict:
    """One expert as fixed-shape arrays (zeros with index -1 when there is none), so every
    process can take part in the same all-gather."""
    if run is None:   # this process has no expert this round: zeros of the right shapes
        shapes = jax.eval_shape(model.init, jax.random.key(0))
        zeros = lambda n: jax.tree.map(lambda a: np.zeros((n,) + a.shape, a.dtype), shapes)
        stack = lambda trees: zeros(len(trees))
        run = ExpertRun([None] * len(config['anchors']), (),
                        np.zeros((num_epochs, len(jax.tree.leaves(shapes))), np.float32),
                        [None] * (num_epochs + 1) if config['save_full_trajectory'] else None,
                        [0.0] * num_epochs, [0.0] * (num_epochs + 1))
    else:
        stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
    out = {'index': np.int32(index), 'seconds': np.float64(seconds),
           'anchors': stack(run.anchors),
           'step_norms': np.asarray(run.step_norms, np.float32),
           'train_acc': np.asarray(run.train_acc, np.float64),
           'test_acc': np.asarray(run.test_acc, np.float64)}
    if run.snapshots is not None:
        out['snapshots'] = stack(run.snapshots)
    return out


def _unpackage(p: dict, config: dict) -> ExpertRun:
    num_anchors = len(config['anchors'])
    anchors = [jax.tree.map(lambda a, j=j: a[j], p['anchors']) for j in range(num_anchors)]
    snaps = None
    if 'snapshots' in p:
        n = p['step_norms'].shape[0] + 1
        snaps = [jax.tree.map(lambda a, j=j: a[j], p['snapshots']) for j in range(n)]
    return ExpertRun(anchors, tuple(config['anchors']), p['step_norms'], snaps,
                     [float(a) for a in p['train_acc']], [float(a) for a in p['test_acc']])


def train_experts(model, ds: data.Dataset, expert_dir: str, config: dict, num_experts: int,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  outputs: monitor.Outputs = monitor.Outputs(),
                  checkpoint_seconds: float = 600.0,
                  microbatch: int | None = None) -> list[int]:
    """Trains the missing experts of ``expert_dir`` that belong to this process.

    Expert i is trained by process ``i % process_count``; complete experts are skipped, and
    an expert interrupted part-way resumes after its last finished epoch (its running state
    is saved in ``expert_XXXX/progress/`` after every epoch). Returns the indices trained by
    this call. ``microbatch``: images per gradient pass (see :class:`EpochTrainer`), recorded
    in each expert's ``meta.json``.

    With several processes (``jax.distributed``) the experts are trained in rounds: in round
    n every process trains its n-th missing expert, the finished experts are all-gathered
    and process 0 writes them (Orbax writes NumPy data from process 0 only).
    """
    check_config(expert_dir, config)
    os.makedirs(expert_dir, exist_ok=True)
    if process_index == 0 and not os.path.isfile(os.path.join(expert_dir, CONFIG_FILE)):
        checkpoint.write_json(os.path.join(expert_dir, CONFIG_FILE), config)
    mine = [i for i in range(num_experts) if i % process_count == process_index]
    todo = [i for i in mine if not is_complete(expert_path(expert_dir, i))]
    logging.info('%d of %d experts already complete in %s; training %s', num_experts - len(todo)
                 if process_count == 1 else len(mine) - len(todo), num_experts, expert_dir, todo)
    # In a jax.distributed run the finished experts travel to process 0, which writes them.
    # Without one (separate jobs given process_index / process_count), each job writes its own.
    multi = process_count > 1 and jax.process_count() > 1
    if multi:
        # Every process takes part in each round's exchange, so all agree on the count.
        rounds = int(np.max(multihost_utils.process_allgather(np.int32(len(todo)))))
    else:
        rounds = len(todo)
    if not rounds:
        return []
    real = RealData.of(ds)
    trainer = EpochTrainer(model, config['lr_teacher'], config['batch_train'],
                           microbatch=microbatch)
    base = jax.random.key(seed)
    k = config['train_epochs']
    bar = monitor.Progress(len(todo) * k, 'experts', unit='epoch', mode=outputs.progress)

    def save(i, run, seconds):
        folder = expert_path(expert_dir, i)
        save_expert(folder, run, {'index': i, 'seed': seed, 'seconds': seconds,
                                  'images_per_second': k * len(real.y_train) / seconds,
                                  'microbatch': trainer.microbatch})
        if outputs.pictures:
            write_expert_outputs(folder, run, run.anchors[0], f'expert {i}')

    try:
        for n in range(rounds):
            i = todo[n] if n < len(todo) else -1
            run, seconds = None, 0.0
            if i >= 0:
                start = time.time()
                folder = expert_path(expert_dir, i)
                writer = None
                if outputs.tensorboard:
                    writer = monitor.EventWriter(os.path.join(expert_dir, 'tensorboard',
                                                              f'expert_{i:04d}'))

                def on_epoch(t, train_acc, test_acc, i=i, n=n, writer=writer):
                    bar.done = n * k + t - 1   # exact even when the expert resumed mid-way
                    bar.update(expert=i, epoch=t, train_acc=round(train_acc, 3),
                               test_acc=round(test_acc, 3))
                    if writer:
                        writer.scalars(t, {'train_accuracy': train_acc,
                                           'test_accuracy': test_acc})

                run = train_expert(model, real, jax.random.fold_in(base, i), k,
                                   config['anchors'], trainer=trainer,
                                   smooth_anchors=config['smooth_anchors'],
                                   keep_snapshots=config['save_full_trajectory'],
                                   progress_dir=os.path.join(folder, 'progress'),
                                   checkpoint_seconds=checkpoint_seconds,
                                   on_epoch=on_epoch, log_prefix=f'expert {i}: ')
                seconds = time.time() - start
                if writer:
                    writer.close()
                bar.write(f'expert {i} trained in {seconds:.0f}s: test acc '
                          f'{run.test_acc[-1]:.3f}')
            if not multi:
                save(i, run, seconds)
                continue
            # Orbax writes NumPy data from process 0 only: every process hands its expert of
            # this round to process 0 (an all-gather on the distributed runtime), which saves
            # them all; the others wait at the barrier until the files exist.
            package = _package(run, i, seconds, model, k, config)
            gathered = multihost_utils.process_allgather(package)
            if process_index == 0:
                for q in range(process_count):
                    got = jax.tree.map(lambda a, q=q: np.asarray(a)[q], gathered)
                    if int(got['index']) >= 0:
                        save(int(got['index']), _unpackage(got, config), float(got['seconds']))
            multihost_utils.sync_global_devices(f'mct_jax experts round {n}')
    finally:
        bar.close()
    return todo


