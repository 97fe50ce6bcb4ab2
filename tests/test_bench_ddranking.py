"""The side-by-side scorer's arithmetic and the CIFAR folder it writes for DD-Ranking."""

import math
import pickle

import numpy as np
import pytest

from benchmarks import bench_ddranking, cifar_folder


def test_lrs_on_fractions_and_as_the_package_computes_it():
    # syn 30 %, random 20 %, full 50 %, w = 0.5; by hand:
    # paper: a = 0.5 * 0.10 - 0.5 * 0.20 = -0.05; package: a = 0.5 * 10 - 0.5 * 20 = -5
    den = math.e - math.exp(-1)
    assert bench_ddranking.lrs(30, 20, 50) == pytest.approx((0.951229424501 - 0.367879441171) / den)
    assert bench_ddranking.lrs(30, 20, 50, scale=1.0) == pytest.approx(
        (0.006737946999 - 0.367879441171) / den)
    # the package's form sits at its floor for a set 15 points below the full data and 2
    # above random (a = 1 - 7.5), where the paper's form still tells it from a worse one
    assert bench_ddranking.lrs(30, 28, 45, scale=1.0) - bench_ddranking.LRS_FLOOR < 1e-3
    assert bench_ddranking.lrs(30, 28, 45) - bench_ddranking.lrs(25, 28, 45) > 0.01
    assert bench_ddranking.LRS_FLOOR == pytest.approx(-0.1565, abs=1e-4)


def test_a_row_averages_the_per_run_scores():
    r = bench_ddranking.row('x', syn=[30.0, 34.0], rnd=[20.0, 20.0], full=[50.0, 52.0])
    assert (r['synthetic'], r['random'], r['full']) == (32.0, 20.0, 51.0)
    assert r['IOR'] == pytest.approx(12.0) and r['HLR'] == pytest.approx(19.0)
    per_run = [bench_ddranking.lrs(30, 20, 50), bench_ddranking.lrs(34, 20, 52)]
    assert r['LRS_paper'] == pytest.approx(100 * np.mean(per_run))
    # LRS is not linear: the mean of the runs' LRS is not the LRS of the mean accuracies
    assert abs(r['LRS_paper'] - 100 * bench_ddranking.lrs(32, 20, 51)) > 1e-4


def test_cifar_folder_is_torchvisions_layout_of_the_first_images_of_each_class(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0, 0, 1])
    x = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    names = np.array(['cat', 'dog'])
    np.savez(tmp_path / 'train.npz', x=x, y=y, class_names=names)
    np.savez(tmp_path / 'test.npz', x=x[:3], y=y[:3], class_names=names)
    written = cifar_folder.write(str(tmp_path), str(tmp_path / 'out'), train_images_per_class=3)
    assert sum(v for k, v in written.items() if k.startswith('data_batch')) == 6
    folder = tmp_path / 'out' / 'cifar-10-batches-py'
    rows, labels = [], []
    for i in range(1, 6):
        with open(folder / f'data_batch_{i}', 'rb') as f:
            d = pickle.load(f, encoding='latin1')   # as torchvision reads it
        rows.append(d['data'])
        labels += d['labels']
    keep = [0, 1, 2, 3, 4, 5]          # the first 3 of class 0 (0, 2, 4) and of 1 (1, 3, 5)
    assert labels == y[keep].tolist()
    data = np.concatenate(rows)
    assert data.dtype == np.uint8 and data.shape == (6, 3072)
    # each row is the red plane, then green, then blue, each 32 x 32 in row order
    assert np.array_equal(data.reshape(6, 3, 32, 32).transpose(0, 2, 3, 1), x[keep])
    with open(folder / 'batches.meta', 'rb') as f:
        meta = pickle.load(f, encoding='bytes')    # keys are Python 2 strings, as released
    assert meta[b'label_names'] == [b'cat', b'dog']
    with open(folder / 'test_batch', 'rb') as f:
        assert pickle.load(f, encoding='latin1')['labels'] == y[:3].tolist()
    with pytest.raises(SystemExit, match='class 0 has only 5'):
        cifar_folder.write(str(tmp_path), str(tmp_path / 'more'), train_images_per_class=6)
