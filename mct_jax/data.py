"""Datasets for distillation: loading, the reference preprocessing, and ZCA whitening.

``load_dataset(name, source, data_dir, train_images_per_class, zca)`` returns a
:class:`Dataset` of float32 NHWC arrays ready for training, preprocessed as in the reference
code (METHOD.md section 6):

* without ZCA, per-channel standardisation ``(x - mean) / std`` with the fixed constants of
  the literature (CIFAR-10, CIFAR-100, ImageNet's for Tiny ImageNet); ``digits`` has no
  published constants, so its mean/std are computed on its (full) training split;
* with ``zca=True``, ZCA whitening fitted on the raw [0, 1] training images (after the
  first-K selection) and applied to train and test, with no standardisation, exactly as the
  reference's ``kornia.enhance.ZCAWhitening(eps=0.1)``.

:meth:`Dataset.to_display` maps preprocessed (or distilled) images back to [0, 1] for viewing.

Datasets and where they come from (``source``; the default is ``DEFAULT_SOURCE[name]``):

============== =================== ====================================================
name           sources             notes
============== =================== ====================================================
digits         sklearn, npz        16x16x1 (the 8x8 originals, each pixel repeated 2x2, so
                                   the reference depth-3 ConvNet still sees a 2x2 map in
                                   its last block), 10 classes; ships with scikit-learn
                                   (offline), the project's offline default. Test split:
                                   the last 30 images of each class in dataset order.
cifar10        tfds, npz           32x32x3, 10 classes
cifar100       tfds, npz           32x32x3, 100 (fine) classes
tiny_imagenet  folder, npz         64x64x3, 200 classes; the official release folder,
                                   ``val`` used as the test split
============== =================== ====================================================

``npz``: ``data_dir`` holds ``train.npz`` and ``test.npz`` (as written by ``np.savez``) with
``x`` (uint8 [N, H, W, C] in 0..255, or float in [0, 1]), ``y`` (integer [N]) and optionally
``class_names``. This is how the project reads its offline copy of real CIFAR-10
(``../shared/data/cifar10``).

``tfds`` without TensorFlow (tensorflow-datasets 4.9.10, checked by reading its source and by
running ``download_and_prepare`` on a local fake copy of the CIFAR-10 binary release):

* *Reading* a prepared dataset needs no TensorFlow: ``builder.as_data_source(split)`` reads
  the ArrayRecord files (package ``array_record``) and decodes the PNG-encoded images with
  Pillow (``Image.decode_example_np``). Only the ``array_record`` file format is readable this
  way; a dataset prepared in the default ``tfrecord`` format must be prepared again.
  TFDS stores the examples in its own (fixed, deterministic) shuffled order, so "the first K
  of each class" follows that order, not the order of the original CIFAR files.
* *Preparing* CIFAR (download and convert, once) needs TensorFlow:
  ``tensorflow_datasets/image_classification/cifar.py`` reads the downloaded binary batches
  with ``tf.io.gfile.GFile`` (``_load_data``), and ``tfds.features.Image`` encodes every
  NumPy image to PNG with ``tf.image.encode_png`` (``_ImageEncoder._encode_image``); both fail
  with "No module named 'tensorflow'". Before that, ``DatasetBuilder.code_path`` imports
  ``importlib_resources``, a package tensorflow-datasets only declares for Python < 3.9, so
  preparing also fails with "No module named 'importlib_resources'" on a bare install. Hence
  :func:`load_raw` checks both up front, before any download, and asks for
  ``pip install tensorflow-cpu importlib_resources`` (needed once, to prepare).

``folder``: the ``tiny-imagenet-200/`` release folder (or its parent). Decoding its 110,000
JPEGs takes minutes, so the decoded uint8 arrays are cached in ``mct_jax_cache.npz``
(about 1.4 GB, uncompressed for fast loading) inside that folder when it is writable; the
cache is keyed by a fingerprint of the file lists and rebuilt if stale or unreadable.

All functions return float32 images and int32 labels and use no global random state.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

DATASETS = ('digits', 'cifar10', 'cifar100', 'tiny_imagenet')
SOURCES = ('sklearn', 'tfds', 'npz', 'folder')
DEFAULT_SOURCE = {'digits': 'sklearn', 'cifar10': 'tfds', 'cifar100': 'tfds',
                  'tiny_imagenet': 'folder'}

# Sources each dataset can come from; 'npz' works for all so that any dataset can be used
# offline from local arrays.
VALID_SOURCES = {'digits': ('sklearn', 'npz'), 'cifar10': ('tfds', 'npz'),
                 'cifar100': ('tfds', 'npz'), 'tiny_imagenet': ('folder', 'npz')}
NUM_CLASSES = {'digits': 10, 'cifar10': 10, 'cifar100': 100, 'tiny_imagenet': 200}
CHANNELS = {'digits': 1, 'cifar10': 3, 'cifar100': 3, 'tiny_imagenet': 3}
IMAGE_SIZE = {'digits': 16, 'cifar10': 32, 'cifar100': 32, 'tiny_imagenet': 64}  # after loading

# Per-channel (mean, std) of the reference code's transforms.Normalize; 'digits' is
# computed from its training split instead.
STANDARDISATION = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    'cifar100': ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    'tiny_imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Used when an npz archive carries no class_names (CIFAR-10's are short enough to keep here).
CIFAR10_CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                       'ship', 'truck')
DIGITS_TEST_PER_CLASS = 30
TINY_IMAGENET_DIR = 'tiny-imagenet-200'
CACHE_NAME = 'mct_jax_cache.npz'
_CACHE_VERSION = 1
# Rows per matrix-product chunk: bounds the temporaries of ZCA to chunk * D floats.
_ROWS_PER_CHUNK = 4096
# Examples per batched read from a TFDS data source.
_TFDS_READ_BATCH = 1024

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad dataset settings or files; the message names the problem and the fix."""


