"""End to end through the real command lines, offline: experts -> distill -> evaluate."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

TINY = ['--dataset=digits', '--train_images_per_class=10', '--width=8', '--depth=3',
        '--num_experts=2', '--train_epochs=3', '--batch_train=32', '--save_full_trajectory',
        '--ipc=2', '--syn_steps=3', '--expert_epochs=1', '--max_start_epoch=2',
        '--lr_img=100', '--iterations=4', '--eval_every=2', '--num_eval=2', '--eval_epochs=5']


def _run(module, *args, check=True):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
    proc = subprocess.run([sys.executable, '-m', f'mct_jax.{module}', *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode:
        raise AssertionError(f'{module} failed:\n{proc.stderr[-3000:]}')
    return proc


@pytest.mark.slow
def test_pipeline_through_the_command_lines(tmp_path):
    experts, out = str(tmp_path / 'experts'), str(tmp_path / 'run')
    _run('expert', *TINY, f'--expert_dir={experts}')
    assert sorted(os.listdir(experts)) == ['config.json', 'expert_0000', 'expert_0001']
    for method, samples in (('mct', 1), ('mtt', 2)):
        proc = _run('distill', *TINY, f'--expert_dir={experts}', f'--out_dir={out}_{method}',
                    f'--method={method}', f'--num_samples={samples}')
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result['iteration'] == 4
        with np.load(os.path.join(f'{out}_{method}', 'best.npz')) as z:
            assert z['images'].shape == (20, 16, 16, 1) and z['labels'].shape == (20,)
            assert np.all(np.isfinite(z['images'])) and float(z['lr']) > 0
            assert json.loads(str(z['settings']))['method'] == method
    proc = _run('evaluate', *TINY, f'--synthetic={out}_mct')
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 <= summary['mean'] <= 100 and len(summary['all']) == 2
    # re-running the expert command trains nothing new
    proc = _run('expert', *TINY, f'--expert_dir={experts}')
    assert 'training []' in proc.stderr


@pytest.mark.parametrize('args,message', [
    (['--dataset=imagenet'], 'dataset'),
    (['--dataset=cifar10', '--data_source=npz', '--data_dir=/nonexistent'], 'does not exist'),
    (['--anchors=0,5,3'], 'strictly increasing'),
    (['--anchors=0,2'], 'must start at 0 and end'),
])
def test_expert_command_reports_bad_input(args, message, tmp_path):
    proc = _run('expert', *TINY, f'--expert_dir={tmp_path}', *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr


def test_distill_without_experts_says_what_to_run(tmp_path):
    proc = _run('distill', *TINY, f'--expert_dir={tmp_path}/none', check=False)
    assert proc.returncode == 2 and 'python -m mct_jax.expert' in proc.stderr


PRESETS = sorted(f for f in os.listdir(os.path.join(REPO, 'experiments')) if f.endswith('.cfg'))


@pytest.mark.parametrize('preset', PRESETS)
def test_presets_parse_and_validate(preset):
    """Every flagfile parses with every entry point's flags and passes the settings check."""
    code = ('import sys; from absl import flags; from mct_jax import distill; '
            f'flags.FLAGS(["x", "--flagfile=experiments/{preset}"]); '
            's = distill.settings_from_flags(); '
            'p = distill.check_settings(s, flags.FLAGS.train_epochs, None, 1); '
            'print(p); sys.exit(1 if p else 0)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
