"""Tests for mct_jax.data: every source offline, raw images kept raw, the preprocessing (on
the host and on the device), ZCA and the error messages."""

import importlib.util
import os
import shutil
from unittest import mock

import numpy as np
import pytest
from PIL import Image

import jax.numpy as jnp
from conftest import real_cifar10

from mct_jax import data
from mct_jax.data import DataError, arrays, preprocess, store

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2023, 0.1994, 0.2010], np.float32)


# ------------------------------------------------------------------------------- helpers

def _fake_images(seed, labels, shape=(32, 32, 3)):
    """uint8 images [N, *shape] with random pixels (any content will do for loading)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (len(labels),) + shape, dtype=np.uint8)


def _cifar_arrays(train_per_class=3, test_per_class=2):
    """A valid small CIFAR-10-like split pair, labels interleaved as in the real files."""
    y_train = np.tile(np.arange(10), train_per_class)
    y_test = np.tile(np.arange(10), test_per_class)
    return dict(x=_fake_images(0, y_train), y=y_train), dict(x=_fake_images(1, y_test), y=y_test)


def _write_npz(folder, train, test):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / 'train.npz', **train)
    np.savez(folder / 'test.npz', **test)
    return folder


def _structured(seed, n, shape):
    """Correlated images in [0, 1] (a spread of covariance eigenvalues, like natural images)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    mixing = rng.normal(size=(d, d)) * np.exp(-np.arange(d) / 8.0)[:, None]
    z = rng.normal(size=(n, d)) @ mixing
    return (1.0 / (1.0 + np.exp(-z / z.std()))).reshape((n,) + shape).astype(np.float32)


# Three wnids, deliberately not sorted in wnids.txt: the class index is the sorted position.
TINY_WNIDS = ('n02000002', 'n01000001', 'n03000003')
TINY_WORDS = {'n01000001': 'goldfish, Carassius auratus', 'n02000002': 'tabby, tabby cat'}


def _tiny_color(label, k):
    """Constant colour of image k of a class (JPEG keeps flat colours within a few levels)."""
    return (40 + 60 * label, 200 - 20 * k, 100 + 15 * k)  # In 0..255 for k <= 7.


def _make_tiny(parent, size=16, train_per_class=4, val_per_class=2):
    """Builds a miniature tiny-imagenet-200/ release; returns (root, expected raw arrays)."""
    root = parent / 'tiny-imagenet-200'
    (root / 'val' / 'images').mkdir(parents=True)
    (root / 'wnids.txt').write_text('\n'.join(TINY_WNIDS) + '\n')
    (root / 'words.txt').write_text(''.join(f'{w}\t{n}\n' for w, n in TINY_WORDS.items()))
    sorted_wnids = sorted(TINY_WNIDS)
    x_train, y_train = [], []
    for label, wnid in enumerate(sorted_wnids):
        folder = root / 'train' / wnid / 'images'
        folder.mkdir(parents=True)
        for k in range(train_per_class):
            color = _tiny_color(label, k)
            if k % 2:  # Every other image grayscale, as some release JPEGs are.
                img = Image.new('L', (size, size), color[0])
                color = (color[0],) * 3
            else:
                img = Image.new('RGB', (size, size), color)
            img.save(folder / f'{wnid}_{k}.JPEG', quality=95)
            x_train.append(np.full((size, size, 3), color, np.uint8))
            y_train.append(label)
    lines, x_test, y_test = [], [], []
    for i in range(val_per_class * len(sorted_wnids)):
        label = (i * 2) % len(sorted_wnids)  # Val images are not grouped by class.
        color = _tiny_color(label, 5 + i % 3)
        Image.new('RGB', (size, size), color).save(root / 'val' / 'images' / f'val_{i}.JPEG',
                                                   quality=95)
        lines.append(f'val_{i}.JPEG\t{sorted_wnids[label]}\t0\t0\t{size}\t{size}\n')
        x_test.append(np.full((size, size, 3), color, np.uint8))
        y_test.append(label)
    (root / 'val' / 'val_annotations.txt').write_text(''.join(lines))
    return root, (np.stack(x_train), np.array(y_train), np.stack(x_test), np.array(y_test))