# ------------------------------------------------------------------------------------ ZCA

class ZCA(NamedTuple):
    """A fitted ZCA whitening over flattened HWC features (D = H * W * C).

    ``transform = U diag(1 / sqrt(S + eps)) U^T`` and ``inverse = U diag(sqrt(S + eps)) U^T``
    where ``U diag(S) U^T`` is the training covariance.
    """
    mean: np.ndarray       # [D] float32, per-feature training mean
    transform: np.ndarray  # [D, D] float32, whitening matrix (symmetric)
    inverse: np.ndarray    # [D, D] float32, its inverse (symmetric)


def fit_zca(x, eps=0.1) -> ZCA:
    """Fits ZCA whitening as ``kornia.enhance.ZCAWhitening(eps)`` (the reference's) does.

    Per-feature mean over samples, unbiased covariance ``C = Xc^T Xc / (N - 1)``, its
    eigendecomposition ``C = U diag(S) U^T`` in float64, then
    ``transform = U diag((S + eps)^-1/2) U^T`` and ``inverse = U diag((S + eps)^1/2) U^T``.
    Whitened training data therefore has covariance ``U diag(S / (S + eps)) U^T``: identity
    on high-variance directions, damped on the low-variance ones.

    kornia flattens CHW, we flatten HWC; the two transforms differ only by a permutation of
    features, so whitened images are the same.

    Args:
      x: [N, H, W, C] raw training images in [0, 1], N >= 2.
      eps: regularisation added to the eigenvalues, > 0.

    Returns:
      ZCA with mean [D], transform and inverse [D, D], float32. Memory: the float64 D x D
      covariance and eigenvectors dominate (about 75 MB each for CIFAR, D = 3072; 1.2 GB
      each for Tiny ImageNet, D = 12288).
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise DataError(f'fit_zca expects images [N, H, W, C], got shape {x.shape}.')
    n = x.shape[0]
    if n < 2:
        raise DataError(f'fit_zca needs at least 2 images for a covariance, got {n}; '
                        'use more training images per class.')
    if not eps > 0:
        raise DataError(f'ZCA eps must be > 0, got {eps}.')
    flat = x.reshape(n, -1)
    d = flat.shape[1]
    mean = flat.mean(axis=0, dtype=np.float64)
    # Accumulate the covariance chunk by chunk so no float64 copy of the whole data exists.
    cov = np.zeros((d, d), np.float64)
    for start in range(0, n, _ROWS_PER_CHUNK):
        centred = flat[start:start + _ROWS_PER_CHUNK].astype(np.float64) - mean
        cov += centred.T @ centred
    cov /= n - 1
    s, u = np.linalg.eigh(cov)
    del cov
    # Round-off makes the zero eigenvalues of a rank-deficient covariance (N <= D) slightly
    # negative; the reference's SVD returns them as >= 0.
    s = np.maximum(s, 0.0)
    transform = ((u * (1.0 / np.sqrt(s + eps))) @ u.T).astype(np.float32)
    inverse = ((u * np.sqrt(s + eps)) @ u.T).astype(np.float32)
    return ZCA(mean.astype(np.float32), transform, inverse)


def _flat_matmul(x, matrix, shift_in, shift_out):
    """``(x.reshape(N, D) - shift_in) @ matrix + shift_out`` in row chunks, float32 out."""
    x = np.asarray(x)
    d = matrix.shape[0]
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != d:
        raise DataError(f'ZCA was fitted on {d} features per image, but images of shape '
                        f'{x.shape[1:]} were given; use images of the shape it was fitted on.')
    flat = x.reshape(x.shape[0], d)
    out = np.empty(flat.shape, np.float32)
    for start in range(0, flat.shape[0], _ROWS_PER_CHUNK):
        rows = flat[start:start + _ROWS_PER_CHUNK].astype(np.float32)
        if shift_in is not None:
            rows -= shift_in
        np.matmul(rows, matrix, out=out[start:start + len(rows)])
        if shift_out is not None:
            out[start:start + len(rows)] += shift_out
    return out.reshape(x.shape)


def apply_zca(zca: ZCA, x) -> np.ndarray:
    """Whitens images: ``(x - mean) @ transform`` on flattened features.

    Args:
      zca: from :func:`fit_zca`.
      x: [N, H, W, C] images in [0, 1] (same H, W, C as the fit).

    Returns:
      [N, H, W, C] float32 whitened images.
    """
    return _flat_matmul(x, zca.transform, zca.mean, None)


def invert_zca(zca: ZCA, x) -> np.ndarray:
    """Undoes :func:`apply_zca`: ``x @ inverse + mean`` on flattened features.

    Args:
      zca: from :func:`fit_zca`.
      x: [N, H, W, C] whitened images.

    Returns:
      [N, H, W, C] float32 images in the raw [0, 1] scale (not clipped).
    """
    return _flat_matmul(x, zca.inverse, None, zca.mean)


# -------------------------------------------------------------------------------- Dataset

class Dataset(NamedTuple):
    """A preprocessed train/test pair, and the validation images held out of training.

    Images are float32 [N, H, W, C] after preprocessing: standardised with ``mean``/``std``
    when ``zca`` is None, otherwise ZCA-whitened (and not standardised). ``mean``/``std`` are
    the dataset's standardisation constants in both cases, but only used when ``zca`` is None.
    ``x_val``/``y_val`` are empty ([0, H, W, C], [0]) without a validation split.
    """
    x_train: np.ndarray   # [N, H, W, C] float32, preprocessed
    y_train: np.ndarray   # [N] int32 in [0, num_classes)
    x_test: np.ndarray    # [M, H, W, C] float32, preprocessed
    y_test: np.ndarray    # [M] int32
    num_classes: int
    class_names: tuple    # num_classes strings
    image_shape: tuple    # (H, W, C)
    mean: np.ndarray      # [C] float32 standardisation mean
    std: np.ndarray       # [C] float32 standardisation std
    zca: ZCA | None
    x_val: np.ndarray | None = None   # [V, H, W, C] float32, preprocessed like x_train
    y_val: np.ndarray | None = None   # [V] int32

    @property
    def has_validation(self) -> bool:
        return self.y_val is not None and len(self.y_val) > 0

    def to_display(self, x):
        """Maps preprocessed images back to [0, 1] for viewing.

        Args:
          x: [N, H, W, C] or [H, W, C] preprocessed images (NumPy or JAX).

        Returns:
          float32 images of the same shape, inverse-ZCA'd (or un-standardised) and clipped
          to [0, 1].
        """
        x = np.asarray(x, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if self.zca is not None:
            out = invert_zca(self.zca, x)
        else:
            out = x * self.std + self.mean
        out = np.clip(out, 0.0, 1.0)
        return out[0] if single else out


# ---------------------------------------------------------------------------- validation

def _check_name_source(name, source):
    """Validates ``name`` and ``source``; returns the source to use."""
    if name not in DATASETS:
        raise DataError(f'unknown dataset {name!r}; choose one of {", ".join(DATASETS)}.')
    if source is None:
        return DEFAULT_SOURCE[name]
    if source not in SOURCES:
        raise DataError(f'unknown source {source!r}; choose one of {", ".join(SOURCES)} '
                        f'(for {name}: {", ".join(VALID_SOURCES[name])}).')
    if source not in VALID_SOURCES[name]:
        raise DataError(f'source {source!r} is not available for dataset {name!r}; use one '
                        f'of {", ".join(VALID_SOURCES[name])}.')
    return source


def _to_unit_float(x):
    """uint8 0..255 or float [0, 1] images -> float32 [0, 1] (a new array)."""
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out /= 255.0
        return out
    return x.astype(np.float32, copy=True)


# ------------------------------------------------------------------------------- sources

def _read_digits():
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


def _load_digits():
    """scikit-learn's digits, upsampled 2x to 16x16, with the fixed per-class split.

    At 8x8 a depth-3 ConvNet normalises a 2x2 map in its last block and barely learns at the
    reference lr 0.01 (20% test accuracy after 30 epochs, against 85% at 16x16).
    """
    images, target = _read_digits()
    x = np.repeat(np.repeat(images / 16.0, 2, axis=1), 2, axis=2)
    x = x.astype(np.float32)[..., None]
    y = target.astype(np.int32)
    is_test = np.zeros(len(y), bool)
    for c in range(NUM_CLASSES['digits']):
        is_test[np.flatnonzero(y == c)[-DIGITS_TEST_PER_CLASS:]] = True
    class_names = tuple(str(c) for c in range(10))
    return x[~is_test], y[~is_test], x[is_test], y[is_test], class_names


def _require_dir(data_dir, source, what):
    """Returns ``data_dir`` as a Path, or raises a DataError saying what it should hold."""
    if data_dir is None:
        raise DataError(f"source {source!r} needs data_dir: the folder that holds {what}; "
                        'pass --data_dir.')
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f'data folder {path} does not exist (or is not a folder); it should '
                        f'hold {what}. Check --data_dir.')
    return path


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
            arrays = {k: archive[k] for k in ('x', 'y', 'class_names') if k in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f'could not read the arrays of {path} (corrupt archive, or an '
                            f'object array that needs pickle): {e}. Re-create it with np.savez '
                            'from plain NumPy arrays.') from e
    return arrays


def _check_npz_split(path, arrays, name):
    """Validates one split read from ``path``; returns (x, y, class_names or None)."""
    x, y = arrays['x'], arrays['y']
    channels, num_classes = CHANNELS[name], NUM_CLASSES[name]
    if x.ndim != 4:
        raise DataError(f'{path}: x has shape {x.shape} (rank {x.ndim}); expected rank 4, '
                        f'[N, H, W, C] (NHWC) images. Add the channel axis or transpose.')
    if x.shape[-1] != channels:
        raise DataError(f'{path}: x has {x.shape[-1]} channels (shape {x.shape}); {name} '
                        f'images have {channels}. Store images NHWC with {channels} channel(s).')
    if x.shape[0] == 0:
        raise DataError(f'{path}: x holds no images; store at least one.')
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        lo, hi = float(x.min()), float(x.max())
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
    names = arrays.get('class_names')
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in 'US' or len(names) != num_classes:
            raise DataError(f'{path}: class_names has shape {names.shape} and dtype '
                            f'{names.dtype}; expected {num_classes} strings for {name}, or '
                            'leave class_names out.')
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    return x, y, names


def _load_npz(name, data_dir):
    """Local arrays: ``data_dir/train.npz`` and ``data_dir/test.npz``."""
    folder = _require_dir(data_dir, 'npz', 'train.npz and test.npz')
    splits = []
    for split in ('train', 'test'):
        path = folder / f'{split}.npz'
        splits.append(_check_npz_split(path, _read_npz(path), name))
    (x_train, y_train, names_train), (x_test, y_test, names_test) = splits
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f'images in {folder / "train.npz"} have shape {x_train.shape[1:]} but '
                        f'those in {folder / "test.npz"} have {x_test.shape[1:]}; both splits '
                        'must share one image shape.')
    if names_train is not None and names_test is not None and names_train != names_test:
        raise DataError(f'class_names differ between {folder / "train.npz"} and '
                        f'{folder / "test.npz"}; store the same names in both (or in one).')
    names = names_train or names_test
    if names is None:
        names = (CIFAR10_CLASS_NAMES if name == 'cifar10'
                 else tuple(str(c) for c in range(NUM_CLASSES[name])))
    return x_train, y_train, x_test, y_test, names


def _tfds_records(data_source, keys):
    """Batched read of ``keys``; falls back to one call per key if batching is unusable.

    ``tfds.testing.mock_data`` (4.9.10) installs ``__getitems__`` on its mock without binding
    ``self``, so the batched call raises TypeError there while single reads work.
    """
    try:
        return data_source.__getitems__(keys)
    except TypeError:
        return [data_source[k] for k in keys]


def _read_tfds_split(builder, split, name):
    """All examples of one split as (uint8 images [N, H, W, C], labels [N])."""
    try:
        data_source = builder.as_data_source(split=split)
    except (NotImplementedError, ValueError) as e:
        raise DataError(f'TFDS cannot give random access to {name} {split!r} at '
                        f'{builder.data_dir}: {e}. Only the array_record format is readable '
                        'without TensorFlow: delete that folder and let mct_jax prepare it '
                        'again (it uses file_format="array_record"), or use --source npz.') from e
    n = len(data_source)
    images = labels = None
    for start in range(0, n, _TFDS_READ_BATCH):
        keys = list(range(start, min(n, start + _TFDS_READ_BATCH)))
        records = _tfds_records(data_source, keys)
        batch = np.stack([np.asarray(r['image']) for r in records])
        if images is None:
            images = np.empty((n,) + batch.shape[1:], batch.dtype)
            labels = np.empty((n,), np.int64)
        images[start:start + len(keys)] = batch
        labels[start:start + len(keys)] = [int(r['label']) for r in records]
    if images is None:
        raise DataError(f'TFDS split {split!r} of {name} at {builder.data_dir} is empty; '
                        'delete that folder so that it is prepared again.')
    return images, labels


def _load_tfds(name, data_dir):
    """CIFAR through TensorFlow Datasets' random-access data sources (no TensorFlow needed)."""
    import tensorflow_datasets as tfds  # Deferred: only this source needs it.
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        # Preparing needs these (see module docstring); check before downloading 160 MB.
        missing = [m for m in ('tensorflow', 'importlib_resources')
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise DataError(
                f'{name} is not prepared in {builder.data_dir}, and preparing it with TFDS '
                f'needs {" and ".join(missing)} (not installed here): run '
                '`pip install tensorflow-cpu importlib_resources` once to prepare it (reading '
                'it afterwards needs neither), or use --source npz with local arrays.')
        try:
            builder.download_and_prepare(file_format='array_record')
        except Exception as e:  # Network, disk and TFDS errors alike: all end the same way.
            raise DataError(
                f'could not download and prepare {name} with TFDS into {builder.data_dir}: '
                f'{type(e).__name__}: {e}. Preparing downloads the data once, so it needs '
                'internet access; or use --source npz with local arrays.') from e
    names = tuple(builder.info.features['label'].names)
    x_train, y_train = _read_tfds_split(builder, 'train', name)
    x_test, y_test = _read_tfds_split(builder, 'test', name)
    return x_train, y_train, x_test, y_test, names


def _tiny_root(data_dir):
    """The ``tiny-imagenet-200`` folder: ``data_dir`` itself or its child of that name."""
    folder = _require_dir(data_dir, 'folder', f'the {TINY_IMAGENET_DIR}/ release folder')
    for root in (folder, folder / TINY_IMAGENET_DIR):
        if (root / 'wnids.txt').is_file():
            return root
    raise DataError(f'wnids.txt not found in {folder} nor in {folder / TINY_IMAGENET_DIR}: '
                    f'data_dir must be the {TINY_IMAGENET_DIR}/ folder of the Tiny ImageNet '
                    'release (or the folder that contains it).')


def _tiny_index(root: Path):
    """Lists the release: sorted wnids, [(path, label)] for train and val, a fingerprint."""
    raw = [line.strip() for line in (root / 'wnids.txt').read_text().splitlines()]
    raw = [w for w in raw if w]
    if not raw:
        raise DataError(f'{root / "wnids.txt"} lists no classes; it should hold one wnid per '
                        'line.')
    if len(set(raw)) != len(raw):
        raise DataError(f'{root / "wnids.txt"} lists a wnid more than once; restore the '
                        'original file.')
    wnids = sorted(raw)
    label_of = {w: i for i, w in enumerate(wnids)}
    fingerprint = hashlib.sha256(f'v{_CACHE_VERSION}\n'.encode())
    train_dir = root / 'train'
    if not train_dir.is_dir():
        raise DataError(f'training folder {train_dir} not found; data_dir must be the complete '
                        f'{TINY_IMAGENET_DIR}/ release.')
    train = []
    for label, wnid in enumerate(wnids):
        image_dir = train_dir / wnid / 'images'
        if not image_dir.is_dir():
            raise DataError(f'class folder {image_dir} not found for wnid {wnid} listed in '
                            'wnids.txt; restore the release, or remove the wnid from wnids.txt.')
        files = sorted(f for f in os.listdir(image_dir)
                       if f.lower().endswith(('.jpeg', '.jpg', '.png')))
        if not files:
            raise DataError(f'class folder {image_dir} holds no images; restore the release.')
        train.extend((image_dir / f, label) for f in files)
        fingerprint.update(('\n'.join([wnid] + files) + '\n').encode())
    annotations = root / 'val' / 'val_annotations.txt'
    if not annotations.is_file():
        raise DataError(f'validation annotations {annotations} not found (the val split is the '
                        'test set); data_dir must be the complete release.')
    text = annotations.read_text()
    fingerprint.update(text.encode())
    val = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split('\t')
        if len(fields) < 2:
            raise DataError(f'{annotations} line {lineno} is not "filename<TAB>wnid...": '
                            f'{line!r}; restore the original file.')
        filename, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise DataError(f'{annotations} line {lineno}: unknown wnid {wnid!r} (not in '
                            'wnids.txt); the annotations and wnids.txt must come from the '
                            'same release.')
        val.append((root / 'val' / 'images' / filename, label_of[wnid]))
    if not val:
        raise DataError(f'{annotations} lists no images; restore the original file.')
    return wnids, train, val, fingerprint.hexdigest()


def _tiny_class_names(root, wnids):
    """First name of each wnid in words.txt (if present), else the wnid itself."""
    words = {}
    path = root / 'words.txt'
    if path.is_file():
        wanted = set(wnids)
        for line in path.read_text(errors='replace').splitlines():
            wnid, _, names = line.partition('\t')
            if wnid in wanted and names.strip():
                words[wnid] = names.split(',')[0].strip()
    return tuple(words.get(w, w) for w in wnids)


def _decode_images(files, reference=None):
    """Decodes [(path, label)] to (uint8 [N, H, W, 3], int64 [N]), all of one size.

    ``reference`` is an optional (path, shape) that every image must match; by default the
    first image is the reference.
    """
    from PIL import Image  # Deferred: only the folder source decodes images.
    images = None
    for k, (path, _) in enumerate(files):
        try:
            with Image.open(path) as img:
                # Some Tiny ImageNet JPEGs are grayscale: convert everything to RGB.
                array = np.asarray(img.convert('RGB'))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f'cannot read image {path}: {e}; restore the file from the '
                            'release.') from e
        if reference is None:
            reference = (path, array.shape)
        if images is None:
            images = np.empty((len(files),) + tuple(reference[1]), np.uint8)
        if array.shape != images.shape[1:]:
            raise DataError(f'image {path} is {array.shape[1]}x{array.shape[0]} but '
                            f'{reference[0]} is {images.shape[2]}x{images.shape[1]}; all images '
                            'must have one size (64x64 in the release): restore or resize it.')
        images[k] = array
    labels = np.array([label for _, label in files], np.int64)
    return images, labels


