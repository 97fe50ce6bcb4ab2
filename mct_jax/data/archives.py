"""The official CIFAR archives, read without unpickling anything but arrays.

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/`` with ``data_batch_1`` ...
``data_batch_5``, ``test_batch`` and ``batches.meta``; ``cifar-100-python.tar.gz`` holds
``cifar-100-python/`` with ``train``, ``test`` and ``meta``. Each batch is a pickled dict with
``data`` (uint8 [N, 3072]: the red plane, then green, then blue, 32 rows of 32) and
``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). Either the tarball or the extracted
folder (or the folder that contains it) is read. The unpickler accepts the dict, lists,
strings and NumPy arrays these files contain and refuses anything else, so a damaged or
foreign file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from mct_jax.data.catalog import DataError

CIFAR = {
    # name: (folder in the archive, training members, test member, meta member, label key,
    #        names key in the meta)
    'cifar10': ('cifar-10-batches-py', tuple(f'data_batch_{i}' for i in range(1, 6)),
                'test_batch', 'batches.meta', b'labels', b'label_names'),
    'cifar100': ('cifar-100-python', ('train',), 'test', 'meta', b'fine_labels',
                 b'fine_label_names'),
}
COUNTS = {'cifar10': (50000, 10000), 'cifar100': (50000, 10000)}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays and plain containers; refuses every other class."""
    _ALLOWED = {('numpy', 'ndarray'), ('numpy', 'dtype'),
                ('numpy.core.multiarray', '_reconstruct'),
                ('numpy._core.multiarray', '_reconstruct'),
                ('_codecs', 'encode')}   # how Python 3's protocol 2 stores an array's bytes

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR batch')


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        out = _ArraysOnly(io.BytesIO(blob), encoding='bytes').load()
    except Exception as e:   # noqa: BLE001 -- any unreadable member ends the same way
        raise DataError(f'{where} is not a readable CIFAR batch ({type(e).__name__}: {e}); '
                        'download the archive again.') from e
    if not isinstance(out, dict):
        raise DataError(f'{where} holds a {type(out).__name__}, not a CIFAR batch; download '
                        'the archive again.')
    return out


class _Members:
    """The members of the CIFAR folder inside a tarball, or inside a folder on disk."""

    def __init__(self, name: str, path):
        self.folder_name = CIFAR[name][0]
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise DataError(f'{self.path} does not exist; pass the downloaded '
                            f'{self.folder_name.split("-batches")[0]} archive (.tar.gz) or its '
                            'extracted folder with --source_path.')
        self.tar = None
        if self.path.is_file():
            try:
                self.tar = tarfile.open(self.path)
            except (tarfile.TarError, OSError) as e:
                raise DataError(f'{self.path} is not a readable tar archive ({e}); download '
                                'it again.') from e
        else:
            for root in (self.path, self.path / self.folder_name):
                if (root / CIFAR[name][2]).is_file():
                    self.root = root
                    break
            else:
                raise DataError(f'{self.path} holds neither {CIFAR[name][2]} nor '
                                f'{self.folder_name}/; pass the extracted {self.folder_name} '
                                'folder or the .tar.gz archive.')

    def read(self, member: str) -> dict:
        if self.tar is None:
            path = self.root / member
            if not path.is_file():
                raise DataError(f'{path} is missing; the {self.folder_name} folder is '
                                'incomplete: extract the archive again.')
            return _unpickle(path.read_bytes(), str(path))
        try:
            f = self.tar.extractfile(f'{self.folder_name}/{member}')
        except KeyError:
            f = None
        if f is None:
            raise DataError(f'{self.path} has no {self.folder_name}/{member}; is it the '
                            'official python-version archive?')
        return _unpickle(f.read(), f'{self.path}:{member}')

    def close(self):
        if self.tar is not None:
            self.tar.close()


def _images(batch: dict, where: str) -> np.ndarray:
    flat = np.asarray(batch.get(b'data'))
    if flat.dtype != np.uint8 or flat.ndim != 2 or flat.shape[1] != 3072:
        raise DataError(f'{where}: data is {flat.dtype} {flat.shape}, expected uint8 '
                        '[N, 3072]; download the archive again.')
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar(name: str, path, counts=None) -> tuple:
    """``(x_train, y_train, x_test, y_test, class_names)`` of CIFAR-10 or CIFAR-100 from the
    official archive or folder at ``path``: uint8 NHWC images, int32 labels. ``counts``:
    the (training, test) image counts to insist on, e.g. :data:`COUNTS` of the release;
    None checks only that the archive is consistent."""
    _, train_members, test_member, meta_member, label_key, names_key = CIFAR[name]
    members = _Members(name, path)
    try:
        splits = []
        for group in (train_members, (test_member,)):
            xs, ys = [], []
            for member in group:
                batch = members.read(member)
                xs.append(_images(batch, member))
                labels = np.asarray(batch.get(label_key, []), np.int64)
                if labels.shape != (len(xs[-1]),):
                    raise DataError(f'{member}: {len(labels)} labels for {len(xs[-1])} '
                                    'images; download the archive again.')
                ys.append(labels)
            splits.append((np.concatenate(xs), np.concatenate(ys).astype(np.int32)))
        meta = members.read(meta_member)
        names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                      for n in meta.get(names_key, []))
    finally:
        members.close()
    (x_train, y_train), (x_test, y_test) = splits
    if counts is not None and (len(x_train), len(x_test)) != tuple(counts):
        raise DataError(f'{path} holds {len(x_train)} training and {len(x_test)} test images; '
                        f'the {name} release has {counts[0]} and {counts[1]}. Download the '
                        'archive again.')
    return x_train, y_train, x_test, y_test, names
