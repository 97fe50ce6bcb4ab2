"""Tiny ImageNet from its release folder (``tiny-imagenet-200/``), ``val`` as the test split.

The release: ``wnids.txt`` (200 WordNet ids), ``words.txt`` (their names),
``train/<wnid>/images/*.JPEG`` (500 per class) and ``val/images/*.JPEG`` with
``val/val_annotations.txt`` naming each image's class. Classes are the sorted wnids, as
torchvision's ``ImageFolder`` orders them in the reference. Decoding 110,000 JPEGs takes
minutes, so the first read writes them into the data cache (:mod:`mct_jax.data.store`),
keyed by a fingerprint of the file lists; later reads map the cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

import mct_jax.data.decode as decode
import mct_jax.data.store as store
from mct_jax.data.catalog import DataError
from mct_jax.data.sources import Raw, require_dir

RELEASE_DIR = 'tiny-imagenet-200'
SIZE = 64


def root(data_dir) -> Path:
    """The ``tiny-imagenet-200`` folder: ``data_dir`` itself or its child of that name."""
    folder = require_dir(data_dir, 'folder', f'the {RELEASE_DIR}/ release folder')
    for candidate in (folder, folder / RELEASE_DIR):
        if (candidate / 'wnids.txt').is_file():
            return candidate
    raise DataError(f'wnids.txt not found in {folder} nor in {folder / RELEASE_DIR}: '
                    f'data_dir must be the {RELEASE_DIR}/ folder of the Tiny ImageNet '
                    'release (or the folder that contains it).')


def index(release: Path):
    """Lists the release: sorted wnids, [(path, label)] for train and val, a fingerprint."""
    raw = [line.strip() for line in (release / 'wnids.txt').read_text().splitlines()]
    raw = [w for w in raw if w]
    if not raw:
        raise DataError(f'{release / "wnids.txt"} lists no classes; it should hold one wnid '
                        'per line.')
    if len(set(raw)) != len(raw):
        raise DataError(f'{release / "wnids.txt"} lists a wnid more than once; restore the '
                        'original file.')
    wnids = sorted(raw)
    label_of = {w: i for i, w in enumerate(wnids)}
    fingerprint = hashlib.sha256(b'tiny_imagenet v1\n')
    train_dir = release / 'train'
    if not train_dir.is_dir():
        raise DataError(f'training folder {train_dir} not found; data_dir must be the complete '
                        f'{RELEASE_DIR}/ release.')
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
    annotations = release / 'val' / 'val_annotations.txt'
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
        val.append((release / 'val' / 'images' / filename, label_of[wnid]))
    if not val:
        raise DataError(f'{annotations} lists no images; restore the original file.')
    return wnids, train, val, fingerprint.hexdigest()


def class_names(release: Path, wnids) -> tuple:
    """First name of each wnid in words.txt (if present), else the wnid itself."""
    words = {}
    path = release / 'words.txt'
    if path.is_file():
        wanted = set(wnids)
        for line in path.read_text(errors='replace').splitlines():
            wnid, _, names = line.partition('\t')
            if wnid in wanted and names.strip():
                words[wnid] = names.split(',')[0].strip()
    return tuple(words.get(w, w) for w in wnids)


def write(folder, release: Path, listing, fingerprint: str | None = None) -> None:
    """Decodes the release listed by :func:`index` into a prepared folder (recording
    ``fingerprint``, by default the listing's)."""
    wnids, train, val, listed = listing
    fingerprint = fingerprint or listed
    size = decode.decode(train[0][0]).shape[0]   # 64 in the release
    with store.Writer(folder, dataset='tiny_imagenet', image_shape=(size, size, 3),
                      class_names=class_names(release, wnids), origin=str(release),
                      fingerprint=fingerprint) as w:
        for split, files in (('train', train), ('test', val)):
            out = w.images(split, len(files))
            decode.decode_into(out, [p for p, _ in files], what=f'Tiny ImageNet {split} images')
            w.labels(split, np.array([label for _, label in files]))


def load(name, data_dir, cache_dir) -> Raw:
    """The ``folder`` source of ``tiny_imagenet``: the release, through the data cache."""
    del name
    release = root(data_dir)
    listing = index(release)
    meta, splits = store.cached(cache_dir, 'tiny_imagenet', listing[3],
                                lambda f: write(f, release, listing),
                                f'the Tiny ImageNet release {release}')
    (x_train, y_train), (x_test, y_test) = splits['train'], splits['test']
    return Raw(x_train, y_train, x_test, y_test, tuple(meta['class_names']))