_CACHE_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')


def _read_tiny_cache(path: Path, fingerprint: str):
    """The cached arrays if ``path`` loads and matches ``fingerprint``, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cache:
            if str(cache['fingerprint'][()]) != fingerprint:
                logger.info('Tiny ImageNet cache %s is stale; rebuilding it.', path)
                return None
            arrays = {k: cache[k] for k in _CACHE_KEYS}
    except Exception as e:  # Any unreadable cache is simply rebuilt.
        logger.warning('Ignoring unreadable Tiny ImageNet cache %s (%s); rebuilding it.',
                       path, e)
        return None
    ok = all(arrays[k].dtype == np.uint8 and arrays[k].ndim == 4 for k in ('x_train', 'x_test'))
    ok = ok and len(arrays['x_train']) == len(arrays['y_train'])
    ok = ok and len(arrays['x_test']) == len(arrays['y_test'])
    return arrays if ok else None


def _write_tiny_cache(path: Path, fingerprint: str, arrays):
    """Writes the cache atomically (temp file + os.replace); skips an unwritable folder."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix='.' + CACHE_NAME, suffix='.tmp', dir=path.parent)
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, fingerprint=np.array(fingerprint), **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache is as public as the data.
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        logger.warning('Could not write the Tiny ImageNet cache %s (%s); the JPEGs will be '
                       'decoded again next time.', path, e)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _load_folder(name, data_dir):
    """Tiny ImageNet from its release folder (val as test), through the uint8 cache."""
    del name  # Only tiny_imagenet comes from a folder.
    root = _tiny_root(data_dir)
    wnids, train, val, fingerprint = _tiny_index(root)
    cache_path = root / CACHE_NAME
    arrays = _read_tiny_cache(cache_path, fingerprint)
    if arrays is None:
        x_train, y_train = _decode_images(train)
        x_test, y_test = _decode_images(val, reference=(train[0][0], x_train.shape[1:]))
        arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        _write_tiny_cache(cache_path, fingerprint, arrays)
    return (arrays['x_train'], arrays['y_train'], arrays['x_test'], arrays['y_test'],
            _tiny_class_names(root, wnids))


