"""The expert folder: how experts are stored, listed, checked and loaded.

One folder holds the experts of one setting (``--expert_dir``), written with Orbax and
atomic JSON::

    EXPERT_DIR/config.json              model, data and training settings of the folder
    EXPERT_DIR/expert_0000/state/       anchors [A, ...], anchor_epochs [A], betas [K+1, L],
                                        step_norms [K, L]            (MCT: O(model size))
    EXPERT_DIR/expert_0000/full/        all K+1 snapshots (only --save_full_trajectory; MTT)
    EXPERT_DIR/expert_0000/meta.json    accuracies per epoch; written last = expert complete
    EXPERT_DIR/expert_0000/metrics.jsonl, expert.png    per-epoch numbers and plots

Training lives in :mod:`mct_jax.expert`; this module is what both it and distillation need
to agree on.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import NamedTuple, Sequence

import jax
import numpy as np
from absl import logging

from mct_jax import checkpoint, pictures, trajectory

CONFIG_FILE = 'config.json'


META_FILE = 'meta.json'


# Where the data was read from: kept in config.json so that later commands can find it, but
# never compared (the same images may live in another folder on another machine).
LOCATION_KEYS = ('data_source', 'data_dir')
# Settings added after some folders were written, with the value those folders had.
CONFIG_DEFAULTS = {'val_images_per_class': 0, 'model': 'convnet'}


def stored_value(stored: dict, key: str):
    """``stored[key]``, or what a folder written before ``key`` existed had
    (:data:`CONFIG_DEFAULTS`)."""
    return stored.get(key, CONFIG_DEFAULTS.get(key))


class ExpertRun(NamedTuple):
    """What training one expert produces (all NumPy)."""
    anchors: list          # A parameter pytrees at the anchor epochs
    anchor_epochs: tuple   # (a_0=0, ..., a_{A-1}=K)
    step_norms: np.ndarray  # [K, L] float32, step_norms[t-1, l] = ||theta_l(t) - theta_l(t-1)||
    snapshots: list | None  # K+1 pytrees, only when the full trajectory is kept
    train_acc: list        # per epoch, on the augmented training batches
    test_acc: list         # per epoch, K+1 values (index 0 = the random init)


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


def read_config(expert_dir: str) -> dict:
    """The folder's ``config.json`` (``{}`` when it has none yet).

    Raises:
      checkpoint.CheckpointError: the file exists but cannot be read.
    """
    path = os.path.join(expert_dir, CONFIG_FILE)
    return checkpoint.read_json(path) if os.path.isfile(path) else {}


def check_config(expert_dir: str, config: dict, keys: Sequence[str] | None = None) -> dict:
    """Compares ``config`` with the folder's ``config.json`` and raises on any difference.

    Args:
      keys: only compare these keys (all keys of ``config`` when None).
    Returns:
      The stored config (``{}`` if the folder has none yet).
    """
    stored = read_config(expert_dir)
    if not stored:
        return {}
    keys = [k for k in (list(config) if keys is None else keys) if k not in LOCATION_KEYS]
    diffs = [f'{k}: folder has {stored_value(stored, k)!r}, this run asks for '
             f'{config.get(k)!r}'
             for k in keys if _norm(stored_value(stored, k)) != _norm(config.get(k))]
    if diffs:
        raise ValueError(f'{expert_dir} holds experts with other settings:\n  '
                         + '\n  '.join(diffs) + '\nUse another --expert_dir, or the same '
                         'settings as the stored experts.')
    return stored


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def load_experts(expert_dir: str, method: str, beta_mode: str, max_experts: int | None,
                 expected: dict) -> list:
    """Loads the complete experts of a folder as trajectories, after checking their settings."""
    if not os.path.isfile(os.path.join(expert_dir, CONFIG_FILE)):
        raise FileNotFoundError(f'No experts in {expert_dir}: train them first with '
                                f'python -m mct_jax.expert --expert_dir={expert_dir} '
                                '(and the same data and model flags).')
    check_config(expert_dir, expected, keys=list(expected))
    folders = list_experts(expert_dir)[:max_experts]
    if not folders:
        raise FileNotFoundError(f'{expert_dir} has no complete expert yet; run '
                                'python -m mct_jax.expert first.')
    kind = 'full' if method == 'mtt' else 'mct'
    trajs = []
    for f in folders:
        try:
            trajs.append(load_trajectory(f, kind, beta_mode))
        except checkpoint.CheckpointError as e:
            if 'no full trajectory' in str(e):
                raise
            logging.warning('Skipping expert %s: %s', f, e)
    if not trajs:
        raise FileNotFoundError(f'No readable expert in {expert_dir}.')
    return trajs


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
    pictures.plot_expert(betas, run.anchor_epochs, leaf_names(params_like), run.train_acc,
                        run.test_acc, os.path.join(folder, 'expert.png'), title)