# --------------------------------------------------------------------------------- digits

def test_digits_shapes_labels_and_standardisation():
    ds = data.load_dataset('digits')
    assert ds.x_train.shape == (1497, 16, 16, 1) and ds.x_test.shape == (300, 16, 16, 1)
    # Raw pixels stay raw: the 8x8 originals' 0..16, as uint8.
    assert ds.x_train.dtype == ds.x_test.dtype == np.uint8 and ds.x_train.max() == 16
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    assert ds.num_classes == 10 and ds.class_names == tuple('0123456789')
    assert ds.image_shape == (16, 16, 1) and ds.zca is None
    assert ds.y_train.min() == 0 and ds.y_train.max() == 9
    np.testing.assert_array_equal(np.bincount(ds.y_test), [30] * 10)
    inputs = ds.prepare(ds.x_train)
    assert inputs.dtype == np.float32
    np.testing.assert_allclose(inputs.mean(axis=(0, 1, 2)), [0.0], atol=1e-5)
    np.testing.assert_allclose(inputs.std(axis=(0, 1, 2)), [1.0], atol=1e-5)


def test_digits_split_is_last_30_of_each_class_in_order():
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x_train, y_train, x_test, y_test, _, white = data.load_raw('digits')
    assert white == 16
    test_idx = np.sort(np.concatenate(
        [np.flatnonzero(bunch.target == c)[-30:] for c in range(10)]))
    train_idx = np.setdiff1d(np.arange(len(bunch.target)), test_idx)
    np.testing.assert_array_equal(y_test, bunch.target[test_idx])
    np.testing.assert_array_equal(y_train, bunch.target[train_idx])
    # 2x2 pixel repetition of the 8x8 originals
    np.testing.assert_array_equal(x_test[:, ::2, ::2, 0], bunch.images[test_idx])
    np.testing.assert_array_equal(x_train[:, 1::2, 1::2, 0], bunch.images[train_idx])
    assert x_train.dtype == np.uint8 and x_train.max() == 16


def test_digits_read_without_importing_sklearn_matches_its_loader(monkeypatch):
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images, target = data.sources.read_digits()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(target, bunch.target)
    # If scikit-learn moves its file, the loader falls back to load_digits.
    monkeypatch.setattr(data.sources.os.path, 'exists', lambda path: False)
    images, target = data.sources.read_digits()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(target, bunch.target)


def test_to_display_undoes_standardisation():
    raw = data.load_raw('digits')
    ds = data.load_dataset('digits')
    np.testing.assert_allclose(ds.to_display(ds.prepare(ds.x_train)), raw.x_train / 16,
                               atol=1e-6)
    np.testing.assert_allclose(ds.to_display(ds.prepare(ds.x_test)[3]), raw.x_test[3] / 16,
                               atol=1e-6)


# ------------------------------------------------------------------------------------ npz

def test_npz_source_reads_and_standardises(tmp_path):
    train, test = _cifar_arrays()
    names = np.array([f'class{c}' for c in range(10)])
    _write_npz(tmp_path, dict(train, class_names=names), test)
    x_train, y_train, x_test, y_test, class_names, _ = data.load_raw('cifar10', 'npz', tmp_path)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int32
    np.testing.assert_array_equal(x_train, train['x'])
    np.testing.assert_array_equal(y_test, test['y'])
    assert class_names == tuple(names)

    ds = data.load_dataset('cifar10', 'npz', tmp_path, train_images_per_class=2)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
    # Interleaved labels 0..9, 0..9, ...: the first two of each class are the first 20 images.
    np.testing.assert_array_equal(ds.y_train, train['y'][:20])
    np.testing.assert_array_equal(ds.x_train, train['x'][:20])
    np.testing.assert_allclose(ds.prepare(ds.x_train), (train['x'][:20] / 255.0 - CIFAR10_MEAN)
                               / CIFAR10_STD, atol=1e-5)
    np.testing.assert_allclose(ds.to_display(ds.prepare(ds.x_train)), train['x'][:20] / 255.0,
                               atol=1e-6)


