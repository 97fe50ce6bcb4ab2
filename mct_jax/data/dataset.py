"""A loaded dataset: raw images by split, and the preprocessing that makes them network
inputs (the paper's protocol, section 6 of ``docs/method.md``).

:func:`load_dataset` reads a source (:mod:`mct_jax.data.catalog`), holds out the validation
split, keeps the first K images of each class and fits the preprocessing, all without
converting the images: they stay uint8 (in memory or memory-mapped) and each batch becomes
float32 on the device (:mod:`mct_jax.data.preprocess`). Memory therefore follows the batch,
beyond the uint8 images themselves.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

import mct_jax.data.arrays as arrays
import mct_jax.data.catalog as catalog
import mct_jax.data.imagenet as imagenet
import mct_jax.data.preprocess as preprocess
import mct_jax.data.sources as sources
import mct_jax.data.splits as splits
import mct_jax.data.store as store
import mct_jax.data.tiny_imagenet as tiny_imagenet
from mct_jax.data.catalog import DataError
from mct_jax.data.zca import ZCA, apply_zca, fit_zca, invert_zca

DEFAULT_CACHE = os.environ.get('MCT_JAX_DATA_CACHE', '~/.cache/mct_jax/data')


class Dataset(NamedTuple):
    """Train, test and validation images with their labels, and how to preprocess them.

    ``x_*`` hold **raw pixels**, uint8 [N, H, W, C] (NumPy arrays, memory maps or other image
    arrays, :mod:`mct_jax.data.arrays`); an ``npz`` archive of float images in [0, 1] is
    preprocessed once at load instead and gives float32 network inputs. Integer images go
    through ``preprocessing`` wherever a network sees them (:func:`preprocess.apply` on the
    device, :meth:`prepare` on the host); ``mean``/``std`` are the standardisation
    constants, used when ``zca`` is None. ``x_val``/``y_val`` are empty without a
    validation split.
    """
    x_train: object       # [N, H, W, C] raw pixels
    y_train: np.ndarray   # [N] int32 in [0, num_classes)
    x_test: object        # [M, H, W, C]
    y_test: np.ndarray    # [M] int32
    num_classes: int
    class_names: tuple    # num_classes strings
    image_shape: tuple    # (H, W, C)
    mean: np.ndarray      # [C] float32 standardisation mean
    std: np.ndarray       # [C] float32 standardisation std
    zca: ZCA | None
    x_val: object = None  # [V, H, W, C], preprocessed like x_train
    y_val: np.ndarray | None = None   # [V] int32
    preprocessing: preprocess.Preprocessing | None = None

    @property
    def has_validation(self) -> bool:
        return self.y_val is not None and len(self.y_val) > 0

    def prepare(self, x) -> np.ndarray:
        """Network inputs (float32 NumPy) of raw images ``x`` on the host; float images are
        returned as they are."""
        return preprocess.apply_host(self.preprocessing, x)

    def eval_splits(self, validation_first: bool = False) -> dict:
        """``{'test': (x, y)}``, with ``'validation'`` when there is a validation split
        (first when ``validation_first``, else last), the images in memory."""
        out = {'test': (arrays.materialize(self.x_test), self.y_test)}
        if self.has_validation:
            val = (arrays.materialize(self.x_val), self.y_val)
            out = {'validation': val, **out} if validation_first else {**out, 'validation': val}
        return out

    def to_display(self, x):
        """Maps network inputs back to [0, 1] for viewing.

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
        out = invert_zca(self.zca, x) if self.zca is not None else x * self.std + self.mean
        out = np.clip(out, 0.0, 1.0)
        return out[0] if single else out


_LOADERS = {'sklearn': sources.load_digits, 'npz': sources.load_npz,
            'tfds': sources.load_tfds, 'prepared': sources.load_prepared}


def _folder_loader(name):
    if name == 'tiny_imagenet':
        return tiny_imagenet.load
    if name == 'imagenet64':
        return imagenet.load_downsampled
    return imagenet.load_subset


def load_raw(name, source=None, data_dir=None, cache_dir=None) -> sources.Raw:
    """Reads a dataset as stored: raw pixels, nothing converted.

    Args:
      name: one of ``catalog.DATASETS``.
      source: one of ``catalog.VALID_SOURCES[name]``; None for the default.
      data_dir: the folder the source reads ('npz': holds train.npz/test.npz; 'folder': the
        official release; 'prepared': a folder written by ``python -m mct_jax.prepare``;
        'tfds': the TFDS data_dir, None for TFDS's default; unused by 'sklearn').
      cache_dir: where the 'folder' source keeps the decoded images (default
        ``~/.cache/mct_jax/data``, or ``$MCT_JAX_DATA_CACHE``).

    Returns:
      A :class:`sources.Raw`.

    Raises:
      DataError: unknown name/source, missing or malformed files (the message says the fix).
    """
    source = catalog.check_name_source(name, source)
    load = _folder_loader(name) if source == 'folder' else _LOADERS[source]
    return load(name, data_dir, cache_dir or DEFAULT_CACHE)


