"""Image arrays that need not be in memory: the rows of a dataset split, read on demand.

A split's images are any object with ``shape``, ``dtype``, ``len()`` and row indexing by
an integer array (``x[np.array([...])] -> np.ndarray``) and by a slice. A NumPy array, a
memory-mapped one (``np.load(..., mmap_mode='r')``), :class:`Subset` (chosen rows of
another such array, e.g. the first K per class of a memory-mapped split) and
:class:`TfdsImages` (a TFDS data source, decoded as rows are read) all are. Reading the
rows of a batch is all that training on real data needs.
"""

from __future__ import annotations

import numpy as np


class Subset:
    """Rows ``index`` of ``base``, read from ``base`` only when asked for."""

    def __init__(self, base, index):
        self.base, self.index = base, np.asarray(index, np.int64)
        self.shape = (len(self.index),) + tuple(base.shape[1:])
        self.dtype = base.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows):
        if np.ndim(rows) == 0 and not isinstance(rows, slice):
            return take(self.base, self.index[[rows]])[0]
        return take(self.base, self.index[rows])

    def __array__(self, dtype=None, copy=None):
        out = take(self.base, self.index)
        return out if dtype is None else out.astype(dtype)


class TfdsImages:
    """The images of a TFDS data source (``builder.as_data_source(split)``), decoded as
    rows are read; ``labels`` are read once (they are small)."""

    def __init__(self, data_source, shape, dtype=np.uint8):
        self.source = data_source
        self.shape, self.dtype = (len(data_source),) + tuple(shape), np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(self.shape[0])]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, rows):
        keys = np.arange(self.shape[0])[rows] if isinstance(rows, slice) else np.asarray(rows)
        records = read_records(self.source, [int(k) for k in np.ravel(keys)])
        out = np.empty((len(records),) + self.shape[1:], self.dtype)
        for i, r in enumerate(records):
            out[i] = np.asarray(r['image'])
        return out.reshape(np.shape(keys) + self.shape[1:])


def read_records(data_source, keys):
    """Batched read of ``keys``; falls back to one call per key if batching is unusable.

    ``tfds.testing.mock_data`` (4.9.10) installs ``__getitems__`` on its mock without binding
    ``self``, so the batched call raises TypeError there while single reads work.
    """
    try:
        return data_source.__getitems__(keys)
    except (TypeError, AttributeError):
        return [data_source[k] for k in keys]


def take(x, rows) -> np.ndarray:
    """Rows ``rows`` (an integer array) of any image array, as a NumPy array in that order.

    A memory-mapped array is read in increasing row order (sequential on disk) and then
    put back in the requested order.
    """
    rows = np.asarray(rows, np.int64)
    if isinstance(x, np.memmap) or (isinstance(x, np.ndarray) and not x.flags.owndata
                                    and isinstance(x.base, np.memmap)):
        order = np.argsort(rows, kind='stable')
        out = np.empty((len(rows),) + tuple(x.shape[1:]), x.dtype)
        out[order] = x[rows[order]]
        return out
    return np.asarray(x[rows])


def materialize(x) -> np.ndarray:
    """The whole array in memory (a NumPy array is returned as it is)."""
    if isinstance(x, np.ndarray) and not isinstance(x, np.memmap):
        return x
    return take(x, np.arange(len(x)))


def in_memory(x) -> bool:
    """Whether ``x`` is an ordinary NumPy array (not memory-mapped, not read on demand)."""
    return isinstance(x, np.ndarray) and not isinstance(x, np.memmap)
