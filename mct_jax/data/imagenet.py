"""ImageNet as the trajectory-matching papers use it: MTT's 10-class subsets at 128x128, and
ImageNet-1K downsampled to 64x64 (TESLA).

**Subsets** (``imagenette``, ``imagewoof``, ``imagefruit``, ``imagemeow``, ``imagesquawk``,
``imageyellow``; classes in :mod:`mct_jax.data.catalog`) read a folder in the ILSVRC
layout, ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``, the layout torchvision's
``ImageNet`` and ``ImageFolder`` read in the reference. Only the subset's ten class folders
are read, so the full ImageNet folder and the smaller downloads that hold just those
classes (fast.ai's Imagenette and Imagewoof) both work. Each image is resized to 128x128
as the reference does (:func:`mct_jax.data.decode.decode`); ``val`` is the test split.

**imagenet64** reads the downsampled ImageNet release (Chrabaszcz et al. 2017, "Imagenet64x64"
npz files): ``train_data_batch_1.npz`` ... ``train_data_batch_10.npz`` and ``val_data.npz``,
each with ``data`` uint8 [N, 3 * 64 * 64] (the red plane, then green, then blue) and
``labels`` 1..1000, in ``--data_dir`` or in its ``Imagenet64_train_npz/`` and
``Imagenet64_val_npz/`` folders. Its classes follow the release's numbering (the ILSVRC
devkit's); a ``map_clsloc.txt`` beside the files ("wnid number name" per line) names them.

Both are decoded once into the data cache (:mod:`mct_jax.data.store`) and memory-mapped
from there: the 1.28 million training images of imagenet64 are 15.7 GB as uint8, read by
the rows of each batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np

import mct_jax.data.catalog as catalog
import mct_jax.data.decode as decode
import mct_jax.data.store as store
from mct_jax.data.catalog import DataError
from mct_jax.data.sources import Raw, require_dir

IMAGE_SUFFIXES = ('.jpeg', '.jpg', '.png')
SUBSET_SIZE = 128
DOWNSAMPLED_SIZE = 64
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- subsets

def _class_files(folder: Path, wnid: str) -> list:
    return sorted(f for f in os.listdir(folder / wnid) if f.lower().endswith(IMAGE_SUFFIXES))


def check_subset_folder(name: str, data_dir) -> Path:
    """The ILSVRC folder ``data_dir`` if it has ``train/`` and ``val/`` with the class
    folders of subset ``name``; DataError naming what is missing otherwise."""
    folder = require_dir(data_dir, 'folder', 'an ImageNet folder in the ILSVRC layout '
                         '(train/<wnid>/*.JPEG and val/<wnid>/*.JPEG)')
    wnids = catalog.SPECS[name].wnids
    for split in ('train', 'val'):
        root = folder / split
        if not root.is_dir():
            raise DataError(f'{root} not found: data_dir must hold train/ and val/ with one '
                            'folder per WordNet id (the ILSVRC layout that torchvision reads).')
        missing = [w for w in wnids if not (root / w).is_dir()]
        if missing:
            flat = any(f.lower().endswith(IMAGE_SUFFIXES) for f in os.listdir(root))
            hint = (f' {root} holds images directly: sort them into one folder per class '
                    "(as torchvision's ImageNet does from the devkit's ground truth)."
                    if flat else '')
            raise DataError(f'{root} lacks the class folders of {name} '
                            f'({", ".join(missing)} of {", ".join(wnids)}).{hint}')
    return folder


def subset_index(name: str, data_dir):
    """``(train, test, fingerprint)``: [(path, class)] of the subset's images in the ILSVRC
    folder ``data_dir``."""
    folder = check_subset_folder(name, data_dir)
    wnids = catalog.SPECS[name].wnids
    fingerprint = hashlib.sha256(f'{name} {SUBSET_SIZE} v1\n'.encode())
    splits = []
    for split in ('train', 'val'):
        root = folder / split
        files = []
        for label, wnid in enumerate(wnids):
            names = _class_files(root, wnid)
            if not names:
                raise DataError(f'class folder {root / wnid} holds no images; restore it.')
            files.extend((root / wnid / f, label) for f in names)
            sizes = [os.path.getsize(root / wnid / f) for f in names]
            fingerprint.update(f'{split}/{wnid}\n'.encode())
            fingerprint.update(''.join(f'{f} {s}\n' for f, s in zip(names, sizes)).encode())
        splits.append(files)
    return splits[0], splits[1], fingerprint.hexdigest()


def write_subset(folder, name: str, data_dir, listing=None) -> None:
    """Decodes subset ``name`` of the ILSVRC folder ``data_dir`` into a prepared folder."""
    train, test, fingerprint = listing or subset_index(name, data_dir)
    with store.Writer(folder, dataset=name, image_shape=(SUBSET_SIZE, SUBSET_SIZE, 3),
                      class_names=catalog.default_class_names(name), origin=str(data_dir),
                      fingerprint=fingerprint) as w:
        for split, files in (('train', train), ('test', test)):
            out = w.images(split, len(files))
            decode.decode_into(out, [p for p, _ in files], SUBSET_SIZE,
                               what=f'{name} {split} images')
            w.labels(split, np.array([label for _, label in files]))


def load_subset(name, data_dir, cache_dir) -> Raw:
    """The ``folder`` source of an ImageNet subset, through the data cache."""
    listing = subset_index(name, data_dir)
    _, splits = store.cached(cache_dir, name, listing[2],
                             lambda f: write_subset(f, name, data_dir, listing),
                             f'{name} from {data_dir}')
    (x_train, y_train), (x_test, y_test) = splits['train'], splits['test']
    return Raw(x_train, y_train, x_test, y_test, catalog.default_class_names(name))


# ----------------------------------------------------------------- downsampled 64x64

def _find(folder: Path, pattern: str) -> list:
    """Files matching ``pattern`` in ``folder`` or one of its sub-folders."""
    regex = re.compile(pattern)
    found = [folder / f for f in os.listdir(folder) if regex.fullmatch(f)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        found += [sub / f for f in os.listdir(sub) if regex.fullmatch(f)]
    return found


def downsampled_files(data_dir):
    """``(train batch files in order, the val file, fingerprint)`` of the release."""
    folder = require_dir(data_dir, 'folder', 'the downsampled ImageNet npz files '
                         '(train_data_batch_1.npz ... and val_data.npz)')
    batches = _find(folder, r'train_data_batch_(\d+)\.npz')
    numbers = sorted(int(re.search(r'(\d+)\.npz$', p.name).group(1)) for p in batches)
    if not batches or numbers != list(range(1, len(numbers) + 1)):
        raise DataError(f'{folder} should hold train_data_batch_1.npz ... '
                        'train_data_batch_10.npz (the Imagenet64x64 release, npz format); found '
                        f'{", ".join(p.name for p in batches) or "none"}.')
    batches.sort(key=lambda p: int(re.search(r'(\d+)\.npz$', p.name).group(1)))
    val = _find(folder, r'val_data\.npz')
    if len(val) != 1:
        raise DataError(f'{folder} should hold one val_data.npz (the validation split of the '
                        f'release, used as the test split); found {len(val)}.')
    fingerprint = hashlib.sha256(b'imagenet64 v1\n')
    for p in batches + val:
        fingerprint.update(f'{p.name} {os.path.getsize(p)}\n'.encode())
    return batches, val[0], fingerprint.hexdigest()


def _read_batch(path: Path):
    """(uint8 [N, 64, 64, 3] images, int labels 0..999) of one release file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            flat, labels = z['data'], np.asarray(z['labels']).astype(np.int64) - 1
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f'cannot read {path} ({type(e).__name__}: {e}); it should be an npz '
                        'file of the Imagenet64x64 release with data and labels: download it '
                        'again.') from e
    size = DOWNSAMPLED_SIZE
    if flat.dtype != np.uint8 or flat.ndim != 2 or flat.shape[1] != 3 * size * size:
        raise DataError(f'{path}: data is {flat.dtype} {flat.shape}, expected uint8 '
                        f'[N, {3 * size * size}] (64x64 RGB planes); is it the 64x64 release?')
    if labels.shape != (len(flat),) or labels.min() < 0 or labels.max() >= 1000:
        raise DataError(f'{path}: labels must be {len(flat)} numbers in 1..1000.')
    return flat.reshape(-1, 3, size, size).transpose(0, 2, 3, 1), labels


