"""Readers of the small sources: scikit-learn's digits, ``.npz`` archives, TFDS, prepared
folders. Each returns a :class:`Raw` split pair of raw pixels; nothing is converted to float.

TFDS is read without TensorFlow: ``builder.as_data_source(split)`` reads the ArrayRecord
files and decodes each PNG with Pillow. Only ``array_record`` files are readable this way,
and preparing a dataset (download and convert, once) needs TensorFlow; ``docs/usage.md``
says how.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

import mct_jax.data.arrays as arrays
import mct_jax.data.catalog as catalog
import mct_jax.data.store as store
from mct_jax.data.catalog import DataError

DIGITS_TEST_PER_CLASS = 30
# Examples per batched read from a TFDS data source.
_TFDS_READ_BATCH = 1024
# A TFDS split above this many bytes is read on demand instead of into memory.
TFDS_IN_MEMORY_BYTES = 2 * 2**30


class Raw(NamedTuple):
    """A dataset as stored: raw pixels (uint8, or float in [0, 1] for an ``npz`` archive
    that holds floats) and integer labels, before any selection or preprocessing."""
    x_train: object      # [N, H, W, C] image array (see mct_jax.data.arrays)
    y_train: np.ndarray  # [N] int32
    x_test: object       # [M, H, W, C]
    y_test: np.ndarray   # [M] int32
    class_names: tuple
    white: float = 255.0  # the raw value of full intensity


def require_dir(data_dir, source: str, what: str) -> Path:
    """``data_dir`` as a Path, or a DataError saying what it should hold."""
    if data_dir is None:
        raise DataError(f"source {source!r} needs data_dir: the folder that holds {what}; "
                        'pass --data_dir.')
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f'data folder {path} does not exist (or is not a folder); it should '
                        f'hold {what}. Check --data_dir.')
    return path


# ---------------------------------------------------------------------------- digits

def read_digits():
    """(images (1797, 8, 8) in 0..16, targets) of scikit-learn's digits.

    Reads the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and
    the class per row) without importing scikit-learn, whose import takes about a second of
    every start-up; falls back to ``sklearn.datasets.load_digits`` if the file has moved.
    """
    spec = importlib.util.find_spec('sklearn')
    if spec is None:
        raise ModuleNotFoundError('The digits dataset comes with scikit-learn: pip install '
                                  'scikit-learn (it is in this project\'s dependencies).')
    for folder in spec.submodule_search_locations or ():
        path = os.path.join(folder, 'datasets', 'data', 'digits.csv.gz')
        if os.path.exists(path):
            table = np.loadtxt(path, delimiter=',')
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits
    bunch = load_digits()
    return bunch.images, bunch.target


def load_digits(name, data_dir, cache_dir) -> Raw:
    """scikit-learn's digits, each pixel repeated 2x2 to 16x16, raw values 0..16; the last
    30 images of each class are the test split.

    At 8x8 a depth-3 ConvNet normalises a 2x2 map in its last block and barely learns at the
    reference lr 0.01 (20% test accuracy after 30 epochs, against 85% at 16x16).
    """
    del name, data_dir, cache_dir
    images, target = read_digits()
    x = np.repeat(np.repeat(images.astype(np.uint8), 2, axis=1), 2, axis=2)[..., None]
    y = target.astype(np.int32)
    is_test = np.zeros(len(y), bool)
    for c in range(catalog.NUM_CLASSES['digits']):
        is_test[np.flatnonzero(y == c)[-DIGITS_TEST_PER_CLASS:]] = True
    return Raw(x[~is_test], y[~is_test], x[is_test], y[is_test],
               catalog.default_class_names('digits'), white=16.0)


# ------------------------------------------------------------------------------- npz

def _read_npz(path: Path):
    """Reads x, y and optional class_names from one archive; DataError if unreadable."""
    if not path.is_file():
        raise DataError(f'{path} not found: the npz source needs train.npz and test.npz in '
                        'data_dir, written by np.savez(file, x=..., y=..., class_names=...).')
    # np.load would try to unpickle a file that is neither zip nor .npy, and its error then
    # suggests allow_pickle=True, which is not the fix: tell the cases apart first.
    with open(path, 'rb') as f:
        head = f.read(6)
    if head.startswith(b'\x93NUMPY'):
        raise DataError(f'{path} holds a single array (.npy), not an .npz archive with keys x '
                        'and y; write it with np.savez(file, x=..., y=...).')
    if not head.startswith(b'PK'):
        raise DataError(f'{path} is not a valid .npz archive (not a zip file: corrupt, or not '
                        'written by np.savez). Re-create it with np.savez.')
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f'{path} is not a valid .npz archive (corrupt or truncated zip): {e}. '
                        'Re-create it with np.savez.') from e
    with archive:
        missing = [k for k in ('x', 'y') if k not in archive.files]
        if missing:
            raise DataError(f'{path} is missing key(s) {", ".join(missing)} (it has '
                            f'{", ".join(archive.files) or "no arrays"}); save images as x '
                            'and labels as y.')
        try:
            return {k: archive[k] for k in ('x', 'y', 'class_names') if k in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f'could not read the arrays of {path} (corrupt archive, or an '
                            f'object array that needs pickle): {e}. Re-create it with np.savez '
                            'from plain NumPy arrays.') from e


def check_split(path, x, y, name, names=None, num_classes=None):
    """Validates one split's images ``x`` and labels ``y`` for dataset ``name``; returns
    (x, y as int32, class_names or None). ``path`` names the files in messages;
    ``num_classes`` overrides the catalog's (a folder source's class list decides it)."""
    channels = catalog.CHANNELS[name]
    num_classes = num_classes or catalog.NUM_CLASSES[name]
    if len(x.shape) != 4:
        raise DataError(f'{path}: x has shape {x.shape} (rank {len(x.shape)}); expected rank '
                        '4, [N, H, W, C] (NHWC) images. Add the channel axis or transpose.')
    if x.shape[-1] != channels:
        raise DataError(f'{path}: x has {x.shape[-1]} channels (shape {x.shape}); {name} '
                        f'images have {channels}. Store images NHWC with {channels} channel(s).')
    if x.shape[0] == 0:
        raise DataError(f'{path}: x holds no images; store at least one.')
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise DataError(f'{path}: float images must lie in [0, 1], found values in '
                            f'[{lo}, {hi}]; store uint8 0..255 or divide by 255.')
    else:
        raise DataError(f'{path}: x has dtype {x.dtype}; expected uint8 (0..255) or float in '
                        '[0, 1]. Convert with x.astype(np.uint8).')
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f'{path}: y has shape {y.shape} and dtype {y.dtype}; expected an '
                        'integer vector [N] of class indices. Convert with y.astype(np.int64).')
    if len(y) != len(x):
        raise DataError(f'{path}: x has {len(x)} images but y has {len(y)} labels; they must '
                        'have the same length.')
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f'{path}: labels in y lie in [{lo}, {hi}], outside [0, {num_classes}) '
                        f'for {name}; store class indices 0..{num_classes - 1}.')
    if names is not None:
        names = np.asarray(names)
        if names.ndim != 1 or names.dtype.kind not in 'US' or len(names) != num_classes:
            raise DataError(f'{path}: class_names has shape {names.shape} and dtype '
                            f'{names.dtype}; expected {num_classes} strings for {name}, or '
                            'leave class_names out.')
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    return x, y.astype(np.int32), names


def _pair(folder, name, splits) -> Raw:
    """Checks that two validated splits agree; the class names fall back to the catalog's."""
    (x_train, y_train, names_train), (x_test, y_test, names_test) = splits
    if tuple(x_train.shape[1:]) != tuple(x_test.shape[1:]):
        raise DataError(f'the training images in {folder} have shape {x_train.shape[1:]} but '
                        f'the test images {x_test.shape[1:]}; both splits must share one '
                        'image shape.')
    if names_train is not None and names_test is not None and names_train != names_test:
        raise DataError(f'class_names differ between the training and test files in {folder}; '
                        'store the same names in both (or in one).')
    names = names_train or names_test or catalog.default_class_names(name)
    return Raw(x_train, y_train, x_test, y_test, names)


