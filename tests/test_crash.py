"""Crash and resume for real: the command lines are killed with SIGKILL at several points
(during an iteration, an evaluation, a checkpoint write; an expert mid-training and
mid-save) and re-run; the results must be bit-identical to uninterrupted runs."""

import json
import os
import shutil
import signal

import numpy as np
import pytest

from conftest import run_command
from mct_jax import checkpoint

FLAGS_ = ['--dataset=digits', '--train_images_per_class=10', '--width=8', '--depth=3',
          '--num_experts=2', '--train_epochs=4', '--batch_train=32', '--save_full_trajectory',
          '--ipc=2', '--syn_steps=3', '--expert_epochs=1', '--max_start_epoch=2',
          '--lr_img=100', '--iterations=8', '--eval_every=2', '--num_eval=2',
          '--eval_epochs=4', '--progress=none']


def _run(module, *args, crash_at=None):
    proc = run_command(module, *FLAGS_, *args, devices=1, check=False,
                       **({'MCT_JAX_CRASH_AT': crash_at} if crash_at else {}))
    if crash_at:
        assert proc.returncode == -signal.SIGKILL, (crash_at, proc.stderr[-2000:])
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _metrics(folder):
    with open(os.path.join(folder, 'metrics.jsonl')) as f:
        return [{k: v for k, v in json.loads(line).items() if k != 'seconds'} for line in f]


def _assert_same_run(a, b):
    for name in ('synthetic.npz', 'best.npz'):
        with np.load(os.path.join(a, name)) as x, np.load(os.path.join(b, name)) as y:
            for k in ('images', 'lr', 'iteration', 'accuracy_mean'):
                np.testing.assert_array_equal(x[k], y[k], err_msg=f'{name}:{k}')
    assert _metrics(a) == _metrics(b)


@pytest.fixture(scope='module')
def experts(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('experts') / 'e')
    _run('expert', f'--expert_dir={folder}')
    return folder


@pytest.mark.slow
def test_expert_generation_survives_kills(experts, tmp_path):
    folder = str(tmp_path / 'e')
    # killed after epoch 2 of expert 0 (its state saved), then while saving expert 0,
    # then after epoch 2 of expert 1 (expert 0 is redone from scratch: its save was torn)
    _run('expert', f'--expert_dir={folder}', crash_at='expert_epoch:2')
    assert os.path.isdir(os.path.join(folder, 'expert_0000', 'progress'))
    proc = _run('expert', f'--expert_dir={folder}', crash_at='expert_save:1')
    assert 'resuming after epoch 2 of 4' in proc.stderr
    _run('expert', f'--expert_dir={folder}', crash_at='expert_epoch:5')
    _run('expert', f'--expert_dir={folder}')
    for i in range(2):
        for part in ('state', 'full'):
            a = checkpoint.load_tree(os.path.join(experts, f'expert_{i:04d}', part))
            b = checkpoint.load_tree(os.path.join(folder, f'expert_{i:04d}', part))
            for x, y in zip(_leaves(a), _leaves(b)):
                np.testing.assert_array_equal(x, y)
        ma = checkpoint.read_json(os.path.join(experts, f'expert_{i:04d}', 'meta.json'))
        mb = checkpoint.read_json(os.path.join(folder, f'expert_{i:04d}', 'meta.json'))
        assert ma['test_acc'] == mb['test_acc'] and ma['train_acc'] == mb['train_acc']
        assert not os.path.exists(os.path.join(folder, f'expert_{i:04d}', 'progress'))


def _leaves(tree):
    import jax
    return jax.tree.leaves(tree)


@pytest.mark.slow
def test_distillation_survives_kills_at_every_kind_of_point(experts, tmp_path):
    straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    _run('distill', f'--expert_dir={experts}', f'--out_dir={straight}')
    kills = ['iteration:3',            # mid-run, between evaluations
             'evaluate:1',             # during the evaluation at iteration 4 (first net done)
             'checkpoint_written:1',   # checkpoint at 4 written, not yet swapped in
             'checkpoint_swap:2',      # old checkpoint moved aside, new not yet in place
             'iteration:2']
    for crash_at in kills:
        _run('distill', f'--expert_dir={experts}', f'--out_dir={killed}', crash_at=crash_at)
    proc = _run('distill', f'--expert_dir={experts}', f'--out_dir={killed}')
    assert 'Resuming from iteration' in proc.stderr
    _assert_same_run(straight, killed)


