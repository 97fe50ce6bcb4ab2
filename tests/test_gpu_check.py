"""The prepared GPU check cannot rot: its dry run (tiny sizes, the same code path) runs on
the CPU, writes its JSON and table, and stops cleanly at its budget."""

import json
import os
import subprocess

import pytest

from conftest import REPO


def _check(tmp_path, *args):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
    proc = subprocess.run(['bash', 'benchmarks/gpu_check.sh', '--dry_run', f'--out={tmp_path}',
                           *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(tmp_path / 'gpu_check.json'))
    return proc, report, (tmp_path / 'gpu_check.md').read_text()


@pytest.mark.slow
def test_dry_run_measures_every_stage(tmp_path):
    _, report, md = _check(tmp_path, '--budget_s=600')
    env = report['environment']
    assert env['jax'] and env['matmul_float32_tflops'] > 0 and env['matmul_bfloat16_tflops'] > 0
    assert report['tests']['returncode'] == 0, report['tests']
    rows = report['distill']
    assert {(r['method'], r['remat']) for r in rows} == {
        (m, r) for m in ('forward', 'reverse', 'tesla') for r in (False, True)}
    assert all(r['seconds'] > 0 and r['compile_s'] > 0 for r in rows)
    pytorch = report['pytorch'][0]
    assert pytorch.get('seconds', 0) > 0 or 'No module named' in pytorch.get('skipped', '')
    assert report['expert']['images_per_second'] > 0
    assert sorted(report['expert']['passes']) == ['0', '16', '64']
    assert all(v['images_per_second'] > 0 for v in report['expert']['passes'].values())
    assert report['evaluate']['vmapped_over_loop'] > 0
    assert report['skipped'] == []
    assert '| 1 | 2 | forward | False |' in md and 'Expert training:' in md


def test_a_short_budget_stops_cleanly_and_says_what_was_skipped(tmp_path):
    _, report, md = _check(tmp_path, '--budget_s=10', '--skip=tests')
    assert all(r.get('skipped') == 'budget' for r in report['distill'])
    assert report['expert'] == {'skipped': 'budget'} and report['evaluate'] == {'skipped': 'budget'}
    assert 'Skipped for the budget' in md and report['seconds'] < 60
