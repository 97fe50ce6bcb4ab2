"""Datasets for distillation: reading them, choosing images, preprocessing each batch.

::

    ds = data.load_dataset('cifar10', source='npz', data_dir='cifar10/', zca=True)
    ds.x_train                 # uint8 [50000, 32, 32, 3]: raw pixels, never converted whole
    ds.prepare(ds.x_train[:8])                        # float32 network inputs, on the host
    preprocess.apply(ds.preprocessing, batch)         # the same on the device (traceable)

One concept per module:

* :mod:`~mct_jax.data.catalog`: the datasets, their shapes, classes and sources;
* :mod:`~mct_jax.data.sources`, :mod:`~mct_jax.data.tiny_imagenet`,
  :mod:`~mct_jax.data.imagenet`: the readers, all returning raw pixels;
* :mod:`~mct_jax.data.store`: the prepared format (memory-mapped uint8 arrays), written by
  ``python -m mct_jax.prepare`` and by the data cache;
* :mod:`~mct_jax.data.arrays`: image arrays read by rows (in memory, mapped, or decoded on
  demand);
* :mod:`~mct_jax.data.splits`: the first K per class, the validation split, random images
  per class;
* :mod:`~mct_jax.data.preprocess` and :mod:`~mct_jax.data.zca`: standardisation and ZCA
  whitening, per batch;
* :mod:`~mct_jax.data.batches`: an epoch's batches, read ahead on the host;
* :mod:`~mct_jax.data.dataset`: :class:`Dataset` and :func:`load_dataset`.
"""

from mct_jax.data import arrays, batches, catalog, preprocess, splits, store, zca  # noqa: F401
from mct_jax.data.catalog import (CHANNELS, DATASETS, DEFAULT_SOURCE, IMAGE_SIZE,  # noqa: F401
                                  IMAGENET_SUBSETS, NUM_CLASSES, SOURCES, STANDARDISATION,
                                  VALID_SOURCES, DataError, check_name_source)
from mct_jax.data.dataset import (DEFAULT_CACHE, Dataset, check_location,  # noqa: F401
                                  load_dataset, load_raw)
from mct_jax.data.preprocess import Preprocessing  # noqa: F401
from mct_jax.data.sources import Raw  # noqa: F401
from mct_jax.data.splits import (first_k_per_class, hold_out_last_per_class,  # noqa: F401
                                 random_per_class)
from mct_jax.data.zca import ZCA, apply_zca, fit_zca, invert_zca  # noqa: F401

CIFAR10_CLASS_NAMES = catalog.SPECS['cifar10'].class_names