_LOADERS = {'sklearn': lambda name, data_dir: _load_digits(), 'npz': _load_npz,
            'tfds': _load_tfds, 'folder': _load_folder}


# ----------------------------------------------------------------------------- public API

def load_raw(name, source=None, data_dir=None) -> tuple:
    """Loads a dataset without preprocessing.

    Args:
      name: one of DATASETS.
      source: one of VALID_SOURCES[name]; None for DEFAULT_SOURCE[name].
      data_dir: the folder the source reads ('npz': holds train.npz/test.npz; 'folder': the
        tiny-imagenet-200 release or its parent; 'tfds': the TFDS data_dir, None for TFDS's
        default; unused by 'sklearn').

    Returns:
      (x_train, y_train, x_test, y_test, class_names): images float32 [N, H, W, C] in [0, 1],
      labels int32 [N] in [0, len(class_names)), class_names a tuple of str.

    Raises:
      DataError: unknown name/source, missing or malformed files (the message says the fix).
    """
    source = _check_name_source(name, source)
    x_train, y_train, x_test, y_test, class_names = _LOADERS[source](name, data_dir)
    return (_to_unit_float(x_train), np.asarray(y_train, np.int32), _to_unit_float(x_test),
            np.asarray(y_test, np.int32), tuple(class_names))


