"""The prepared-data format: one folder per dataset of memory-mapped uint8 arrays.

::

    FOLDER/
      dataset.json         what the folder holds: dataset, image shape, class names, split
                           sizes, the raw value of white (255; 16 for digits), the files it
                           came from (written last: its presence means complete)
      train_images.npy     uint8 [N, H, W, C]
      train_labels.npy     int32 [N]
      test_images.npy      uint8 [M, H, W, C]
      test_labels.npy      int32 [M]

``python -m mct_jax.prepare`` writes it from the official archives; the ``folder`` source
writes one into the data cache the first time it decodes a release. Reading maps the image
files into memory without loading them, so a split larger than memory trains by reading
the rows of each batch. A folder is written under a temporary name beside its final one and
renamed into place when complete, so an interrupted write never leaves a half-written
folder where a reader would take it for a dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mct_jax.data.catalog import DataError

FORMAT = 'mct_jax-arrays'
VERSION = 1
META = 'dataset.json'
SPLITS = ('train', 'test')

logger = logging.getLogger(__name__)


def is_complete(folder) -> bool:
    """Whether ``folder`` holds a finished prepared dataset (its ``dataset.json``)."""
    return (Path(folder) / META).is_file()


def source_of(folder) -> str:
    """The data source that reads ``folder``: ``'prepared'`` for a prepared dataset,
    ``'npz'`` for one holding ``train.npz`` and ``test.npz``; DataError otherwise."""
    folder = Path(folder).expanduser()
    if is_complete(folder):
        return 'prepared'
    if (folder / 'train.npz').is_file():
        return 'npz'
    raise DataError(f'{folder} holds neither a prepared dataset ({META}) nor train.npz; '
                    'write one with `python -m mct_jax.prepare --dataset=NAME '
                    f'--source_path=ARCHIVE --data_dir={folder}`.')


def read_meta(folder) -> dict:
    """``dataset.json`` of a prepared folder; DataError naming the fix if it is not one."""
    path = Path(folder).expanduser() / META
    if not path.is_file() and (path.parent / 'train.npz').is_file():
        raise DataError(f'{path.parent} holds train.npz, not a prepared dataset: read it with '
                        '--data_source=npz.')
    if not path.is_file():
        raise DataError(f'{path.parent} is not a prepared dataset (no {META}); write one with '
                        '`python -m mct_jax.prepare --dataset=NAME --source_path=ARCHIVE '
                        f'--data_dir={path.parent}`.')
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f'{path} is unreadable ({e}); prepare the dataset again.') from e
    if meta.get('format') != FORMAT or meta.get('version') != VERSION:
        raise DataError(f'{path} is not a version-{VERSION} {FORMAT} folder (it says '
                        f'{meta.get("format")!r} version {meta.get("version")!r}); prepare the '
                        'dataset again with this version of mct_jax.')
    return meta


def read(folder) -> tuple[dict, dict]:
    """``(meta, {split: (images, labels)})``: images memory-mapped uint8 [N, H, W, C],
    labels int32 [N] in memory. Every shape is checked against ``dataset.json``."""
    folder = Path(folder).expanduser()
    meta = read_meta(folder)
    splits = {}
    for split, count in meta['splits'].items():
        try:
            images = np.load(folder / f'{split}_images.npy', mmap_mode='r')
            labels = np.load(folder / f'{split}_labels.npy')
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f'{folder}: the {split} arrays are missing or damaged ({e}); '
                            'prepare the dataset again (delete the folder first).') from e
        want = (count,) + tuple(meta['image_shape'])
        if images.shape != want or images.dtype != np.uint8 or labels.shape != (count,):
            raise DataError(f'{folder}: {split}_images.npy is {images.dtype} {images.shape} and '
                            f'{split}_labels.npy {labels.shape}, but {META} promises uint8 {want}; '
                            'prepare the dataset again (delete the folder first).')
        splits[split] = (images, labels.astype(np.int32, copy=False))
    return meta, splits


class Writer:
    """Writes a prepared folder atomically::

        with store.Writer(folder, dataset='cifar10', image_shape=(32, 32, 3),
                          class_names=names, origin='cifar-10-python.tar.gz') as w:
            images = w.images('train', 50000)      # a writable uint8 memory map to fill
            images[:] = ...
            w.labels('train', labels)

    The arrays are written into a temporary folder beside ``folder``; leaving the block
    without an exception writes ``dataset.json`` and renames the folder into place
    (replacing an older one). An exception removes the temporary folder and leaves
    ``folder`` as it was.
    """

    def __init__(self, folder, *, dataset: str, image_shape, class_names, origin: str,
                 fingerprint: str = '', white: float = 255.0):
        self.folder = Path(folder).expanduser().absolute()
        self.meta = {'format': FORMAT, 'version': VERSION, 'dataset': dataset,
                     'image_shape': [int(v) for v in image_shape],
                     'class_names': [str(c) for c in class_names], 'splits': {},
                     'white': float(white), 'origin': origin, 'fingerprint': fingerprint}
        self.tmp: Path | None = None
        self._arrays: dict = {}

    def __enter__(self):
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f'.{self.folder.name}.partial-',
                                         dir=self.folder.parent))
        return self

    def images(self, split: str, count: int) -> np.memmap:
        """A writable uint8 [count, H, W, C] memory map for ``split``'s images."""
        shape = (int(count),) + tuple(self.meta['image_shape'])
        array = np.lib.format.open_memmap(self.tmp / f'{split}_images.npy', mode='w+',
                                          dtype=np.uint8, shape=shape)
        self._arrays[split] = array
        self.meta['splits'][split] = int(count)
        return array

    def labels(self, split: str, labels) -> None:
        """``split``'s labels, integers in [0, number of classes)."""
        labels = np.asarray(labels)
        if labels.shape != (self.meta['splits'].get(split, -1),):
            raise DataError(f'{len(labels)} {split} labels for '
                            f'{self.meta["splits"].get(split)} images.')
        num_classes = len(self.meta['class_names'])
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f'{split} labels lie in [{labels.min()}, {labels.max()}], outside '
                            f'[0, {num_classes}).')
        np.save(self.tmp / f'{split}_labels.npy', labels.astype(np.int32))

    def __exit__(self, kind, value, tb):
        try:
            if kind is not None:
                return False
            for array in self._arrays.values():
                array.flush()
            self._arrays.clear()
            missing = [s for s in self.meta['splits']
                       if not (self.tmp / f'{s}_labels.npy').is_file()]
            if missing:
                raise DataError(f'no labels were written for {", ".join(missing)}.')
            (self.tmp / META).write_text(json.dumps(self.meta, indent=1) + '\n')
            # mkdtemp makes the folder owner-only; give it the permissions of any new folder.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)
            old = None
            if self.folder.exists():
                old = self.folder.with_name(f'.{self.folder.name}.old-{os.getpid()}')
                os.rename(self.folder, old)
            os.rename(self.tmp, self.folder)
            self.tmp = None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            self._arrays.clear()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def cache_folder(cache_dir, dataset: str, fingerprint: str) -> Path:
    """Where the data cache keeps ``dataset`` decoded from files with ``fingerprint``."""
    return Path(cache_dir).expanduser() / f'{dataset}-{fingerprint[:16]}'


def cached(cache_dir, dataset: str, fingerprint: str, build, what: str) -> tuple[dict, dict]:
    """:func:`read` of the cache folder of ``dataset`` decoded from files with
    ``fingerprint``, built first with ``build(folder)`` (which uses a :class:`Writer`) when
    it is missing, stale or damaged; ``what`` names the files in the log."""
    folder = cache_folder(cache_dir, dataset, fingerprint)
    if is_complete(folder):
        try:
            meta, splits = read(folder)
            if meta.get('fingerprint') == fingerprint:
                return meta, splits
        except DataError as e:
            logger.warning('The data cache %s is damaged (%s).', folder, e)
        logger.info('Rebuilding the data cache %s.', folder)
    logger.info('Decoding %s into the data cache %s (once; later runs read the cache).',
                what, folder)
    try:
        build(folder)
    except OSError as e:
        raise DataError(f'could not write the data cache {folder} ({e}); choose a writable '
                        'folder with --data_cache (or prepare the data with '
                        '`python -m mct_jax.prepare` and use --data_source=prepared).') from e
    return read(folder)
