"""Expert trajectories: train networks on real data and store them the MCT way.

``python -m mct_jax.expert --flagfile=experiments/cifar10.cfg`` (or plain flags) trains
``--num_experts`` ConvNets from fresh random inits with plain SGD (lr 0.01, no momentum,
batch 256, DSA on every batch) for ``--train_epochs`` K epochs. During training it keeps only
the previous epoch's parameters and accumulates per-leaf step norms (the d_l(t) of eq. 9);
it writes, per expert, with Orbax:

    EXPERT_DIR/config.json              model, data and training settings of the folder
    EXPERT_DIR/expert_0000/state/       anchors [A, ...], anchor_epochs [A], betas [K+1, L],
                                        step_norms [K, L]            (MCT: O(model size))
    EXPERT_DIR/expert_0000/full/        all K+1 snapshots (only --save_full_trajectory; MTT)
    EXPERT_DIR/expert_0000/meta.json    accuracies per epoch; written last = expert complete

Re-running the same command skips complete experts. Expert i's randomness is
``fold_in(key(seed), i)``, so an expert does not depend on which run or process trained it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags, logging

from mct_jax import checkpoint, cli, data, monitor, train, trajectory, validate
from mct_jax import flags as shared

FLAGS = flags.FLAGS

CONFIG_FILE = 'config.json'
META_FILE = 'meta.json'


class ExpertRun(NamedTuple):
    """What training one expert produces (all NumPy)."""
    anchors: list          # A parameter pytrees at the anchor epochs
    anchor_epochs: tuple   # (a_0=0, ..., a_{A-1}=K)
    step_norms: np.ndarray  # [K, L] float32, step_norms[t-1, l] = ||theta_l(t) - theta_l(t-1)||
    snapshots: list | None  # K+1 pytrees, only when the full trajectory is kept
    train_acc: list        # per epoch, on the augmented training batches
    test_acc: list         # per epoch, K+1 values (index 0 = the random init)


def _to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def make_epoch_fn(apply_fn, lr: float, batch_size: int, loss_grad=None):
    """Jitted plain-SGD epoch: ``(params, x, y, key) -> (params, step_norms [L], correct)``.

    ``loss_grad``: the model's hand-written gradient (``Model.loss_grad``), if it has one.
    """
    tx = optax.sgd(lr)

    @jax.jit
    def epoch(params, x, y, key):
        new, _, correct = train.sgd_epoch(apply_fn, params, tx.init(params), tx, x, y, key,
                                          batch_size, loss_grad=loss_grad)
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
                   before_anchor) -> None:
    """The running state after epoch t, so a killed expert resumes at epoch t + 1.

    A transient NumPy archive (written atomically, removed when the expert is saved): any
    process of a multi-process run can write it, which Orbax's collective saves do not allow.
    """
    arrays = {'epoch': np.int64(t), 'norms': np.stack(norms).astype(np.float32),
              'train_acc': np.asarray(train_acc, np.float64),
              'test_acc': np.asarray(test_acc, np.float64)}
    for prefix, tree in [('params', params)] + [(f'anchor{a}', v) for a, v in anchors.items()] \
            + [(f'before{a}', v) for a, v in before_anchor.items()]:
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f'{prefix}_{i:03d}'] = np.asarray(leaf)
    os.makedirs(folder, exist_ok=True)
    checkpoint.write_npz(os.path.join(folder, 'state.npz'), **arrays)


def _load_progress(folder: str, like_params):
    """(t, params, norms, train_acc, test_acc, anchors, before_anchor) or None."""
    path = os.path.join(folder, 'state.npz')
    if not os.path.isfile(path):
        return None
    treedef = jax.tree.structure(like_params)
    num = treedef.num_leaves
    try:
        with np.load(path) as z:
            st = {k: z[k] for k in z.files}
        trees = {}
        for key in st:
            prefix, _, i = key.rpartition('_')
            if prefix and i.isdigit() and len(i) == 3:
                trees.setdefault(prefix, []).append(key)
        as_tree = lambda prefix: jax.tree.unflatten(
            treedef, [st[f'{prefix}_{i:03d}'] for i in range(num)])
        anchors = {int(p[6:]): as_tree(p) for p in trees if p.startswith('anchor')}
        before = {int(p[6:]): as_tree(p) for p in trees if p.startswith('before')}
        return (int(st['epoch']), as_tree('params'), list(st['norms']),
                [float(a) for a in st['train_acc']], [float(a) for a in st['test_acc']],
                anchors, before)
    except Exception as e:  # a damaged file: start the expert again
        logging.warning('Ignoring an unreadable in-progress expert state %s (%s); the expert '
                        'restarts from epoch 0.', path, e)
        return None


def train_expert(model, x_train, y_train, x_test, y_test, key, num_epochs: int,
                 anchor_epochs: Sequence[int], lr: float = 0.01, batch_size: int = 256,
                 smooth_anchors: bool = False, keep_snapshots: bool = False,
                 epoch_fn=None, log_prefix: str = '', progress_dir: str | None = None,
                 on_epoch=None) -> ExpertRun:
    """Trains one expert, recording step norms and anchors without keeping past epochs.

    Args:
      model: a :class:`mct_jax.models.Model`.
      x_train, y_train, x_test, y_test: device or NumPy arrays.
      key: the expert's PRNG key (init from ``fold_in(key, 0)``; epoch t uses
        ``fold_in(key, t)``).
      num_epochs: K.
      anchor_epochs: where to keep models, increasing from 0 to K.
      smooth_anchors: the MCT authors' variant: an interior anchor a is replaced by
        mean(theta(a-1), theta(a+1)) and the last by mean(theta(K-1), theta(K)).
      keep_snapshots: also return all K+1 snapshots (the MTT format).
      epoch_fn: a cached :func:`make_epoch_fn` (avoids recompiling per expert).
      progress_dir: if given, the running state is saved there after every epoch and a
        state found there is resumed (bit-identical to an uninterrupted run: epoch t only
        depends on the parameters after epoch t - 1 and on ``fold_in(key, t)``).
      on_epoch: called as ``on_epoch(t, train_acc, test_acc)`` after each epoch.
    """
    anchor_epochs = trajectory.check_anchor_epochs(anchor_epochs, num_epochs)
    epoch_fn = epoch_fn or make_epoch_fn(model.apply, lr, batch_size, model.loss_grad)
    params = model.init(jax.random.fold_in(key, 0))
    anchors: dict[int, Any] = {0: _to_numpy(params)}
    before_anchor: dict[int, Any] = {}   # theta(a-1), kept only while smoothing needs it
    norms, train_acc = [], []
    test_acc = [float(train.accuracy(model.apply, params, x_test, y_test))]
    done = 0
    in_memory = [_to_numpy(params)] if keep_snapshots and not progress_dir else None
    snap_path = lambda t: os.path.join(progress_dir, 'snapshots', f'epoch_{t:04d}.npz')
    if progress_dir:
        saved = _load_progress(progress_dir, params)
        if saved and keep_snapshots and not all(os.path.isfile(snap_path(t))
                                                for t in range(saved[0] + 1)):
            logging.warning('%sin-progress snapshots are incomplete; restarting the expert.',
                            log_prefix)
            saved = None
        if saved:
            done, params, norms, train_acc, test_acc, anchors, before_anchor = saved
            params = jax.tree.map(jnp.asarray, params)
            logging.info('%sresuming after epoch %d of %d', log_prefix, done, num_epochs)
        elif keep_snapshots:
            os.makedirs(os.path.dirname(snap_path(0)), exist_ok=True)
            _leaves_to_npz(snap_path(0), params)
    for t in range(done + 1, num_epochs + 1):
        prev = params
        params, step_norm, correct = epoch_fn(params, x_train, y_train, jax.random.fold_in(key, t))
        norms.append(np.asarray(step_norm))
        train_acc.append(float(correct) / x_train.shape[0])
        test_acc.append(float(train.accuracy(model.apply, params, x_test, y_test)))
        if smooth_anchors:
            if t + 1 in anchor_epochs[1:-1]:
                before_anchor[t + 1] = _to_numpy(params)
            if t - 1 in before_anchor:
                anchors[t - 1] = jax.tree.map(lambda a, b: (a + np.asarray(b)) / 2,
                                              before_anchor.pop(t - 1), params)
            if t == num_epochs:
                anchors[t] = jax.tree.map(lambda a, b: (np.asarray(a) + np.asarray(b)) / 2,
                                          prev, params)
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


# ----------------------------------------------------------------------------- storage

def expert_path(expert_dir: str, index: int) -> str:
    return os.path.join(expert_dir, f'expert_{index:04d}')


def save_expert(folder: str, run: ExpertRun, meta: dict) -> None:
    """Writes one expert; ``meta.json`` goes last and marks the expert complete."""
    if os.path.exists(folder):
        shutil.rmtree(folder)  # an incomplete earlier attempt
    betas = trajectory.betas_from_step_norms(run.step_norms, run.anchor_epochs)
    state = {'anchors': jax.tree.map(lambda *xs: np.stack(xs), *run.anchors),
             'anchor_epochs': np.asarray(run.anchor_epochs, np.int32),
             'betas': betas, 'step_norms': run.step_norms}
    checkpoint.save_tree(os.path.join(folder, 'state'), state)
    checkpoint.crash_point('expert_save')
    if run.snapshots is not None:
        checkpoint.save_tree(os.path.join(folder, 'full'),
                             {'snapshots': jax.tree.map(lambda *xs: np.stack(xs), *run.snapshots)})
    checkpoint.write_json(os.path.join(folder, META_FILE),
                          dict(meta, train_acc=run.train_acc, test_acc=run.test_acc,
                               has_full_trajectory=run.snapshots is not None))


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, META_FILE))


def list_experts(expert_dir: str) -> list[str]:
    """Complete expert folders in ``expert_dir``, sorted by index."""
    if not os.path.isdir(expert_dir):
        return []
    names = sorted(n for n in os.listdir(expert_dir) if n.startswith('expert_'))
    return [os.path.join(expert_dir, n) for n in names
            if is_complete(os.path.join(expert_dir, n))]


def load_trajectory(folder: str, kind: str = 'mct', beta_mode: str = 'steps'
                    ) -> trajectory.Trajectory:
    """Reads one expert as a :class:`~mct_jax.trajectory.Trajectory`.

    Args:
      kind: 'mct' (the stored anchors and betas) or 'full' (all snapshots; needs
        ``--save_full_trajectory`` at training time).
      beta_mode: for 'mct': 'steps' (eq. 9, the method), 'uniform' (t/K ablation) or
        'projected' (one global projected beta; needs the full trajectory).
    Raises:
      checkpoint.CheckpointError: missing or corrupt files, or no full trajectory.
    """
    state = checkpoint.load_tree(os.path.join(folder, 'state'))
    epochs = [int(e) for e in state['anchor_epochs']]
    anchors = [jax.tree.map(lambda a, i=i: a[i], state['anchors']) for i in range(len(epochs))]
    full_dir = os.path.join(folder, 'full')
    if kind == 'full' or beta_mode == 'projected':
        if not os.path.isdir(full_dir):
            raise checkpoint.CheckpointError(
                f'{folder} has no full trajectory (needed for --method=mtt and projected '
                'betas). Re-train the experts with --save_full_trajectory.')
        snaps = checkpoint.load_tree(full_dir)['snapshots']
        num = jax.tree.leaves(snaps)[0].shape[0]
        snapshots = [jax.tree.map(lambda a, i=i: a[i], snaps) for i in range(num)]
        if kind == 'full':
            return trajectory.full(snapshots)
        return trajectory.convexified(anchors, epochs,
                                      trajectory.projected_betas(snapshots, epochs))
    if beta_mode == 'uniform':
        betas = trajectory.uniform_betas(state['betas'].shape[1], epochs)
    elif beta_mode == 'steps':
        betas = state['betas']
    else:
        raise ValueError(f'Unknown beta mode {beta_mode!r}; use steps, uniform or projected.')
    return trajectory.convexified(anchors, epochs, betas)


def check_config(expert_dir: str, config: dict, keys: Sequence[str] | None = None) -> dict:
    """Compares ``config`` with the folder's ``config.json`` and raises on any difference.

    Args:
      keys: only compare these keys (all keys of ``config`` when None).
    Returns:
      The stored config (``{}`` if the folder has none yet).
    """
    path = os.path.join(expert_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    stored = checkpoint.read_json(path)
    keys = list(config) if keys is None else keys
    diffs = [f'{k}: folder has {stored.get(k)!r}, this run asks for {config.get(k)!r}'
             for k in keys if _norm(stored.get(k)) != _norm(config.get(k))]
    if diffs:
        raise ValueError(f'{expert_dir} holds experts with other settings:\n  '
                         + '\n  '.join(diffs) + '\nUse another --expert_dir, or the same '
                         'settings as the stored experts.')
    return stored


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def leaf_names(params) -> list[str]:
    """Readable names of a parameter tree's leaves, in ``jax.tree.leaves`` order."""
    paths, _ = jax.tree_util.tree_flatten_with_path(params)
    return [jax.tree_util.keystr(p, simple=True, separator='/') for p, _ in paths]