def load_npz(name, data_dir, cache_dir) -> Raw:
    """Local arrays: ``data_dir/train.npz`` and ``data_dir/test.npz``, read into memory."""
    del cache_dir
    folder = require_dir(data_dir, 'npz', 'train.npz and test.npz')
    splits = []
    for split in ('train', 'test'):
        path = folder / f'{split}.npz'
        got = _read_npz(path)
        splits.append(check_split(path, got['x'], got['y'], name, got.get('class_names')))
    return _pair(folder, name, splits)


def load_prepared(name, data_dir, cache_dir) -> Raw:
    """A folder written by ``python -m mct_jax.prepare``: memory-mapped, nothing loaded."""
    del cache_dir
    folder = require_dir(data_dir, 'prepared', 'a dataset written by python -m mct_jax.prepare')
    meta, splits = store.read(folder)
    if meta['dataset'] != name:
        raise DataError(f'{folder} holds {meta["dataset"]}, not {name}; pass '
                        f'--dataset={meta["dataset"]} or another --data_dir.')
    if set(splits) != set(store.SPLITS):
        raise DataError(f'{folder} holds the splits {", ".join(splits)}; a dataset needs '
                        f'{" and ".join(store.SPLITS)}. Prepare it again.')
    checked = [check_split(folder / f'{s}_images.npy', *splits[s], name, meta['class_names'],
                           len(meta['class_names'])) for s in store.SPLITS]
    return _pair(folder, name, checked)._replace(white=meta.get('white', 255.0))


