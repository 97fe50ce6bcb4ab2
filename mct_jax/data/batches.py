"""Reading an epoch's batches from the host, one group ahead of the device.

Training on real data needs only the rows of the current batches: :func:`read_ahead`
reads groups of batches (``index`` arrays [K, B]) from any image array
(:mod:`mct_jax.data.arrays`) on a background thread while the device trains on the group
before, so that a memory-mapped or decoded-on-demand split costs the time of reading it
and the memory of two groups, never the whole split.
"""

from __future__ import annotations

import concurrent.futures
from typing import Iterable, Iterator

import numpy as np

from mct_jax.data.arrays import take


def read_rows(x, y, index) -> tuple[np.ndarray, np.ndarray]:
    """``(x rows, y rows)`` of an index array of any shape [..., B]: images
    [..., B, H, W, C], labels [..., B]."""
    index = np.asarray(index)
    flat = index.reshape(-1)
    images = take(x, flat).reshape(index.shape + tuple(x.shape[1:]))
    return images, np.asarray(y)[flat].reshape(index.shape)


def read_ahead(x, y, groups: Iterable) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields :func:`read_rows` of each index array in ``groups``, reading the next group
    on a background thread while the caller works on the current one."""
    groups = iter(groups)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='read-ahead') as pool:
        pending = None
        first = next(groups, None)
        if first is not None:
            pending = pool.submit(read_rows, x, y, first)
        while pending is not None:
            current = pending.result()
            upcoming = next(groups, None)
            pending = None if upcoming is None else pool.submit(read_rows, x, y, upcoming)
            yield current