def test_npz_float_images_and_default_class_names(tmp_path):
    """Float images in [0, 1] cannot stay uint8: they are preprocessed once, at load, into
    float32 network inputs, which every consumer then takes as they are."""
    train, test = _cifar_arrays()
    train['x'] = train['x'].astype(np.float64) / 255.0
    test['x'] = test['x'].astype(np.float64) / 255.0
    _write_npz(tmp_path, train, test)
    raw = data.load_raw('cifar10', 'npz', tmp_path)
    np.testing.assert_allclose(raw.x_train, train['x'], atol=1e-7)
    assert raw.class_names == data.CIFAR10_CLASS_NAMES
    ds = data.load_dataset('cifar10', 'npz', tmp_path)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32 and ds.preprocessing is None
    np.testing.assert_allclose(ds.x_test, (test['x'] - CIFAR10_MEAN) / CIFAR10_STD, atol=1e-5)
    np.testing.assert_array_equal(ds.prepare(ds.x_train), ds.x_train)


def test_first_k_per_class_keeps_first_k_in_original_order():
    y = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])
    x = np.arange(len(y)) * 10
    x_k, y_k = data.first_k_per_class(x, y, 2, 3)
    np.testing.assert_array_equal(x_k, [0, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(y_k, [2, 0, 1, 0, 2, 1])


@pytest.mark.slow
def test_real_cifar10():
    source, folder = real_cifar10()
    x_train, y_train, x_test, y_test, names, _ = data.load_raw('cifar10', source, folder)
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y_train), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
    assert names == data.CIFAR10_CLASS_NAMES
    # The README's canonical training mean: the images are read in the right scale.
    np.testing.assert_allclose(x_train.mean(axis=(0, 1, 2), dtype=np.float64) / 255,
                               CIFAR10_MEAN, atol=2e-4)

    k = 3
    x_k, y_k = data.first_k_per_class(x_train, y_train, k, 10)
    seen, expected = [0] * 10, []
    for i, label in enumerate(y_train.tolist()):  # An independent, plain-Python selection.
        if seen[label] < k:
            seen[label] += 1
            expected.append(i)
    np.testing.assert_array_equal(y_k, y_train[expected])
    np.testing.assert_array_equal(x_k, x_train[expected])


# ----------------------------------------------------------------------------------- tfds

def test_tfds_source_under_mock_data(tmp_path):
    tfds = pytest.importorskip('tensorflow_datasets')
    # mock_data serves examples without files on disk; it does not make the builder look
    # prepared, so say it is, as after a real download.
    with tfds.testing.mock_data(num_examples=12), \
            mock.patch.object(tfds.core.DatasetBuilder, 'is_prepared', return_value=True):
        ds = data.load_dataset('cifar10', data_dir=tmp_path)
    assert ds.x_train.shape == (12, 32, 32, 3) and ds.x_test.shape == (12, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert 0 <= ds.y_train.min() and ds.y_train.max() < 10
    shown = ds.to_display(ds.prepare(ds.x_train))
    assert shown.min() >= 0.0 and shown.max() <= 1.0 and shown.std() > 0.1  # Random pixels.
    np.testing.assert_allclose(ds.mean, CIFAR10_MEAN)


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is not None
                    and importlib.util.find_spec('importlib_resources') is not None,
                    reason='TensorFlow is installed: preparing would try to download')
def test_tfds_unprepared_without_tensorflow_says_how_to_prepare(tmp_path):
    pytest.importorskip('tensorflow_datasets')
    with pytest.raises(DataError, match='pip install tensorflow-cpu'):
        data.load_raw('cifar10', 'tfds', tmp_path)


# --------------------------------------------------------------------------------- folder

def test_folder_source_and_cache(tmp_path):
    root, (x_train, y_train, x_test, y_test) = _make_tiny(tmp_path)
    cache = tmp_path / 'cache'
    got = data.load_raw('tiny_imagenet', data_dir=tmp_path, cache_dir=cache)  # the parent
    np.testing.assert_allclose(got.x_train, x_train, atol=3)    # JPEG: within 3 levels
    np.testing.assert_array_equal(got.y_train, y_train)
    np.testing.assert_allclose(got.x_test, x_test, atol=3)
    np.testing.assert_array_equal(got.y_test, y_test)
    assert got.x_train.shape == (12, 16, 16, 3) and got.x_train.dtype == np.uint8
    assert isinstance(got.x_train, np.memmap)       # mapped from the cache, not loaded
    assert got.class_names == ('goldfish', 'tabby', 'n03000003')  # sorted wnids; words.txt
    (entry,) = os.listdir(cache)
    assert store.is_complete(cache / entry) and not list(root.glob('*.npz'))

    # The second read comes from the cache: no image is decoded.
    with mock.patch.object(Image, 'open', side_effect=AssertionError('decoded a JPEG')):
        again = data.load_raw('tiny_imagenet', data_dir=root, cache_dir=cache)
    for a, b in zip(got[:4], again[:4]):
        np.testing.assert_array_equal(a, b)

    # A damaged cache is rebuilt (after copying what this process still maps from it: a
    # file truncated under a live memory map cannot be read).
    first = np.array(got.x_train)
    del got, again
    (cache / entry / 'train_images.npy').write_bytes(b'not an npy file')
    rebuilt = data.load_raw('tiny_imagenet', data_dir=root, cache_dir=cache)
    np.testing.assert_array_equal(rebuilt.x_train, first)

    # A stale cache (the file list changed) is rebuilt as well, into a new entry.
    Image.new('RGB', (16, 16), (9, 9, 9)).save(
        root / 'train' / 'n03000003' / 'images' / 'n03000003_9.JPEG')
    grown = data.load_raw('tiny_imagenet', data_dir=root, cache_dir=cache)
    np.testing.assert_array_equal(np.bincount(grown.y_train), [4, 4, 5])
    assert len(os.listdir(cache)) == 2

    ds = data.load_dataset('tiny_imagenet', data_dir=root, train_images_per_class=2,
                           cache_dir=cache)
    assert ds.x_train.shape == (6, 16, 16, 3) and ds.num_classes == 3
    assert isinstance(ds.x_train, arrays.Subset)    # rows of the map, read when needed
    np.testing.assert_allclose(ds.mean, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(ds.to_display(ds.prepare(ds.x_train[np.arange(6)])),
                               grown.x_train[[0, 1, 4, 5, 8, 9]] / 255, atol=1e-6)


# ------------------------------------------------------------------------------------ ZCA

@pytest.mark.parametrize('n, shape', [(300, (4, 4, 3)), (30, (4, 4, 3)), (200, (6, 6, 1))])
def test_zca_whitened_covariance_is_damped_identity(n, shape):
    eps = 0.1
    x = _structured(n, n, shape)
    zca = data.fit_zca(x, eps)
    d = int(np.prod(shape))
    assert zca.mean.shape == (d,) and zca.transform.shape == zca.inverse.shape == (d, d)
    assert zca.transform.dtype == np.float32

    flat = x.reshape(n, d).astype(np.float64)
    s, u = np.linalg.eigh(np.cov(flat, rowvar=False))  # Independent float64 reference.
    s = np.maximum(s, 0.0)
    whitened = data.apply_zca(zca, x)
    assert whitened.shape == x.shape and whitened.dtype == np.float32
    cov_w = np.cov(whitened.reshape(n, d).astype(np.float64), rowvar=False)
    np.testing.assert_allclose(cov_w, (u * (s / (s + eps))) @ u.T, atol=2e-5)
    np.testing.assert_allclose(np.linalg.eigvalsh(cov_w), np.sort(s / (s + eps)), atol=2e-5)
    # Near identity on the well-determined directions: the regularisation only damps.
    assert np.linalg.eigvalsh(cov_w).max() < 1.0
    np.testing.assert_allclose(zca.transform @ zca.inverse, np.eye(d), atol=1e-4)
    np.testing.assert_allclose(data.invert_zca(zca, whitened), x, atol=1e-5)


def test_zca_in_load_dataset_round_trips_to_raw(tmp_path):
    raw = data.load_raw('digits')
    ds = data.load_dataset('digits', zca=True)
    assert ds.zca is not None and ds.zca.transform.shape == (256, 256)
    inputs = ds.prepare(ds.x_train)
    np.testing.assert_allclose(inputs.reshape(len(inputs), -1).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.to_display(inputs), raw.x_train / 16, atol=1e-5)
    np.testing.assert_allclose(ds.to_display(ds.prepare(ds.x_test)), raw.x_test / 16, atol=1e-5)
    # Fitted from the raw pixels in chunks: the same as from the whole float split at once.
    whole = data.fit_zca(raw.x_train.astype(np.float64) / 16)
    np.testing.assert_allclose(ds.zca.transform, whole.transform, rtol=1e-5, atol=1e-5)

    # Fitted on the first-K selection only.
    train, test = _cifar_arrays(train_per_class=3)
    small = {k: v for k, v in train.items()}
    small['x'] = _structured(7, 30, (4, 4, 3))
    test['x'] = _structured(8, 20, (4, 4, 3))
    _write_npz(tmp_path, small, test)
    ds = data.load_dataset('cifar10', 'npz', tmp_path, train_images_per_class=2, zca=True)
    reference = data.fit_zca(small['x'][:20])
    np.testing.assert_allclose(ds.zca.transform, reference.transform, atol=1e-5)
    np.testing.assert_allclose(ds.to_display(ds.x_test), test['x'], atol=1e-5)
    assert ds.preprocessing is None        # float images were whitened at load


# --------------------------------------------------------------------------------- errors

def _npz(mutate_train=None, mutate_test=None, name='cifar10'):
    """A case: writes a valid archive pair, lets ``mutate_*`` edit the arrays, loads it."""
    def make(tmp):
        train, test = _cifar_arrays()
        train, test = (mutate_train or dict)(train), (mutate_test or dict)(test)
        _write_npz(tmp, train, test)
        return lambda: data.load_raw(name, 'npz', tmp)
    return make


def _npz_file(write_train):
    """A case: a valid test.npz and a train.npz written by ``write_train(path)``."""
    def make(tmp):
        train, test = _cifar_arrays()
        _write_npz(tmp, train, test)
        write_train(tmp / 'train.npz')
        return lambda: data.load_raw('cifar10', 'npz', tmp)
    return make


def _write_single_npy(path):
    with open(path, 'wb') as f:
        np.save(f, np.zeros(3))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:2000])