def first_k_per_class(x, y, k, num_classes, *, class_names: Sequence[str] | None = None):
    """Keeps the first ``k`` images of each class, in their original order.

    Args:
      x: [N, ...] images.
      y: [N] integer labels in [0, num_classes).
      k: images to keep per class, >= 1.
      num_classes: number of classes; every class must have at least ``k`` images.
      class_names: optional names, only used in error messages.

    Returns:
      (x[keep], y[keep]) with ``num_classes * k`` images; ``keep`` is increasing, so the
      classes stay interleaved as in the input.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f'train_images_per_class must be an integer >= 1, got {k!r}.')
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise DataError(f'{len(x)} images but {len(y)} labels; they must have the same length.')
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f'labels lie in [{y.min()}, {y.max()}], outside [0, {num_classes}).')
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() < k:
        c = int(np.argmin(counts))
        label = f'class {c}'
        if class_names is not None and class_names[c] != str(c):
            label += f' ({class_names[c]})'
        raise DataError(f'{label} has only {counts[c]} training images, fewer than '
                        f'train_images_per_class={k}; pass a smaller --train_images_per_class '
                        f'(at most {counts.min()}).')
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in range(num_classes)]))
    return x[keep], y[keep]


def hold_out_last_per_class(x, y, k: int, num_classes: int):
    """Splits off the last ``k`` images of each class (in their original order).

    Returns ``(x_rest, y_rest, x_held, y_held)``; both parts keep the input's order.
    Raises :class:`DataError` when a class has ``k`` images or fewer.
    """
    y = np.asarray(y)
    if not k:
        return x, y, x[:0], y[:0]
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() <= k:
        c = int(np.argmin(counts))
        raise DataError(f'class {c} has only {counts[c]} training images; holding out '
                        f'val_images_per_class={k} would leave none to train on: lower '
                        '--val_images_per_class.')
    held = np.zeros(len(y), bool)
    for c in range(num_classes):
        held[np.flatnonzero(y == c)[-k:]] = True
    return x[~held], y[~held], x[held], y[held]


def load_dataset(name, source=None, data_dir=None, train_images_per_class=None, zca=False,
                 zca_eps=0.1, val_images_per_class: int = 0) -> Dataset:
    """Loads and preprocesses a dataset as the reference code does (METHOD.md section 6).

    Args:
      name, source, data_dir: as in :func:`load_raw`.
      train_images_per_class: keep only the first K training images of each class
        (:func:`first_k_per_class`); None keeps all. The test split is never cut.
      zca: ZCA-whiten instead of standardising; the ZCA is fitted on the (selected) raw
        training images.
      zca_eps: ZCA regularisation (the reference's 0.1).
      val_images_per_class: hold out the last V training images of each class as a
        validation split before anything else sees them: they are cut before the first-K
        selection, the statistics of ``digits`` and the ZCA fit, so no expert, initial
        synthetic set or preprocessing is derived from them.

    Returns:
      A :class:`Dataset` of float32 images and int32 labels.
    """
    x_train, y_train, x_test, y_test, class_names = load_raw(name, source, data_dir)
    num_classes = len(class_names)
    if val_images_per_class < 0:
        raise DataError(f'val_images_per_class must be >= 0, got {val_images_per_class}.')
    x_train, y_train, x_val, y_val = hold_out_last_per_class(x_train, y_train,
                                                             val_images_per_class, num_classes)
    if name in STANDARDISATION:
        mean, std = (np.array(v, np.float32) for v in STANDARDISATION[name])
    else:
        # No published constants: the statistics of the full training split (before the
        # first-K cut, so preprocessing does not depend on K, like the fixed constants).
        axes = tuple(range(x_train.ndim - 1))
        mean = x_train.mean(axis=axes, dtype=np.float64).astype(np.float32)
        std = x_train.std(axis=axes, dtype=np.float64).astype(np.float32)
    if train_images_per_class is not None:
        x_train, y_train = first_k_per_class(x_train, y_train, train_images_per_class,
                                             num_classes, class_names=class_names)
    if zca:
        whitening = fit_zca(x_train, zca_eps)
        x_train, x_test, x_val = (apply_zca(whitening, x) for x in (x_train, x_test, x_val))
    else:
        whitening = None
        # In place: the arrays from load_raw are ours, and Tiny ImageNet is 5 GB of float32.
        for x in (x_train, x_test, x_val):
            x -= mean
            x /= std
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   num_classes=num_classes, class_names=class_names,
                   image_shape=tuple(x_train.shape[1:]), mean=mean, std=std, zca=whitening,
                   x_val=x_val, y_val=y_val)
