"""Decoding image files into a uint8 array, in parallel threads, with progress in the log."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time

import numpy as np

from mct_jax.data.catalog import DataError

logger = logging.getLogger(__name__)


def decode(path, size: int | None = None) -> np.ndarray:
    """One image file as uint8 [H, W, 3] RGB (grayscale and CMYK files are converted).

    ``size``: resize to ``size x size`` with bilinear filtering, as the MTT reference's
    ``transforms.Resize((size, size))`` does for its ImageNet subsets (the aspect ratio is
    not kept; Pillow's bilinear filter widens with the scale factor, which is torchvision's
    antialiased resize). None keeps the file's size.
    """
    from PIL import Image  # Deferred: only the folder sources decode images.
    try:
        with Image.open(path) as img:
            img = img.convert('RGB')
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f'cannot read image {path}: {e}; restore the file from the '
                        'release.') from e


def decode_into(out, files, size: int | None = None, what: str = 'images',
                workers: int | None = None) -> None:
    """Decodes ``files`` (paths) into ``out[i]`` (uint8 [N, H, W, 3], e.g. a memory map),
    using every core; logs progress about every 10 %. Every image must decode to
    ``out.shape[1:]`` (``size`` resizes them to it)."""
    n = len(files)
    if n == 0:
        return
    want = tuple(out.shape[1:])
    workers = workers or min(32, os.cpu_count() or 1)
    start, step, next_log = time.time(), max(1, n // 10), 0

    def one(i):
        array = decode(files[i], size)
        if array.shape != want:
            raise DataError(f'image {files[i]} is {array.shape[1]}x{array.shape[0]}, but the '
                            f'images of this dataset are {want[1]}x{want[0]}: restore or resize '
                            'it.')
        out[i] = array

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(one, range(n)), 1):
            if done >= next_log or done == n:
                seconds = time.time() - start
                logger.info('Decoded %d of %d %s (%.0f s)', done, n, what, seconds)
                next_log = done + step