def _damage(path):
    """Zeroes pixel bytes inside the (stored, uncompressed) x member: its CRC fails."""
    blob = bytearray(path.read_bytes())
    blob[5000:6000] = bytes(1000)
    path.write_bytes(bytes(blob))


def _tiny(mutate):
    """A case: builds the miniature Tiny ImageNet tree, lets ``mutate(root)`` break it."""
    def make(tmp):
        root, _ = _make_tiny(tmp, size=8, train_per_class=2, val_per_class=1)
        mutate(root)
        return lambda: data.load_raw('tiny_imagenet', 'folder', root, cache_dir=tmp / 'cache')
    return make


def _call(fn):
    return lambda tmp: fn


def _replace(d, **changes):
    return {**d, **changes}


BAD_INPUTS = {
    'unknown dataset': (_call(lambda: data.load_raw('mnist')), 'unknown dataset'),
    'unknown source': (_call(lambda: data.load_raw('cifar10', 'hub')), 'unknown source'),
    'source not for dataset': (_call(lambda: data.load_raw('digits', 'tfds')),
                               'not available for dataset'),
    'no data_dir': (_call(lambda: data.load_raw('cifar10', 'npz')), 'needs data_dir'),
    'missing folder': (lambda tmp: lambda: data.load_raw('cifar10', 'npz', tmp / 'absent'),
                       'absent does not exist'),
    'missing file': (_npz_file(os.remove), r'train\.npz not found'),
    'corrupt archive': (_npz_file(lambda p: p.write_text('hello')),
                        r'train\.npz is not a valid \.npz'),
    'truncated archive': (_npz_file(_truncate), r'train\.npz is not a valid \.npz'),
    'damaged archive member': (_npz_file(_damage), r'could not read the arrays of .*train\.npz'),
    'single array': (_npz_file(_write_single_npy), 'single array'),
    'missing key': (_npz(lambda d: {'x': d['x']}), r'train\.npz is missing key\(s\) y'),
    'wrong rank': (_npz(lambda d: _replace(d, x=d['x'][..., 0])), 'expected rank 4'),
    'wrong channel count': (_npz(lambda d: _replace(d, x=d['x'][..., :1])),
                            r'x has 1 channels .*cifar10 images have 3'),
    'wrong image dtype': (_npz(lambda d: _replace(d, x=d['x'].astype(np.int64))),
                          'x has dtype int64'),
    'float images out of range': (_npz(lambda d: _replace(d, x=d['x'].astype(np.float32))),
                                  r'must lie in \[0, 1\]'),
    'wrong label dtype': (_npz(lambda d: _replace(d, y=d['y'].astype(np.float32))),
                          'expected an integer vector'),
    'length mismatch': (_npz(lambda d: _replace(d, y=d['y'][:-1])),
                        '30 images but y has 29 labels'),
    'labels out of range': (_npz(None, lambda d: _replace(d, y=d['y'] + 1)),
                            r'test\.npz: labels in y lie in \[1, 10\], outside \[0, 10\)'),
    'train/test shape mismatch': (_npz(None, lambda d: _replace(d, x=d['x'][:, :16, :16])),
                                  'must share one image shape'),
    'bad class_names': (_npz(lambda d: _replace(d, class_names=np.array(['a', 'b']))),
                        'expected 10 strings'),
    'K larger than a class has': (
        _call(lambda: data.load_dataset('digits', train_images_per_class=200)),
        r'class \d has only 1\d\d training images.*smaller --train_images_per_class'),
    'K larger, named class': (
        _call(lambda: data.first_k_per_class(np.zeros(5), np.array([0, 0, 0, 1, 1]), 3, 2,
                                             class_names=('cat', 'dog'))),
        r'class 1 \(dog\) has only 2 training images.*at most 2'),
    'K below 1': (_call(lambda: data.first_k_per_class(np.zeros(3), np.zeros(3, int), 0, 1)),
                  'must be an integer >= 1'),
    'no wnids.txt': (_tiny(lambda r: os.remove(r / 'wnids.txt')), 'wnids.txt not found'),
    'no train folder': (_tiny(lambda r: shutil.rmtree(r / 'train')),
                        'training folder .* not found'),
    'missing class folder': (_tiny(lambda r: shutil.rmtree(r / 'train' / 'n02000002')),
                             'class folder .*n02000002.* not found'),
    'no val annotations': (_tiny(lambda r: os.remove(r / 'val' / 'val_annotations.txt')),
                           'validation annotations .* not found'),
    'image of another size': (
        _tiny(lambda r: Image.new('RGB', (9, 8)).save(
            r / 'train' / 'n03000003' / 'images' / 'n03000003_1.JPEG')),
        r'n03000003_1\.JPEG is 9x8, but the images of this dataset are 8x8'),
    'unknown wnid in annotations': (
        _tiny(lambda r: (r / 'val' / 'val_annotations.txt').write_text('val_0.JPEG\tn09\n')),
        r"line 1: unknown wnid 'n09'"),
    'zca on other image shape': (
        _call(lambda: data.apply_zca(data.fit_zca(_structured(0, 10, (2, 2, 1))),
                                     np.zeros((1, 3, 3, 1)))),
        'fitted on 4 features per image'),
    'zca on one image': (_call(lambda: data.fit_zca(np.zeros((1, 2, 2, 1)))),
                         'at least 2 images'),
}


