"""python -m mct_jax.prepare: small archives in the official formats (CIFAR's pickled
batches in a tarball, Tiny ImageNet's zip) become prepared folders that the data layer
reads; reruns are safe, bad archives are refused with the fix, nothing half-written
remains."""

import io
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_command
from mct_jax import data, prepare
from mct_jax.data import DataError, store


def _batch(rng, n, classes, label_key):
    data_ = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return {b'batch_label': b'test batch', label_key: [int(c) for c in rng.integers(0, classes, n)],
            b'data': data_, b'filenames': [b'x.png'] * n}


def _cifar_tarball(path, name='cifar10', per_batch=6, test=4, seed=0):
    """A cifar-10/100-python.tar.gz of the official layout, small; returns the batches."""
    rng = np.random.default_rng(seed)
    if name == 'cifar10':
        folder, key, classes = 'cifar-10-batches-py', b'labels', 10
        members = {f'data_batch_{i}': _batch(rng, per_batch, classes, key) for i in range(1, 6)}
        members['test_batch'] = _batch(rng, test, classes, key)
        members['batches.meta'] = {b'label_names': [f'c{i}'.encode() for i in range(10)],
                                   b'num_vis': 3072}
    else:
        folder, key, classes = 'cifar-100-python', b'fine_labels', 100
        members = {'train': _batch(rng, 5 * per_batch, classes, key),
                   'test': _batch(rng, test, classes, key),
                   'meta': {b'fine_label_names': [f'f{i}'.encode() for i in range(100)]}}
    with tarfile.open(path, 'w:gz') as tar:
        for member, content in members.items():
            blob = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f'{folder}/{member}')
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return members, key


def _nhwc(flat):
    """Independent unpacking: pixel (i, j) of channel c is flat[c * 1024 + i * 32 + j]."""
    out = np.zeros((len(flat), 32, 32, 3), np.uint8)
    for c in range(3):
        for i in range(32):
            out[:, i, :, c] = flat[:, c * 1024 + i * 32:c * 1024 + i * 32 + 32]
    return out


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_tarball_and_folder(tmp_path, name):
    members, key = _cifar_tarball(tmp_path / 'archive.tar.gz', name)
    out = tmp_path / 'prepared'
    meta = prepare.prepare(name, tmp_path / 'archive.tar.gz', out, counts=None)
    assert meta['splits'] == {'train': 30, 'test': 4} and meta['dataset'] == name
    train = [members[m] for m in (['train'] if name == 'cifar100' else
                                  [f'data_batch_{i}' for i in range(1, 6)])]
    test = members['test' if name == 'cifar100' else 'test_batch']
    ds = data.load_dataset(name, 'prepared', out)
    np.testing.assert_array_equal(ds.x_train, _nhwc(np.concatenate([b[b'data'] for b in train])))
    np.testing.assert_array_equal(ds.y_train, np.concatenate([b[key] for b in train]))
    np.testing.assert_array_equal(ds.x_test, _nhwc(test[b'data']))
    assert ds.class_names[1] == ('c1' if name == 'cifar10' else 'f1')
    assert isinstance(ds.x_test, np.memmap)

    # The extracted folder gives the same arrays.
    with tarfile.open(tmp_path / 'archive.tar.gz') as tar:
        tar.extractall(tmp_path / 'extracted', filter='data')
    again = data.load_dataset(name, 'prepared', prepare.prepare(
        name, tmp_path / 'extracted', tmp_path / 'from_folder', counts=None) and
        tmp_path / 'from_folder')
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_rerun_is_a_no_op_and_other_folders_are_refused(tmp_path):
    _cifar_tarball(tmp_path / 'a.tar.gz')
    out = tmp_path / 'prepared'
    prepare.prepare('cifar10', tmp_path / 'a.tar.gz', out, counts=None)
    stamp = os.stat(out / 'train_images.npy').st_mtime_ns
    prepare.prepare('cifar10', tmp_path / 'a.tar.gz', out, counts=None)
    assert os.stat(out / 'train_images.npy').st_mtime_ns == stamp     # nothing rewritten
    _cifar_tarball(tmp_path / 'b.tar.gz', seed=1)
    with pytest.raises(DataError, match='prepared from other files'):
        prepare.prepare('cifar10', tmp_path / 'b.tar.gz', out, counts=None)
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.txt').write_text('keep me')
    with pytest.raises(DataError, match='not a prepared dataset'):
        prepare.prepare('cifar10', tmp_path / 'a.tar.gz', mine, counts=None)
    assert (mine / 'notes.txt').read_text() == 'keep me'


def test_a_pickle_that_is_not_plain_data_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo owned',))
    with tarfile.open(tmp_path / 'evil.tar.gz', 'w:gz') as tar:
        blob = pickle.dumps({b'data': Evil()})
        info = tarfile.TarInfo('cifar-10-batches-py/data_batch_1')
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match=r'posix\.system is not allowed|not allowed'):
        prepare.prepare('cifar10', tmp_path / 'evil.tar.gz', tmp_path / 'out', counts=None)
    assert not (tmp_path / 'out').exists()


