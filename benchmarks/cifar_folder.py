"""Writes CIFAR-10 in torchvision's layout from the project's CIFAR-10 archives.

    python benchmarks/cifar_folder.py --cifar10_dir=DIR --out=OUT [--train_images_per_class=K]

DIR holds ``train.npz`` and ``test.npz`` (``x`` uint8 [N, 32, 32, 3] RGB, ``y`` class ids,
``class_names``), the project's offline copy of CIFAR-10. OUT receives
``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` as the official Python
release lays them out: each batch a pickled dict with ``data`` (uint8 [n, 3072], each row the
red, then green, then blue 32 x 32 plane), ``labels`` (a list of ints) and ``batch_label``;
``batches.meta`` with ``label_names``, ``num_cases_per_batch`` and ``num_vis``. The dict keys
and names are pickled as Python 2 strings, as in the official files, so that
``pickle.load(f, encoding='bytes')`` gives ``b'data'`` and torchvision's
``encoding='latin1'`` gives ``'data'``. The arrays are pickled as plain ``numpy.ndarray``
calls, which NumPy 1 and 2 both load. There are no ``filenames``.

``--train_images_per_class=K`` keeps only the first K training images of each class, in the
training set's order (the images mct_jax keeps with the same flag), split into five
consecutive batch files. The test batch is all of ``test.npz`` (or ``--test_file``).

The files are not byte-identical to the official release, so their md5 sums differ from the
ones torchvision checks: ``benchmarks/ddranking_side.py`` makes torchvision check only that
they exist. Needs only NumPy; runs with the project's python or the DD-Ranking venv's.
"""

import argparse
import os
import pickle

import numpy as np

BATCHES = 5


class _Py2Str(bytes):
    """Bytes pickled as a Python 2 ``str`` (what the official CIFAR pickles hold)."""


class _Pickler(pickle._Pickler):   # the pure-Python pickler: its dispatch table can grow
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj):
        n = len(obj)
        head = (pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                else pickle.BINSTRING + n.to_bytes(4, 'little'))
        self.write(head + bytes(obj))

    dispatch[_Py2Str] = _save_py2str

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            return np.ndarray, (obj.shape, obj.dtype.str, obj.tobytes())
        return NotImplemented


def _dump(obj, path):
    with open(path, 'wb') as f:
        _Pickler(f, protocol=4).dump(obj)


def first_k_indices(y, k, num_classes):
    """Increasing indices of the first k images of each class."""
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() < k:
        raise SystemExit(f'class {int(np.argmin(counts))} has only {counts.min()} training '
                         f'images, fewer than --train_images_per_class={k}.')
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in range(num_classes)]))


def _batch(x, y, label):
    rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1), dtype=np.uint8)
    return {_Py2Str(b'batch_label'): _Py2Str(label.encode()),
            _Py2Str(b'labels'): [int(v) for v in y],
            _Py2Str(b'data'): rows}


def write(cifar10_dir, out, train_images_per_class=None, test_file='test.npz'):
    """Writes ``out/cifar-10-batches-py``; returns {file name: number of images}."""
    train = np.load(os.path.join(cifar10_dir, 'train.npz'))
    test = np.load(os.path.join(cifar10_dir, test_file))
    names = [str(n) for n in train['class_names']]
    x, y = train['x'], np.asarray(train['y'], np.int64)
    if x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
        raise SystemExit(f'train.npz x is {x.dtype} {x.shape}, not uint8 [N, 32, 32, 3].')
    if train_images_per_class:
        keep = first_k_indices(y, train_images_per_class, len(names))
        x, y = x[keep], y[keep]
    folder = os.path.join(out, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    written = {}
    for i, part in enumerate(np.array_split(np.arange(len(y)), BATCHES), 1):
        _dump(_batch(x[part], y[part], f'training batch {i} of {BATCHES}'),
              os.path.join(folder, f'data_batch_{i}'))
        written[f'data_batch_{i}'] = len(part)
    _dump(_batch(test['x'], np.asarray(test['y'], np.int64), 'testing batch 1 of 1'),
          os.path.join(folder, 'test_batch'))
    written['test_batch'] = len(test['y'])
    _dump({_Py2Str(b'num_cases_per_batch'): -(-len(y) // BATCHES),
           _Py2Str(b'label_names'): [_Py2Str(n.encode()) for n in names],
           _Py2Str(b'num_vis'): 3072}, os.path.join(folder, 'batches.meta'))
    return written


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cifar10_dir', required=True, help='folder with train.npz and test.npz')
    p.add_argument('--out', required=True, help='folder to write cifar-10-batches-py into')
    p.add_argument('--train_images_per_class', type=int, default=None,
                   help='keep only the first K training images of each class')
    p.add_argument('--test_file', default='test.npz', help='test archive in --cifar10_dir')
    a = p.parse_args()
    if a.train_images_per_class is not None and a.train_images_per_class < 1:
        p.error('--train_images_per_class must be >= 1')
    written = write(a.cifar10_dir, a.out, a.train_images_per_class, a.test_file)
    print(f"wrote {os.path.join(a.out, 'cifar-10-batches-py')}: "
          + ', '.join(f'{k} ({v})' for k, v in written.items()))


if __name__ == '__main__':
    main()
