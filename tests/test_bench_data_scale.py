"""The data-scale benchmark's parts: a generated prepared dataset, one child measured by
the parent (its peak from the kernel), the expert child on a tiny setting, and the table
from a results file."""

import sys

import pytest

from benchmarks import bench_data_scale
from mct_jax import data


@pytest.mark.slow
def test_generated_dataset_and_the_expert_child(tmp_path):
    folder = bench_data_scale.make_dataset(tmp_path / 'gen', 'cifar10', 600, 32, 10)
    ds = data.load_dataset('cifar10', 'prepared', folder)
    assert ds.x_train.shape == (600, 32, 32, 3) and len(ds.y_test) == 1000
    r = bench_data_scale.run_child(
        [sys.executable, bench_data_scale.__file__, '--child=expert', '--dataset=cifar10',
         '--source=prepared', f'--data_dir={folder}', '--width=8', '--depth=3',
         '--batches=1', '--group=1'])
    assert r['images_per_second'] > 0 and r['images'] == 600
    d = bench_data_scale.run_child(
        [sys.executable, bench_data_scale.__file__, '--child=distill', '--dataset=cifar10',
         '--source=prepared', f'--data_dir={folder}', '--width=8', '--depth=3', '--ipc=2',
         '--steps=3', '--batch=10', '--batches=1'])
    assert d['synthetic_images'] == 20 and d['batch'] == 10 and d['steps'] == 3
    assert d['images_per_second'] == pytest.approx(30 / d['seconds_per_iteration'])
    # the kernel's peak covers everything the parent could sample
    assert r['peak_rss_mb'] >= r['sampled_rss_mb'] > 100


def test_table_from_results():
    child = dict(images_per_second=100.0, peak_rss_mb=1000.0, peak_anon_mb=900.0,
                 peak_file_mb=100.0)
    results = {'expert': [{'data': 'CIFAR-10', 'depth': 3, 'ours': child,
                           'torch': dict(child, images_per_second=50.0, peak_rss_mb=2000.0),
                           'speed_ratio': 2.0, 'memory_ratio': 0.5}],
               'growth': [dict(child, count=n) for n in (10, 20)],
               'growth_peak_anon_mb': {'per_image_bytes': 0.0, 'at_imagenet_1k_mb': 900.0},
               'growth_peak_rss_mb': {'per_image_bytes': 1.0, 'at_imagenet_1k_mb': 1001.0},
               'commands': [{'what': 'distill', 'peak_rss_mb': 700.0, 'wall_seconds': 9.0}],
               'distill_scale': [dict(child, data='Tiny', depth=4, steps=5, batch=20,
                                      seconds_per_iteration=4.0, first_iteration_seconds=30.0,
                                      images_per_second=25.0)]}
    text = bench_data_scale.table(results)
    assert '| CIFAR-10 | 3 | 100 | 50 | 2.00 | 1000 (900) | 2000 | 0.50 |' in text
    assert '| 20 | 1000 | 900 | 100 |' in text and '| distill | 700 | 9 |' in text
    assert 'extrapolated to ImageNet-1K (1,281,167 images): 900 MiB anonymous' in text
    assert '| Tiny | 4 | 5 x 20 | 4.0 | 25.0 | 30 | 1000 (900) |' in text