def _class_names(folder: Path) -> tuple:
    """Names from ``map_clsloc.txt`` ("wnid number name" lines) if present, else indices."""
    found = _find(folder, r'map_clsloc\.txt')
    names = [str(c) for c in range(1000)]
    if found:
        for line in found[0].read_text(errors='replace').splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit() and 1 <= int(parts[1]) <= 1000:
                names[int(parts[1]) - 1] = parts[2].replace('_', ' ')
    return tuple(names)


def write_downsampled(folder, data_dir, files=None) -> None:
    """Converts the release's npz batches into a prepared folder, one batch at a time."""
    batches, val, fingerprint = files or downsampled_files(data_dir)
    size = DOWNSAMPLED_SIZE
    counts = []
    for p in batches:   # the counts, from the labels alone (an npz reads arrays by key)
        try:
            with np.load(p, allow_pickle=False) as z:
                counts.append(len(z['labels']))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f'cannot read {p} ({type(e).__name__}: {e}); download it '
                            'again.') from e
    with store.Writer(folder, dataset='imagenet64', image_shape=(size, size, 3),
                      class_names=_class_names(Path(data_dir).expanduser()),
                      origin=str(data_dir), fingerprint=fingerprint) as w:
        out = w.images('train', sum(counts))
        labels, start = [], 0
        for k, p in enumerate(batches, 1):
            images, y = _read_batch(p)
            if len(images) != counts[k - 1]:
                raise DataError(f'{p}: data and labels differ in length.')
            out[start:start + len(images)] = images
            labels.append(y)
            start += len(images)
            logger.info('Converted %s (%d of %d files, %d images)', p.name, k, len(batches),
                        start)
        w.labels('train', np.concatenate(labels))
        images, y = _read_batch(val)
        w.images('test', len(images))[:] = images
        w.labels('test', y)


def load_downsampled(name, data_dir, cache_dir) -> Raw:
    """The ``folder`` source of ``imagenet64``: the release's npz batches, through the data
    cache."""
    files = downsampled_files(data_dir)
    meta, splits = store.cached(cache_dir, name, files[2],
                                lambda f: write_downsampled(f, data_dir, files),
                                f'the downsampled ImageNet files in {data_dir}')
    (x_train, y_train), (x_test, y_test) = splits['train'], splits['test']
    return Raw(x_train, y_train, x_test, y_test, tuple(meta['class_names']))