def test_command_checks_the_release_counts_and_writes_nothing(tmp_path):
    _cifar_tarball(tmp_path / 'small.tar.gz')
    proc = run_command('prepare', '--dataset=cifar10',
                       f'--source_path={tmp_path / "small.tar.gz"}',
                       f'--data_dir={tmp_path / "out"}', devices=1, check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'holds 30 training and 4 test images; the cifar10 release has 50000 and 10000' \
        in proc.stderr and 'Traceback' not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ['small.tar.gz']


def test_tiny_imagenet_zip(tmp_path):
    wnids = ('n02000002', 'n01000001')
    files = {'tiny-imagenet-200/wnids.txt': '\n'.join(wnids) + '\n',
             'tiny-imagenet-200/words.txt': 'n01000001\tgoldfish, carp\n'}
    images = {}
    for label, wnid in enumerate(sorted(wnids)):
        for k in range(2):
            images[f'tiny-imagenet-200/train/{wnid}/images/{wnid}_{k}.JPEG'] = (30 * label, 90, 9)
    images['tiny-imagenet-200/val/images/val_0.JPEG'] = (0, 200, 0)
    files['tiny-imagenet-200/val/val_annotations.txt'] = f'val_0.JPEG\t{wnids[1]}\t0\t0\t8\t8\n'
    with zipfile.ZipFile(tmp_path / 'tiny-imagenet-200.zip', 'w') as z:
        for name, text in files.items():
            z.writestr(name, text)
        for name, colour in images.items():
            buffer = io.BytesIO()
            Image.new('RGB', (8, 8), colour).save(buffer, 'JPEG', quality=98)
            z.writestr(name, buffer.getvalue())
    out = tmp_path / 'tiny'
    meta = prepare.prepare('tiny_imagenet', tmp_path / 'tiny-imagenet-200.zip', out, counts=None)
    assert meta['splits'] == {'train': 4, 'test': 1}
    ds = data.load_dataset('tiny_imagenet', 'prepared', out)
    assert ds.class_names == ('goldfish', 'n02000002') and list(ds.y_test) == [0]
    np.testing.assert_allclose(ds.x_test[0].astype(int), np.full((8, 8, 3), (0, 200, 0)), atol=4)
    assert sorted(os.listdir(tmp_path)) == ['tiny', 'tiny-imagenet-200.zip']   # scratch gone
    with pytest.raises(DataError, match='release has 100000 and 10000'):
        prepare.prepare('tiny_imagenet', tmp_path / 'tiny-imagenet-200.zip', tmp_path / 'x')


def test_digits_prepared_keep_their_scale(tmp_path):
    prepare.prepare('digits', None, tmp_path / 'digits')
    assert store.read_meta(tmp_path / 'digits')['white'] == 16
    a = data.load_dataset('digits', 'prepared', tmp_path / 'digits', val_images_per_class=5)
    b = data.load_dataset('digits', val_images_per_class=5)
    np.testing.assert_array_equal(a.prepare(a.x_train), b.prepare(b.x_train))
    np.testing.assert_array_equal(a.mean, b.mean)


@pytest.mark.slow
def test_from_the_official_tarball_to_the_cifar10_local_preset(tmp_path):
    """The README's path for a user who has only cifar-10-python.tar.gz: prepare it into
    data/cifar10, then cifar10_local.cfg's expert and distill commands find it there (at a
    tiny size; the release-count check is the command's, tested above)."""
    _cifar_tarball(tmp_path / 'cifar-10-python.tar.gz', per_batch=60)
    prepare.prepare('cifar10', tmp_path / 'cifar-10-python.tar.gz',
                    tmp_path / 'data' / 'cifar10', counts=None)
    preset = os.path.join(REPO, 'experiments', 'cifar10_local.cfg')
    tiny = ['--train_images_per_class=8', '--val_images_per_class=2', '--width=8',
            '--progress=none', '--pictures=false', '--tensorboard=false',
            '--compilation_cache=']
    for module, extra in (('expert', ['--num_experts=1', '--train_epochs=2']),
                          ('distill', ['--iterations=2', '--eval_every=2', '--num_eval=1',
                                       '--eval_epochs=3', '--syn_steps=2', '--expert_epochs=1',
                                       '--max_start_epoch=1'])):
        run_command(module, f'--flagfile={preset}', *tiny, *extra, cwd=tmp_path, devices=1)
    best = np.load(tmp_path / 'runs' / 'cifar10_local' / 'mct_ipc1' / 'best.npz')
    assert best['images'].shape == (10, 32, 32, 3)
    settings = json.loads(str(best['settings']))
    assert settings['data_source'] == 'prepared'
    assert settings['data_dir'] == str(tmp_path / 'data' / 'cifar10')
