"""Expert training and storage on a tiny real (digits) run."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import assert_trees_close
from mct_jax import checkpoint, data, expert, expert_store, models, trajectory

K = 4


def _config(ds, **over):
    cfg = dict(image_shape=list(ds.image_shape), num_classes=ds.num_classes, width=8, depth=3,
               norm='instancenorm', act='relu', pool='avgpool', dataset='digits',
               train_images_per_class=20, zca=False, train_epochs=K, lr_teacher=0.01,
               batch_train=64, anchors=[0, K], smooth_anchors=False,
               save_full_trajectory=True, seed=0)
    cfg.update(over)
    return cfg


@pytest.fixture(scope='module')
def tiny():
    ds = data.load_dataset('digits', train_images_per_class=20)
    cfg = _config(ds)
    model = models.convnet(ds.image_shape, 10, 8, 3)
    return ds, cfg, model


@pytest.fixture(scope='module')
def trained(tiny, tmp_path_factory):
    ds, cfg, model = tiny
    folder = str(tmp_path_factory.mktemp('experts'))
    done = expert.train_experts(model, ds, folder, cfg, num_experts=2, seed=0)
    assert done == [0, 1]
    return folder


def test_recorded_betas_equal_betas_from_saved_full_trajectory(trained):
    folder = expert_store.expert_path(trained, 0)
    state = checkpoint.load_tree(os.path.join(folder, 'state'))
    snaps = checkpoint.load_tree(os.path.join(folder, 'full'))['snapshots']
    snapshots = [jax.tree.map(lambda a, t=t: a[t], snaps) for t in range(K + 1)]
    # independent float64 recomputation of eq. 9 from the stored snapshots
    leaves = [[np.float64(x) for x in jax.tree.leaves(s)] for s in snapshots]
    d = np.array([[np.sqrt(((a - b) ** 2).sum()) for a, b in zip(leaves[t], leaves[t - 1])]
                  for t in range(1, K + 1)])
    # conv biases feed an instance norm, so they get no gradient: frozen leaves, whose
    # betas use denominator 1 (the MCT authors' rule)
    total = d.sum(0)
    assert np.any(total == 0) and np.any(total > 0)
    betas = np.concatenate([np.zeros((1, d.shape[1])),
                            np.cumsum(d, 0) / np.where(total > 0, total, 1.0)])
    np.testing.assert_allclose(state['betas'], betas, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state['step_norms'], d, rtol=1e-4)
    # anchors are the first and last snapshots, exactly
    for t, i in [(0, 0), (K, 1)]:
        for a, b in zip(jax.tree.leaves(snapshots[t]),
                        jax.tree.leaves(jax.tree.map(lambda x: x[i], state['anchors']))):
            np.testing.assert_array_equal(a, b)


def test_trajectories_load_both_ways_and_agree_at_the_ends(trained):
    folder = expert_store.expert_path(trained, 1)
    mct = expert_store.load_trajectory(folder, 'mct')
    mtt = expert_store.load_trajectory(folder, 'full')
    assert mct.num_epochs == mtt.num_epochs == K
    for c in (0, K):
        for a, b in zip(jax.tree.leaves(trajectory.point(mct, c)),
                        jax.tree.leaves(trajectory.point(mtt, c))):
            np.testing.assert_array_equal(a, b)
    meta = json.load(open(os.path.join(folder, 'meta.json')))
    assert len(meta['test_acc']) == K + 1 and len(meta['train_acc']) == K


def test_storage_ratio(trained):
    folder = expert_store.expert_path(trained, 0)
    mct = checkpoint.folder_bytes(os.path.join(folder, 'state'))
    full = checkpoint.folder_bytes(os.path.join(folder, 'full'))
    assert mct < full


def test_seeds_differ_and_same_seed_reproduces(tiny, trained, tmp_path):
    ds, cfg, model = tiny
    a0 = checkpoint.load_tree(os.path.join(expert_store.expert_path(trained, 0), 'state'))
    a1 = checkpoint.load_tree(os.path.join(expert_store.expert_path(trained, 1), 'state'))
    assert not np.array_equal(a0['anchors']['conv0']['w'], a1['anchors']['conv0']['w'])
    # expert 1 again, alone, in a fresh folder: identical
    expert.train_experts(model, ds, str(tmp_path), cfg, num_experts=2, seed=0,
                         process_index=1, process_count=2)
    again = checkpoint.load_tree(os.path.join(expert_store.expert_path(str(tmp_path), 1), 'state'))
    for a, b in zip(jax.tree.leaves(a1), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resume_skips_complete_and_redoes_partial(tiny, trained, tmp_path):
    ds, cfg, model = tiny
    folder = str(tmp_path / 'e')
    shutil.copytree(trained, folder)
    assert expert.train_experts(model, ds, folder, cfg, num_experts=2, seed=0) == []
    # a partial expert (no meta.json, half-written state) is trained again
    os.remove(os.path.join(expert_store.expert_path(folder, 1), 'meta.json'))
    assert expert.train_experts(model, ds, folder, cfg, num_experts=3, seed=0) == [1, 2]
    assert len(expert_store.list_experts(folder)) == 3


def test_corrupt_expert_is_reported(trained, tmp_path):
    folder = str(tmp_path / 'e')
    shutil.copytree(trained, folder)
    state = os.path.join(expert_store.expert_path(folder, 0), 'state')
    for root, _, files in os.walk(state):
        for f in files:
            if f != '_CHECKPOINT_METADATA':
                with open(os.path.join(root, f), 'wb') as fh:
                    fh.write(b'garbage')
    with pytest.raises(checkpoint.CheckpointError, match='corrupt'):
        expert_store.load_trajectory(expert_store.expert_path(folder, 0))


def test_folder_with_other_settings_is_refused(tiny, trained):
    ds, cfg, model = tiny
    with pytest.raises(ValueError, match='width: folder has 8, this run asks for 16'):
        expert.train_experts(model, ds, trained, dict(cfg, width=16), 2, 0)
    with pytest.raises(ValueError, match='dataset'):
        expert.train_experts(model, ds, trained, dict(cfg, dataset='cifar10'), 2, 0)


@pytest.mark.slow
def test_mtt_needs_full_trajectory(tiny, tmp_path):
    ds, cfg, model = tiny
    cfg = dict(cfg, save_full_trajectory=False, train_epochs=1, anchors=[0, 1])
    expert.train_experts(model, ds, str(tmp_path), cfg, 1, 0)
    with pytest.raises(checkpoint.CheckpointError, match='save_full_trajectory'):
        expert_store.load_trajectory(expert_store.expert_path(str(tmp_path), 0), 'full')


def test_smoothed_anchors(tiny):
    ds, cfg, model = tiny
    run = expert.train_expert(model, expert.RealData.of(ds), jax.random.key(3), 4, [0, 2, 4],
                              batch_size=64, smooth_anchors=True, keep_snapshots=True)
    s = run.snapshots
    for i, (lo, hi) in [(1, (1, 3)), (2, (3, 4))]:
        want = jax.tree.map(lambda a, b: (a + b) / 2, s[lo], s[hi])
        for a, b in zip(jax.tree.leaves(run.anchors[i]), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(run.anchors[0]), jax.tree.leaves(s[0])):
        np.testing.assert_array_equal(a, b)


def _real(ds):
    return expert.RealData.of(ds)


def test_streamed_epoch_equals_the_epoch_on_device_bit_for_bit(tiny):
    """Raw images read from the host in groups and preprocessed per batch on the device give
    the parameters of one jitted epoch over the float32 images preprocessed beforehand (how
    experts were trained before), for any group size, in whole-batch gradient passes and
    in passes of 16 images."""
    ds, _, model = tiny
    params = model.init(jax.random.key(1))
    key = jax.random.key(2)
    # 200 images: 7 batches of 32 (the last one 8), read in groups of 1, 3 (7 = 2 x 3 + 1)
    # and 16 (all of them)
    for passes, groups in ((0, (1, 3, 16)), (16, (3,))):
        old = expert.make_epoch_fn(model.apply, 0.01, 32, model.loss_grad, microbatch=passes)
        want, want_norms, want_correct = old(params, ds.prepare(ds.x_train), ds.y_train, key)
        for group in groups:
            trainer = expert.EpochTrainer(model, 0.01, 32, group=group, microbatch=passes)
            got, norms, correct = trainer.epoch(params, _real(ds), key)
            assert_trees_close(got, want, exact=True)
            np.testing.assert_array_equal(norms, want_norms)
            assert int(correct) == int(want_correct)


def test_expert_resumes_within_an_epoch_bit_for_bit(tiny, tmp_path, monkeypatch):
    ds, _, model = tiny
    args = (model, _real(ds), jax.random.key(5), 3, [0, 3])
    straight = expert.train_expert(*args, batch_size=32, keep_snapshots=True)

    class Killed(Exception):
        pass
    calls = []

    def crash(name):
        calls.append(name)
        if name == 'expert_group' and calls.count(name) == 7:   # epoch 2, after its 3rd group
            raise Killed
    monkeypatch.setattr(checkpoint, 'crash_point', crash)
    progress = str(tmp_path / 'progress')
    trainer = expert.EpochTrainer(model, 0.01, 32, group=2)
    with pytest.raises(Killed):
        expert.train_expert(*args, trainer=trainer, keep_snapshots=True, progress_dir=progress,
                            checkpoint_seconds=0)
    calls.clear()
    monkeypatch.setattr(checkpoint, 'crash_point', calls.append)
    resumed = expert.train_expert(*args, trainer=trainer, keep_snapshots=True,
                                  progress_dir=progress, checkpoint_seconds=0)
    # 4 groups an epoch (7 batches of 32, 2 per group): only epoch 2's last group and
    # epoch 3 ran again.
    assert calls.count('expert_group') == 1 + 4
    for a, b in zip(straight.snapshots, resumed.snapshots):
        assert_trees_close(a, b, exact=True)
    np.testing.assert_array_equal(straight.step_norms, resumed.step_norms)
    assert straight.test_acc == resumed.test_acc and straight.train_acc == resumed.train_acc
