"""The distillation benchmark's bookkeeping: rounds combined, per-round ratios, the table,
and one tiny end-to-end run of the script (ours and PyTorch, two rounds)."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import bench_distill

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timed(seconds, fastest, rss, **extra):
    return dict(seconds=seconds, min_seconds=fastest, all_seconds=[fastest, seconds],
                peak_rss_mb=rss, **extra)


def test_one_round_is_kept_as_it_is():
    one = _timed(2.0, 1.5, 700.0, compile_s=9.0, flops=1e9)
    assert bench_distill.combine_rounds([one]) == one


def test_rounds_combine_to_median_fastest_and_largest_memory():
    rounds = [_timed(3.0, 2.9, 700.0, compile_s=9.0, flops=5e9),
              _timed(1.0, 0.8, 750.0, compile_s=8.0),
              _timed(2.0, 1.9, 720.0, compile_s=8.5)]
    c = bench_distill.combine_rounds(rounds)
    assert c['seconds'] == 2.0            # median of 3.0, 1.0, 2.0
    assert c['min_seconds'] == 0.8
    assert c['peak_rss_mb'] == 750.0
    assert c['rounds'] == [3.0, 1.0, 2.0]
    assert c['compile_s'] == 9.0 and c['flops'] == 5e9   # from the first round
    assert 'all_seconds' not in c and 'failed_rounds' not in c


def test_a_failed_round_is_reported_and_the_others_kept():
    rounds = [dict(skipped='timed out after 10 s'), _timed(4.0, 3.0, 800.0),
              _timed(2.0, 1.0, 900.0)]
    c = bench_distill.combine_rounds(rounds)
    assert c['seconds'] == 3.0 and c['rounds'] == [4.0, 2.0]
    assert c['failed_rounds'] == ['timed out after 10 s']
    everything_failed = [dict(skipped='a'), dict(skipped='b')]
    assert bench_distill.combine_rounds(everything_failed) == dict(skipped='a')


def test_ratios_pair_the_sides_of_the_same_round():
    ours = [_timed(1.0, 1, 1), _timed(2.0, 2, 1), dict(skipped='x'), _timed(3.0, 3, 1)]
    torch = [_timed(2.0, 2, 1), _timed(2.0, 2, 1), _timed(5.0, 5, 1), dict(skipped='y')]
    assert bench_distill.round_ratios(ours, torch) == [0.5, 1.0]


def test_the_table_shows_the_range_over_rounds():
    row = dict(width=32, N=10, ipc=10, forward=_timed(1.0, 0.9, 700.0, flops=2e9),
               torch=_timed(2.0, 1.8, 900.0), forward_over_torch=0.55,
               forward_over_torch_rounds=[0.5, 0.55, 0.7], gflops_achieved=2.0)
    lines = bench_distill.table([row]).splitlines()
    assert 'forward / PyTorch (range over rounds)' in lines[0]
    assert '| 0.55 (0.50-0.70) |' in lines[2]
    assert '| 0.50 |' in lines[2]    # fastest of each: 0.9 / 1.8


@pytest.mark.slow
def test_two_rounds_end_to_end(tmp_path):
    pytest.importorskip('torch', reason="PyTorch not installed: pip install -e '.[bench]'")
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, 'benchmarks/bench_distill.py', '--widths=8', '--steps=2',
           '--ipcs=1', '--variants=forward', '--rounds=2', '--repeats=1', '--warmup=0',
           '--min_time=0', f'--out={out}']
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row, = json.loads(out.read_text())['rows']
    for side in ('forward', 'torch'):
        assert len(row[side]['rounds']) == 2, row[side]
        assert row[side]['seconds'] > 0
    ratios = row['forward_over_torch_rounds']
    assert len(ratios) == 2
    assert row['forward_over_torch'] == pytest.approx(sum(ratios) / 2)   # median of two
    assert [f / t for f, t in zip(row['forward']['rounds'], row['torch']['rounds'])] == \
        pytest.approx(ratios)
    assert row['reverse']['skipped'] == 'not in --variants' and row['reverse']['xla_gb'] > 0
    assert '(range over rounds)' in proc.stdout


def test_rounds_must_be_at_least_one():
    proc = subprocess.run([sys.executable, 'benchmarks/bench_distill.py', '--rounds=0'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert '--rounds=0: each configuration needs at least one round' in proc.stderr