# ------------------------------------------------------------------------------ tfds

def _tfds_split(builder, split, name):
    """One split: (images, labels). Small splits are read into memory, large ones
    (ImageNet) are decoded row by row as training reads them (:class:`arrays.TfdsImages`)."""
    try:
        data_source = builder.as_data_source(split=split)
    except (NotImplementedError, ValueError) as e:
        raise DataError(f'TFDS cannot give random access to {name} {split!r} at '
                        f'{builder.data_dir}: {e}. Only the array_record format is readable '
                        'without TensorFlow: delete that folder and let mct_jax prepare it '
                        'again (it uses file_format="array_record"), or use --source npz.') from e
    n = len(data_source)
    if n == 0:
        raise DataError(f'TFDS split {split!r} of {name} at {builder.data_dir} is empty; '
                        'delete that folder so that it is prepared again.')
    shape = tuple(builder.info.features['image'].shape)
    labels = np.empty((n,), np.int32)
    lazy = n * int(np.prod(shape)) > TFDS_IN_MEMORY_BYTES
    images = arrays.TfdsImages(data_source, shape) if lazy else np.empty((n,) + shape, np.uint8)
    for start in range(0, n, _TFDS_READ_BATCH):
        keys = list(range(start, min(n, start + _TFDS_READ_BATCH)))
        records = arrays.read_records(data_source, keys)
        labels[start:start + len(keys)] = [int(r['label']) for r in records]
        if not lazy:
            images[start:start + len(keys)] = np.stack([np.asarray(r['image'])
                                                        for r in records])
    return images, labels


def load_tfds(name, data_dir, cache_dir) -> Raw:
    """Through TensorFlow Datasets' random-access data sources (no TensorFlow needed to
    read; preparing a dataset the first time needs it)."""
    del cache_dir
    import tensorflow_datasets as tfds  # Deferred: only this source needs it.
    tfds_name = catalog.SPECS[name].tfds_name
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        # Preparing needs these; check before downloading anything.
        missing = [m for m in ('tensorflow', 'importlib_resources')
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise DataError(
                f'{tfds_name} is not prepared in {builder.data_dir}, and preparing it with TFDS '
                f'needs {" and ".join(missing)} (not installed here): run '
                '`pip install tensorflow-cpu importlib_resources` once to prepare it (reading '
                'it afterwards needs neither), or use --data_source npz, folder or prepared.')
        try:
            builder.download_and_prepare(file_format='array_record')
        except Exception as e:  # Network, disk and TFDS errors alike: all end the same way.
            raise DataError(
                f'could not download and prepare {tfds_name} with TFDS into '
                f'{builder.data_dir}: {type(e).__name__}: {e}. Preparing downloads the data '
                'once, so it needs internet access (ImageNet needs its files placed by hand, '
                'see the TFDS catalogue); or use --data_source npz, folder or prepared.') from e
    names = tuple(builder.info.features['label'].names)
    x_train, y_train = _tfds_split(builder, 'train', name)
    test_split = 'test' if 'test' in builder.info.splits else 'validation'
    x_test, y_test = _tfds_split(builder, test_split, name)
    return _pair(builder.data_dir, name, [check_split(f'TFDS {tfds_name} train', x_train,
                                                      y_train, name, names),
                                          check_split(f'TFDS {tfds_name} {test_split}', x_test,
                                                      y_test, name, names)])
