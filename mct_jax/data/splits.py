"""Choosing images by class: the first K of each class, a held-out validation split, and
random images of each class (the synthetic set's initialisation and the random-real
baseline).

Each choice is made on the labels alone and returned as row indices, so that it applies
to any image array (:mod:`mct_jax.data.arrays`) without reading its images.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from mct_jax.data.arrays import take
from mct_jax.data.catalog import DataError


def first_k_indices(y, k, num_classes: int, *,
                    class_names: Sequence[str] | None = None) -> np.ndarray:
    """Increasing indices of the first ``k`` images of each class (so the classes stay
    interleaved as in the input); DataError naming the class when one has fewer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f'train_images_per_class must be an integer >= 1, got {k!r}.')
    y = np.asarray(y)
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
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in range(num_classes)]))


def first_k_per_class(x, y, k, num_classes: int, *,
                      class_names: Sequence[str] | None = None):
    """``(x[keep], y[keep])``: the first ``k`` images of each class, in their original
    order (:func:`first_k_indices`)."""
    if len(x) != len(y):
        raise DataError(f'{len(x)} images but {len(y)} labels; they must have the same length.')
    keep = first_k_indices(y, k, num_classes, class_names=class_names)
    return take(x, keep), np.asarray(y)[keep]


def hold_out_indices(y, k: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, held)``: increasing indices of all but the last ``k`` images of each class,
    and of those last ``k``. DataError when a class has ``k`` images or fewer."""
    y = np.asarray(y)
    if not k:
        return np.arange(len(y)), np.arange(0)
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() <= k:
        c = int(np.argmin(counts))
        raise DataError(f'class {c} has only {counts[c]} training images; holding out '
                        f'val_images_per_class={k} would leave none to train on: lower '
                        '--val_images_per_class.')
    held = np.zeros(len(y), bool)
    for c in range(num_classes):
        held[np.flatnonzero(y == c)[-k:]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def hold_out_last_per_class(x, y, k: int, num_classes: int):
    """``(x_rest, y_rest, x_held, y_held)``: the last ``k`` images of each class split off
    (:func:`hold_out_indices`); both parts keep the input's order."""
    rest, held = hold_out_indices(y, k, num_classes)
    y = np.asarray(y)
    return take(x, rest), y[rest], take(x, held), y[held]


def random_per_class_indices(key, y, num_classes: int, ipc: int, candidates=None) -> np.ndarray:
    """Indices of ``ipc`` random images of each class, classes in order (class 0's first),
    each class's in increasing order. Class c's draw uses ``fold_in(key, c)``.

    ``candidates``: an optional boolean mask [N] of the images allowed (e.g. those an expert
    classifies correctly). Raises ``ValueError`` naming the class when it has fewer than
    ``ipc`` allowed images.
    """
    y = np.asarray(y)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero((y == c) if candidates is None else (y == c) & candidates)
        if len(idx) < ipc:
            what = 'training images' if candidates is None else 'eligible training images'
            raise ValueError(f'Class {c} has only {len(idx)} {what}, fewer than --ipc={ipc}; '
                             'lower --ipc or raise --train_images_per_class.')
        pick = np.asarray(jax.random.choice(jax.random.fold_in(key, c), len(idx), (ipc,),
                                            replace=False))
        out.append(idx[np.sort(pick)])
    return np.concatenate(out)


def random_per_class(key, x, y, num_classes: int, ipc: int):
    """``ipc`` random images of each class: ``(images [num_classes * ipc, ...], labels)``,
    classes in order (:func:`random_per_class_indices`)."""
    idx = random_per_class_indices(key, y, num_classes, ipc)
    return take(x, idx), np.asarray(y)[idx].astype(np.int32)