@pytest.mark.parametrize('case', list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_data_error_naming_the_problem(case, tmp_path):
    make, pattern = BAD_INPUTS[case]
    load = make(tmp_path)
    with pytest.raises(DataError, match=pattern):
        load()


def test_validation_split_is_held_out_before_anything_else(tmp_path):
    """The last V training images of each class become the validation split, cut before the
    first-K selection and the ZCA fit; the test split is untouched."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 12)
    rng.shuffle(y)
    x = rng.integers(0, 256, size=(120, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / 'train.npz', x=x, y=y)
    np.savez(tmp_path / 'test.npz', x=x[:6], y=y[:6])
    ds = data.load_dataset('cifar10', 'npz', str(tmp_path), train_images_per_class=5,
                           val_images_per_class=2, zca=True)
    raw = x.astype(np.float32) / 255
    val_idx = np.sort(np.concatenate([np.flatnonzero(y == c)[-2:] for c in range(10)]))
    train_idx = np.sort(np.concatenate([np.flatnonzero(y == c)[:5] for c in range(10)]))
    assert not set(val_idx) & set(train_idx)
    np.testing.assert_array_equal(ds.y_val, y[val_idx])
    np.testing.assert_array_equal(ds.y_train, y[train_idx])
    zca = data.fit_zca(raw[train_idx])      # fitted on the training images alone
    np.testing.assert_allclose(ds.prepare(ds.x_val), data.apply_zca(zca, raw[val_idx]),
                               atol=1e-5)
    np.testing.assert_allclose(ds.prepare(ds.x_train), data.apply_zca(zca, raw[train_idx]),
                               atol=1e-5)
    assert ds.has_validation and len(ds.y_test) == 6
    plain = data.load_dataset('cifar10', 'npz', str(tmp_path))
    assert not plain.has_validation and plain.x_val.shape == (0, 4, 4, 3)
    with pytest.raises(DataError, match='--val_images_per_class'):
        data.load_dataset('cifar10', 'npz', str(tmp_path), val_images_per_class=12)


def test_digits_statistics_leave_the_validation_split_out():
    """digits has no published constants: its mean and std come from the training images,
    without the held-out ones."""
    raw = data.load_raw('digits')
    x, y = raw.x_train.astype(np.float32) / 16, raw.y_train
    ds = data.load_dataset('digits', val_images_per_class=20)
    keep = np.ones(len(y), bool)
    for c in range(10):
        keep[np.flatnonzero(y == c)[-20:]] = False
    np.testing.assert_allclose(ds.mean, x[keep].mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ds.std, x[keep].std(axis=(0, 1, 2)), rtol=1e-5)
    assert len(ds.y_val) == 200 and len(ds.y_train) == int(keep.sum())


# --------------------------------------------------------------------- preprocessing

def test_preprocessing_table_equals_float32_numpy_pipeline_bit_for_bit():
    """The device lookup reproduces ``x = raw.astype(float32); x /= 255; x -= mean;
    x /= std`` exactly, on the host and inside a jitted program (where XLA would round
    ``x / c`` as ``x * (1 / c)``)."""
    raw = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    raw[0, 0, 0] = (0, 128, 255)
    want = raw.astype(np.float32)
    want /= 255.0
    want -= CIFAR10_MEAN
    want /= CIFAR10_STD
    prep = preprocess.make(CIFAR10_MEAN, CIFAR10_STD, 255.0)
    np.testing.assert_array_equal(preprocess.apply_host(prep, raw), want)
    import jax
    on_device = jax.jit(preprocess.apply)(prep, jnp.asarray(raw))
    assert on_device.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(on_device), want)
    # Network inputs pass through untouched, with or without a preprocessing.
    floats = np.ones((2, 6, 6, 3), np.float32)
    assert preprocess.apply(prep, floats) is floats and preprocess.apply(None, floats) is floats
    with pytest.raises(ValueError, match='need their Preprocessing'):
        preprocess.apply(None, raw)


def test_preprocessing_zca_on_the_device_matches_a_float64_reference():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    unit = raw.astype(np.float64) / 255
    zca = data.fit_zca(unit)
    prep = preprocess.make(CIFAR10_MEAN, CIFAR10_STD, 255.0, zca)
    flat = unit.reshape(40, -1)
    want = ((flat - zca.mean.astype(np.float64)) @ zca.transform.astype(np.float64))
    want = want.reshape(raw.shape)
    import jax
    got = np.asarray(jax.jit(preprocess.apply)(prep, jnp.asarray(raw)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(preprocess.apply_host(prep, raw), want, rtol=1e-5, atol=2e-5)


def test_memory_mapped_splits_are_selected_without_reading_them(tmp_path):
    """A prepared (memory-mapped) split stays on disk through the validation hold-out and the
    first-K selection; rows are read only when asked for, and equal the in-memory ones."""
    train, test = _cifar_arrays(train_per_class=6, test_per_class=2)
    with store.Writer(tmp_path / 'c10', dataset='cifar10', image_shape=(32, 32, 3),
                      class_names=data.CIFAR10_CLASS_NAMES, origin='test') as w:
        for split, arrays_ in (('train', train), ('test', test)):
            w.images(split, len(arrays_['y']))[:] = arrays_['x']
            w.labels(split, arrays_['y'])
    _write_npz(tmp_path / 'npz', train, test)
    mapped = data.load_dataset('cifar10', 'prepared', tmp_path / 'c10',
                               train_images_per_class=3, val_images_per_class=2)
    loaded = data.load_dataset('cifar10', 'npz', tmp_path / 'npz',
                               train_images_per_class=3, val_images_per_class=2)
    assert isinstance(mapped.x_train, arrays.Subset) and isinstance(mapped.x_test, np.memmap)
    assert arrays.in_memory(loaded.x_train)
    np.testing.assert_array_equal(arrays.materialize(mapped.x_train), loaded.x_train)
    np.testing.assert_array_equal(arrays.materialize(mapped.x_val), loaded.x_val)
    np.testing.assert_array_equal(mapped.y_train, loaded.y_train)
    rows = np.array([5, 0, 3])
    np.testing.assert_array_equal(mapped.x_train[rows], loaded.x_train[rows])


def test_random_per_class_draws_each_class_in_order():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    x = np.arange(10)[:, None]
    import jax
    images, labels = data.random_per_class(jax.random.key(0), x, y, 3, 2)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
    assert all(y[i] == c for i, c in zip(images[:, 0], labels))
    again, _ = data.random_per_class(jax.random.key(0), x, y, 3, 2)
    np.testing.assert_array_equal(images, again)
    with pytest.raises(ValueError, match='Class 1 has only 3 training images'):
        data.random_per_class(jax.random.key(0), x, y, 3, 4)


def test_store_writer_is_atomic_and_replaces(tmp_path):
    folder = tmp_path / 'prepared'
    with pytest.raises(RuntimeError, match='interrupted'):
        with store.Writer(folder, dataset='digits', image_shape=(2, 2, 1),
                          class_names=[str(c) for c in range(10)], origin='test') as w:
            w.images('train', 3)[:] = 1
            raise RuntimeError('interrupted')
    assert os.listdir(tmp_path) == []       # nothing half-written is left behind
    for value in (1, 2):
        with store.Writer(folder, dataset='digits', image_shape=(2, 2, 1),
                          class_names=[str(c) for c in range(10)], origin='test') as w:
            for split in store.SPLITS:
                w.images(split, 3)[:] = value
                w.labels(split, [0, 1, 2])
        meta, splits = store.read(folder)
        assert meta['splits'] == {'train': 3, 'test': 3} and splits['test'][0][0, 0, 0, 0] == value
    assert os.listdir(tmp_path) == ['prepared']
    with pytest.raises(DataError, match='no labels were written for test'):
        with store.Writer(tmp_path / 'other', dataset='digits', image_shape=(2, 2, 1),
                          class_names=[str(c) for c in range(10)], origin='test') as w:
            for split in store.SPLITS:
                w.images(split, 3)
            w.labels('train', [0, 1, 2])
    assert sorted(os.listdir(tmp_path)) == ['prepared']