def write_expert_outputs(folder: str, run: ExpertRun, params_like, title: str = '') -> None:
    """``metrics.jsonl`` (one line per epoch) and ``expert.png`` (betas, accuracy)."""
    with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
        f.write(json.dumps({'epoch': 0, 'test_acc': run.test_acc[0]}) + '\n')
        for t in range(1, len(run.test_acc)):
            f.write(json.dumps({'epoch': t, 'train_acc': run.train_acc[t - 1],
                                'test_acc': run.test_acc[t],
                                'step_norm': run.step_norms[t - 1].tolist()}) + '\n')
    betas = trajectory.betas_from_step_norms(run.step_norms, run.anchor_epochs)
    monitor.plot_expert(betas, run.anchor_epochs, leaf_names(params_like), run.train_acc,
                        run.test_acc, os.path.join(folder, 'expert.png'), title)


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
                  progress: str = 'auto', tensorboard: bool = True,
                  pictures: bool = True) -> list[int]:
    """Trains the missing experts of ``expert_dir`` that belong to this process.

    Expert i is trained by process ``i % process_count``; complete experts are skipped, and
    an expert interrupted part-way resumes after its last finished epoch (its running state
    is saved in ``expert_XXXX/progress/`` after every epoch). Returns the indices trained by
    this call.

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
        from jax.experimental import multihost_utils
        rounds = int(np.max(multihost_utils.process_allgather(np.int32(len(todo)))))
    else:
        rounds = len(todo)
    if not rounds:
        return []
    x_train, y_train = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    epoch_fn = make_epoch_fn(model.apply, config['lr_teacher'], config['batch_train'],
                             model.loss_grad)
    base = jax.random.key(seed)
    k = config['train_epochs']
    bar = monitor.Progress(len(todo) * k, 'experts', unit='epoch', mode=progress)

    def save(i, run, seconds):
        folder = expert_path(expert_dir, i)
        save_expert(folder, run, {'index': i, 'seed': seed, 'seconds': seconds,
                                  'images_per_second': k * x_train.shape[0] / seconds})
        if pictures:
            write_expert_outputs(folder, run, run.anchors[0], f'expert {i}')

    try:
        for n in range(rounds):
            i = todo[n] if n < len(todo) else -1
            run, seconds = None, 0.0
            if i >= 0:
                start = time.time()
                folder = expert_path(expert_dir, i)
                writer = None
                if tensorboard:
                    writer = monitor.EventWriter(os.path.join(expert_dir, 'tensorboard',
                                                              f'expert_{i:04d}'))

                def on_epoch(t, train_acc, test_acc, i=i, n=n, writer=writer):
                    bar.done = n * k + t - 1   # exact even when the expert resumed mid-way
                    bar.update(expert=i, epoch=t, train_acc=round(train_acc, 3),
                               test_acc=round(test_acc, 3))
                    if writer:
                        writer.scalars(t, {'train_accuracy': train_acc,
                                           'test_accuracy': test_acc})

                run = train_expert(model, x_train, y_train, x_test, y_test,
                                   jax.random.fold_in(base, i), k, config['anchors'],
                                   smooth_anchors=config['smooth_anchors'],
                                   keep_snapshots=config['save_full_trajectory'],
                                   epoch_fn=epoch_fn, log_prefix=f'expert {i}: ',
                                   progress_dir=os.path.join(folder, 'progress'),
                                   on_epoch=on_epoch)
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


# ----------------------------------------------------------------------------- command line

def anchors_from_flags() -> tuple[int, ...]:
    k = FLAGS.train_epochs
    raw = FLAGS.anchors or ['0', str(k)]
    try:
        epochs = [int(a) for a in raw]
    except ValueError:
        raise ValueError(f'--anchors={",".join(raw)} must be integers, e.g. --anchors=0,{k}.')
    return trajectory.check_anchor_epochs(epochs, k)


def training_settings_from_flags() -> dict:
    """The expert-training flags stored in an expert folder's config (anchors aside)."""
    return dict(train_epochs=FLAGS.train_epochs, lr_teacher=FLAGS.lr_teacher,
                batch_train=FLAGS.batch_train, smooth_anchors=FLAGS.smooth_anchors,
                save_full_trajectory=FLAGS.save_full_trajectory, seed=FLAGS.seed)


def config_from_flags(ds: data.Dataset) -> dict:
    """Everything that must agree between runs writing into one expert folder."""
    return dict(shared.model_settings(ds), **shared.data_settings(),
                **training_settings_from_flags(), anchors=list(anchors_from_flags()))


def main(argv):
    del argv
    validate.raise_if_any(validate.expert_command_problems(), 'expert')
    ds = shared.load_data()
    config = config_from_flags(ds)
    model = shared.model_from_settings(config)
    train_experts(model, ds, shared.expert_dir(), config, FLAGS.num_experts, FLAGS.seed,
                  jax.process_index(), jax.process_count(), progress=FLAGS.progress,
                  tensorboard=FLAGS.tensorboard, pictures=FLAGS.pictures)


if __name__ == '__main__':
    cli.run(main)