@pytest.mark.slow
def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(experts, tmp_path):
    straight, run = str(tmp_path / 'straight'), str(tmp_path / 'run')
    _run('distill', f'--expert_dir={experts}', f'--out_dir={straight}')
    _run('distill', f'--expert_dir={experts}', f'--out_dir={run}', '--iterations=6')
    assert os.path.isdir(os.path.join(run, 'checkpoint.prev'))
    # damage every data file of the latest checkpoint (iteration 6)
    for root, _, files in os.walk(os.path.join(run, 'checkpoint')):
        for f in files:
            with open(os.path.join(root, f), 'r+b') as fh:
                fh.truncate(max(0, os.path.getsize(os.path.join(root, f)) // 3))
    proc = _run('distill', f'--expert_dir={experts}', f'--out_dir={run}')
    assert 'Using the previous checkpoint' in proc.stderr
    assert 'Resuming from iteration 4' in proc.stderr
    _assert_same_run(straight, run)


@pytest.mark.slow
def test_best_set_is_never_replaced_by_a_worse_one(experts, tmp_path):
    run = str(tmp_path / 'run')
    _run('distill', f'--expert_dir={experts}', f'--out_dir={run}', '--iterations=4')
    best = os.path.join(run, 'best.npz')
    with np.load(best) as z:
        kept = {k: z[k] for k in z.files}
    kept['accuracy_mean'] = np.float64(99.0)   # a better set than any this run will make
    checkpoint.write_npz(best, **kept)
    _run('distill', f'--expert_dir={experts}', f'--out_dir={run}', '--iterations=8')
    with np.load(best) as z:
        assert float(z['accuracy_mean']) == 99.0
        np.testing.assert_array_equal(z['images'], kept['images'])
        assert np.all(np.isfinite(z['images']))


@pytest.mark.slow
def test_both_checkpoints_damaged_is_a_clear_error(experts, tmp_path):
    run = str(tmp_path / 'run')
    _run('distill', f'--expert_dir={experts}', f'--out_dir={run}', '--iterations=4')
    for sfx in ('', '.prev'):
        shutil.rmtree(os.path.join(run, 'checkpoint' + sfx, 'd'), ignore_errors=True)
        for root, _, files in os.walk(os.path.join(run, 'checkpoint' + sfx)):
            for f in files:
                open(os.path.join(root, f), 'w').close()
    proc = run_command('distill', *FLAGS_, f'--expert_dir={experts}', f'--out_dir={run}',
                       devices=1, check=False)
    assert proc.returncode == 2
    assert 'No earlier checkpoint is readable either' in proc.stderr
    assert 'Nothing was overwritten' in proc.stderr and 'Traceback' not in proc.stderr
    assert os.path.isfile(os.path.join(run, 'best.npz'))


@pytest.mark.slow
def test_expert_killed_within_an_epoch_resumes_there(experts, tmp_path):
    """Saved after every group of batches (--expert_checkpoint_seconds=0) and killed in the
    middle of epoch 2 of expert 0: the rerun continues from that group, bit for bit."""
    folder = str(tmp_path / 'e')
    _run('expert', f'--expert_dir={folder}', '--expert_checkpoint_seconds=0',
         crash_at='expert_group:3')
    proc = _run('expert', f'--expert_dir={folder}')
    assert 'resuming after epoch 1 of 4 (epoch 2: 1 groups of batches done)' in proc.stderr
    for i in range(2):
        for part in ('state', 'full'):
            a = checkpoint.load_tree(os.path.join(experts, f'expert_{i:04d}', part))
            b = checkpoint.load_tree(os.path.join(folder, f'expert_{i:04d}', part))
            for x, y in zip(_leaves(a), _leaves(b)):
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_give_files_the_users_mode(tmp_path, umask, mode):
    """JSON and npz files written atomically get 0666 less the umask, as every other file
    the commands write (torch.save's .pt files, pictures), not the temporary file's 0600."""
    old = os.umask(umask)
    try:
        checkpoint.write_json(str(tmp_path / 'a.json'), {'x': 1})
        checkpoint.write_npz(str(tmp_path / 'b.npz'), x=np.zeros(2))
        with open(tmp_path / 'c.txt', 'w') as f:
            f.write('plain')
    finally:
        os.umask(old)
    for name in ('a.json', 'b.npz', 'c.txt'):
        assert os.stat(tmp_path / name).st_mode & 0o777 == mode, name