def check_location(name: str, source: str, data_dir) -> None:
    """Checks, without reading images, that ``data_dir`` holds what ``source`` reads for
    ``name`` ('folder' or 'prepared'); DataError naming the problem and the fix."""
    if source == 'prepared':
        meta = store.read_meta(sources.require_dir(
            data_dir, 'prepared', 'a dataset written by python -m mct_jax.prepare'))
        if meta['dataset'] != name:
            raise DataError(f'{data_dir} holds {meta["dataset"]}, not {name}; pass '
                            f'--dataset={meta["dataset"]} or another --data_dir.')
    elif name == 'tiny_imagenet':
        tiny_imagenet.root(data_dir)
    elif name == 'imagenet64':
        imagenet.downsampled_files(data_dir)
    else:
        imagenet.check_subset_folder(name, data_dir)


def _standardisation(name, raw: sources.Raw, rest):
    """The dataset's published (mean, std) or, for ``digits``, those of its training split
    ``raw.x_train[rest]`` (after the validation images are held out, before the first-K
    cut, so that preprocessing does not depend on K)."""
    if name in catalog.STANDARDISATION:
        return tuple(np.array(v, np.float32) for v in catalog.STANDARDISATION[name])
    x = arrays.take(raw.x_train, rest)
    if preprocess.is_raw(x):
        x = preprocess.unit_levels(raw.white, x.shape[-1])[x, np.arange(x.shape[-1])]
    else:
        x = x.astype(np.float32, copy=False)
    axes = tuple(range(x.ndim - 1))
    return (x.mean(axis=axes, dtype=np.float64).astype(np.float32),
            x.std(axis=axes, dtype=np.float64).astype(np.float32))


def _select(x, idx):
    """Rows ``idx`` of an image array: copied when it is in memory (a small subset of a
    NumPy array), a lazy :class:`arrays.Subset` of a memory map or data source."""
    if len(idx) == len(x) and np.array_equal(idx, np.arange(len(x))):
        return x
    return arrays.take(x, idx) if arrays.in_memory(x) else arrays.Subset(x, idx)


def load_dataset(name, source=None, data_dir=None, train_images_per_class=None, zca=False,
                 zca_eps=0.1, val_images_per_class: int = 0, cache_dir=None) -> Dataset:
    """Loads a dataset and fits its preprocessing as the reference code does.

    Args:
      name, source, data_dir, cache_dir: as in :func:`load_raw`.
      train_images_per_class: keep only the first K training images of each class
        (:func:`splits.first_k_indices`); None keeps all. The test split is never cut.
      zca: ZCA-whiten instead of standardising; the ZCA is fitted on the (selected) raw
        training images.
      zca_eps: ZCA regularisation (the reference's 0.1).
      val_images_per_class: hold out the last V training images of each class as a
        validation split before anything else sees them: they are cut before the first-K
        selection, the statistics of ``digits`` and the ZCA fit, so no expert, initial
        synthetic set or preprocessing is derived from them.

    Returns:
      A :class:`Dataset` of raw images and int32 labels.
    """
    raw = load_raw(name, source, data_dir, cache_dir)
    num_classes = len(raw.class_names)
    if val_images_per_class < 0:
        raise DataError(f'val_images_per_class must be >= 0, got {val_images_per_class}.')
    rest, held = splits.hold_out_indices(raw.y_train, val_images_per_class, num_classes)
    y_train, y_val = raw.y_train[rest], raw.y_train[held]
    mean, std = _standardisation(name, raw, rest)
    keep = np.arange(len(rest))
    if train_images_per_class is not None:
        keep = splits.first_k_indices(y_train, train_images_per_class, num_classes,
                                      class_names=raw.class_names)
    x_train, y_train = _select(raw.x_train, rest[keep]), y_train[keep]
    x_val = _select(raw.x_train, held)
    x_test = raw.x_test
    whitening = None
    if preprocess.is_raw(raw.x_train):
        to_unit = lambda rows: preprocess.unit_levels(raw.white, rows.shape[-1])[
            np.asarray(rows), np.arange(rows.shape[-1])]
        whitening = fit_zca(x_train, zca_eps, to_unit) if zca else None
        prep = preprocess.make(mean, std, raw.white, whitening)
    else:
        # Float images in [0, 1] (an npz archive of floats): preprocessed here, once, into
        # float32 network inputs (they were float in memory already).
        whitening = fit_zca(x_train, zca_eps) if zca else None
        x_train, x_test, x_val = (_float_inputs(x, mean, std, whitening)
                                  for x in (x_train, x_test, x_val))
        prep = None
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=raw.y_test,
                   num_classes=num_classes, class_names=raw.class_names,
                   image_shape=tuple(raw.x_train.shape[1:]), mean=mean, std=std,
                   zca=whitening, x_val=x_val, y_val=y_val, preprocessing=prep)


def _float_inputs(x, mean, std, zca: ZCA | None) -> np.ndarray:
    """Network inputs of float images in [0, 1]: ZCA-whitened, or standardised."""
    if zca is not None:
        return apply_zca(zca, x)
    out = np.asarray(x, np.float32).copy()
    out -= mean
    out /= std
    return out
