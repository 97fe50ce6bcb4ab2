"""Turning the archives a user downloads into prepared folders (:mod:`mct_jax.data.store`),
offline, once.

:func:`prepare` reads the official release of a dataset and writes its memory-mapped uint8
arrays to a folder that ``--data_source=prepared --data_dir=FOLDER`` then reads:

================ ==========================================================================
dataset          what ``source_path`` is
================ ==========================================================================
cifar10          ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``
cifar100         ``cifar-100-python.tar.gz`` or its extracted ``cifar-100-python/``
tiny_imagenet    ``tiny-imagenet-200.zip`` or its extracted ``tiny-imagenet-200/``
imagenette ...   an ImageNet folder in the ILSVRC layout (train/<wnid>/, val/<wnid>/)
imagenet64       the downsampled ImageNet's npz files (train_data_batch_*.npz, val_data.npz)
digits           nothing: scikit-learn ships it
================ ==========================================================================

The counts and shapes are checked (for CIFAR and Tiny ImageNet against the release's
image counts); the folder is written under a temporary name and renamed when complete, so
an interrupted run leaves nothing half-written; a folder already holding the same dataset
prepared from the same files is left as it is, so running again is safe. The command is
``python -m mct_jax.prepare`` (:mod:`mct_jax.prepare.__main__`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mct_jax.data import archives, catalog, imagenet, sources, store, tiny_imagenet
from mct_jax.data.catalog import DataError

# The official releases' (training, test) image counts, checked when ``counts='release'``.
RELEASE_COUNTS = dict(archives.COUNTS, tiny_imagenet=(100000, 10000))


def _file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (the archives are at most a few hundred MB)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            digest.update(block)
    return digest.hexdigest()


def _check_counts(name, x_train, x_test, counts):
    if counts is not None and (len(x_train), len(x_test)) != tuple(counts):
        raise DataError(f'the files hold {len(x_train)} training and {len(x_test)} test images '
                        f'of {name}; the release has {counts[0]} and {counts[1]}. Use the '
                        'complete download.')


def _write_arrays(folder, name, x_train, y_train, x_test, y_test, class_names, origin,
                  fingerprint, white=255.0):
    with store.Writer(folder, dataset=name, image_shape=x_train.shape[1:],
                      class_names=class_names, origin=origin, fingerprint=fingerprint,
                      white=white) as w:
        for split, x, y in (('train', x_train, y_train), ('test', x_test, y_test)):
            sources.check_split(f'{origin} ({split})', x, np.asarray(y), name,
                                num_classes=len(class_names))
            w.images(split, len(x))[:] = x
            w.labels(split, y)


def _tiny(folder, source: Path, counts, fingerprint: str) -> None:
    """Tiny ImageNet from its zip (extracted beside the output, then removed) or folder."""
    if source.is_file():
        scratch = Path(tempfile.mkdtemp(prefix='.tiny-imagenet-zip-', dir=Path(folder).parent))
        try:
            try:
                with zipfile.ZipFile(source) as z:
                    z.extractall(scratch)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f'{source} is not a readable zip archive ({e}); download it '
                                'again.') from e
            _tiny(folder, scratch, counts, fingerprint)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    release = tiny_imagenet.root(source)
    listing = tiny_imagenet.index(release)
    _check_counts('tiny_imagenet', listing[1], listing[2], counts)
    tiny_imagenet.write(folder, release, listing, fingerprint)


def fingerprint_of(name: str, source_path) -> str:
    """What identifies the files ``prepare`` would read (their bytes for an archive, their
    names and sizes for a folder)."""
    source = Path(source_path).expanduser() if source_path else None
    if name == 'digits':
        return 'sklearn digits'
    if source is None or not source.exists():
        raise DataError(f'--source_path={source_path} does not exist; pass the downloaded '
                        f'files of {name} (see python -m mct_jax.prepare --help).')
    if source.is_file():
        return _file_fingerprint(source)
    if name == 'tiny_imagenet':
        return tiny_imagenet.index(tiny_imagenet.root(source))[3]
    if name == 'imagenet64':
        return imagenet.downsampled_files(source)[2]
    if name in catalog.IMAGENET_SUBSETS:
        return imagenet.subset_index(name, source)[2]
    digest = hashlib.sha256(name.encode())
    for root, _, files in sorted(os.walk(source)):
        for f in sorted(files):
            digest.update(f'{f} {os.path.getsize(os.path.join(root, f))}\n'.encode())
    return digest.hexdigest()


def prepare(name: str, source_path, out_dir, counts='release', log=None) -> dict:
    """Writes dataset ``name`` from its official files at ``source_path`` into the prepared
    folder ``out_dir``; returns its ``dataset.json``.

    ``counts``: 'release' checks the (training, test) image counts of the official release
    where they are fixed (CIFAR, Tiny ImageNet); None checks only the files' consistency.
    A folder that already holds ``name`` prepared from the same files is kept as it is; any
    other existing folder is refused, so that nothing the user has is overwritten.
    """
    catalog.check_name_source(name, 'prepared')
    out = Path(out_dir).expanduser().absolute()
    log = log or (lambda *a: None)
    fingerprint = fingerprint_of(name, source_path)
    if out.exists():
        try:
            meta = store.read_meta(out)
        except DataError:
            raise DataError(f'{out} exists and is not a prepared dataset; choose a new '
                            '--data_dir (nothing was written).') from None
        if meta['dataset'] == name and meta.get('fingerprint') == fingerprint:
            log(f'{out} already holds {name} prepared from these files; nothing to do.')
            return meta
        raise DataError(f'{out} already holds {meta["dataset"]} prepared from other files; '
                        'choose a new --data_dir, or delete that folder first (nothing was '
                        'written).')
    counts = RELEASE_COUNTS.get(name) if counts == 'release' else counts
    source = Path(source_path).expanduser() if source_path else None
    if name in archives.CIFAR:
        x_train, y_train, x_test, y_test, names = archives.read_cifar(name, source, counts)
        _write_arrays(out, name, x_train, y_train, x_test, y_test, names, str(source),
                      fingerprint)
    elif name == 'digits':
        raw = sources.load_digits(name, None, None)
        _write_arrays(out, name, raw.x_train, raw.y_train, raw.x_test, raw.y_test,
                      raw.class_names, 'scikit-learn digits', fingerprint, white=raw.white)
    elif name == 'tiny_imagenet':
        _tiny(out, source, counts, fingerprint)
    elif name == 'imagenet64':
        imagenet.write_downsampled(out, source)
    else:
        imagenet.write_subset(out, name, source)
    meta = store.read_meta(out)
    log(f'Prepared {name} in {out}: ' + ', '.join(f'{n} {split} images'
                                                  for split, n in meta['splits'].items()))
    return meta
