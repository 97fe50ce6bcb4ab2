"""ImageNet as the papers use it, from small generated files in the real layouts: MTT's
subsets from an ILSVRC folder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) at 128 px, the
downsampled ImageNet's npz batches at 64 px, and TFDS's imagenet_resized under mock data.
Nothing is downloaded."""

import os
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from conftest import last_json, run_command
from mct_jax import data, prepare
from mct_jax.data import DataError, arrays, catalog, imagenet, store

NETTE = catalog.SPECS['imagenette'].wnids
# A class of full ImageNet that is in no subset: read only when asked for.
OTHER = 'n09999999'


def _colour(label, k):
    return (20 + 20 * label, 250 - 20 * (k % 12), 60 + 40 * (k % 3))


def _ilsvrc(root, wnids, train_per_class=2, val_per_class=1, extra=()):
    """An ILSVRC-layout folder; image k of class c is a flat colour with a black left
    third, of a size that is neither square nor 128 (so resizing shows)."""
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for label, wnid in enumerate(tuple(wnids) + tuple(extra)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = np.zeros((45, 60, 3), np.uint8)
                pixels[:, 20:] = _colour(label, k + (10 if split == 'val' else 0))
                Image.fromarray(pixels).save(folder / f'{wnid}_{k}.JPEG', quality=98)
    return root


def test_subset_from_a_full_imagenet_folder(tmp_path):
    root = _ilsvrc(tmp_path / 'imagenet', NETTE, extra=(OTHER,))
    cache = tmp_path / 'cache'
    ds = data.load_dataset('imagenette', data_dir=root, cache_dir=cache)
    assert ds.x_train.shape == (20, 128, 128, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10, 128, 128, 3) and isinstance(ds.x_train, np.memmap)
    # The reference's class order: class c is the c-th WordNet id of the subset.
    np.testing.assert_array_equal(ds.y_train, np.repeat(np.arange(10), 2))
    np.testing.assert_array_equal(ds.y_test, np.arange(10))
    assert ds.class_names[0] == 'tench' and ds.num_classes == 10
    np.testing.assert_allclose(ds.mean, catalog.IMAGENET_MEAN_STD[0])
    # Squashed to 128x128 as Resize((128, 128)) does, not cropped: the black third spans
    # the left 128 / 3 columns, the colour the rest.
    first = ds.x_train[0].astype(int)
    np.testing.assert_allclose(first[:, :38], 0, atol=4)
    np.testing.assert_allclose(first[:, 48:], np.broadcast_to(_colour(0, 0), (128, 80, 3)),
                               atol=4)
    np.testing.assert_allclose(ds.x_test[3, :, 60:].astype(int),
                               np.broadcast_to(_colour(3, 10), (128, 68, 3)), atol=4)
    # Read again: from the cache, nothing decoded.
    with mock.patch.object(Image, 'open', side_effect=AssertionError('decoded a JPEG')):
        again = data.load_dataset('imagenette', data_dir=root, cache_dir=cache)
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_subset_from_its_own_download(tmp_path):
    """A folder holding only the subset's classes (fast.ai's Imagenette layout) reads the
    same way."""
    wnids = catalog.SPECS['imagewoof'].wnids
    root = _ilsvrc(tmp_path / 'imagewoof2', wnids, train_per_class=1)
    ds = data.load_dataset('imagewoof', data_dir=root, cache_dir=tmp_path / 'cache',
                           val_images_per_class=0)
    assert len(ds.y_train) == 10 and ds.class_names[2] == 'Samoyed'
    assert ds.image_shape == (128, 128, 3)


def test_prepare_command_writes_a_subset_and_the_downsampled_batches(tmp_path):
    """``python -m mct_jax.prepare`` on an ILSVRC folder and on the downsampled npz files:
    the prepared folders hold the images and labels the folder sources read."""
    root = _ilsvrc(tmp_path / 'imagenet', NETTE, extra=(OTHER,))
    out = tmp_path / 'prepared_nette'
    proc = run_command('prepare', '--dataset=imagenette', f'--source_path={root}',
                       f'--data_dir={out}', devices=1, timeout=300)
    assert last_json(proc)['splits'] == {'train': 20,
                                                                          'test': 10}
    prepared = data.load_raw('imagenette', 'prepared', out)
    folder = data.load_raw('imagenette', 'folder', root, cache_dir=tmp_path / 'cache')
    for a, b in ((prepared.x_train, folder.x_train), (prepared.y_train, folder.y_train),
                 (prepared.x_test, folder.x_test), (prepared.y_test, folder.y_test)):
        np.testing.assert_array_equal(a, b)
    assert prepared.class_names == folder.class_names
    # the downsampled ImageNet's batches, prepared by the library call the command makes
    rng = np.random.default_rng(1)
    down = tmp_path / 'down'
    (down / 'Imagenet64_train_npz').mkdir(parents=True)
    (down / 'val').mkdir()
    np.savez(down / 'Imagenet64_train_npz' / 'train_data_batch_1.npz',
             data=rng.integers(0, 256, (3, 3 * 64 * 64), dtype=np.uint8), labels=[5, 1, 1000])
    np.savez(down / 'val' / 'val_data.npz',
             data=rng.integers(0, 256, (2, 3 * 64 * 64), dtype=np.uint8), labels=[2, 7])
    meta = prepare.prepare('imagenet64', down, tmp_path / 'prepared_64')
    assert meta['splits'] == {'train': 3, 'test': 2}
    prepared = data.load_raw('imagenet64', 'prepared', tmp_path / 'prepared_64')
    folder = data.load_raw('imagenet64', 'folder', down, cache_dir=tmp_path / 'cache64')
    np.testing.assert_array_equal(prepared.x_train, folder.x_train)
    np.testing.assert_array_equal(prepared.y_train, [4, 0, 999])
    np.testing.assert_array_equal(prepared.y_test, folder.y_test)


def test_downsampled_imagenet_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'Imagenet64_train_npz'
    folder.mkdir()
    expected, labels = [], []
    for b in (1, 2):
        flat = rng.integers(0, 256, (5, 3 * 64 * 64), dtype=np.uint8)
        y = rng.integers(1, 1001, 5)
        np.savez(folder / f'train_data_batch_{b}.npz', data=flat, labels=list(y),
                 mean=np.zeros(3 * 64 * 64))
        # Independent unpacking: pixel (i, j) of channel c is flat[c * 4096 + i * 64 + j].
        expected.append(np.stack([[[[f[c * 4096 + i * 64 + j] for c in range(3)]
                                    for j in range(64)] for i in range(64)] for f in flat]))
        labels.append(y - 1)
    (tmp_path / 'val').mkdir()
    val = rng.integers(0, 256, (4, 3 * 64 * 64), dtype=np.uint8)
    np.savez(tmp_path / 'val' / 'val_data.npz', data=val, labels=[1, 2, 3, 1000])
    (tmp_path / 'map_clsloc.txt').write_text('n02119789 1 kit_fox\nn02100735 2 English_setter\n')
    cache = tmp_path / 'cache'
    raw = data.load_raw('imagenet64', 'folder', tmp_path, cache_dir=cache)
    assert isinstance(raw.x_train, np.memmap) and raw.x_train.shape == (10, 64, 64, 3)
    np.testing.assert_array_equal(raw.x_train, np.concatenate(expected))
    np.testing.assert_array_equal(raw.y_train, np.concatenate(labels))
    np.testing.assert_array_equal(raw.y_test, [0, 1, 2, 999])
    assert raw.class_names[:3] == ('kit fox', 'English setter', '2')
    ds = data.load_dataset('imagenet64', 'folder', tmp_path, cache_dir=cache)
    assert ds.num_classes == 1000 and ds.image_shape == (64, 64, 3)


def test_imagenet64_from_tfds_mock_reads_rows_on_demand(tmp_path, monkeypatch):
    tfds = pytest.importorskip('tensorflow_datasets')
    with tfds.testing.mock_data(num_examples=6), \
            mock.patch.object(tfds.core.DatasetBuilder, 'is_prepared', return_value=True):
        whole = data.load_raw('imagenet64', 'tfds', tmp_path)
        monkeypatch.setattr(data.sources, 'TFDS_IN_MEMORY_BYTES', 0)
        lazy = data.load_raw('imagenet64', 'tfds', tmp_path)
        assert isinstance(lazy.x_train, arrays.TfdsImages)
        assert lazy.x_train.shape == whole.x_train.shape == (6, 64, 64, 3)
        rows = np.array([4, 1, 1])
        np.testing.assert_array_equal(lazy.x_train[rows], whole.x_train[rows])
        np.testing.assert_array_equal(lazy.x_train[2:5], whole.x_train[2:5])
        np.testing.assert_array_equal(lazy.y_train, whole.y_train)
    assert len(whole.class_names) == 1000 and whole.class_names[0].startswith('n0')


def _bad(tmp_path, make):
    root = tmp_path / 'imagenet'
    make(root)
    return lambda: data.load_raw('imagenette', 'folder', root, cache_dir=tmp_path / 'cache')


BAD = {
    'no train folder': (lambda r: (r / 'val').mkdir(parents=True), r'train not found'),
    'missing classes': (lambda r: _ilsvrc(r, NETTE[:8]),
                        r'lacks the class folders of imagenette \(n03445777, n03888257'),
    'flat val folder': (lambda r: (_ilsvrc(r, NETTE), [os.rename(p, r / 'val' / p.name) for
                                                       p in (r / 'val').rglob('*.JPEG')],
                                   [os.rmdir(d) for d in (r / 'val').iterdir() if d.is_dir()]),
                        'holds images directly: sort them into one folder per class'),
    'empty class': (lambda r: (_ilsvrc(r, NETTE), [p.unlink() for p in
                                                   (r / 'train' / NETTE[4]).iterdir()]),
                    f'class folder .*{NETTE[4]} holds no images'),
    'unreadable image': (lambda r: (_ilsvrc(r, NETTE),
                                    (r / 'train' / NETTE[1] / 'bad.JPEG').write_text('x')),
                         r'cannot read image .*bad\.JPEG'),
}


@pytest.mark.parametrize('case', list(BAD), ids=list(BAD))
def test_bad_imagenet_folders_name_the_problem(case, tmp_path):
    make, pattern = BAD[case]
    with pytest.raises(DataError, match=pattern):
        _bad(tmp_path, make)()
    cache = tmp_path / 'cache'
    assert not cache.exists() or not [p for p in cache.iterdir() if store.is_complete(p)]


def test_bad_downsampled_files_name_the_problem(tmp_path):
    np.savez(tmp_path / 'train_data_batch_2.npz', data=np.zeros((1, 12288), np.uint8),
             labels=[1])
    np.savez(tmp_path / 'val_data.npz', data=np.zeros((1, 12288), np.uint8), labels=[1])
    with pytest.raises(DataError, match='train_data_batch_1.npz .* found train_data_batch_2'):
        imagenet.downsampled_files(tmp_path)
    np.savez(tmp_path / 'train_data_batch_1.npz', data=np.zeros((1, 3 * 32 * 32), np.uint8),
             labels=[1])
    with pytest.raises(DataError, match='is it the 64x64 release'):
        data.load_raw('imagenet64', 'folder', tmp_path, cache_dir=tmp_path / 'cache')


def test_zca_refused_for_large_images():
    with pytest.raises(DataError, match='drop --zca'):
        data.fit_zca(np.zeros((2, 128, 128, 3), np.uint8))


@pytest.mark.slow
def test_subset_runs_through_the_commands(tmp_path):
    """An ImageNet subset at 128x128 with ConvNetD5, end to end through the real commands,
    from a generated ILSVRC folder (the first command fills the data cache, the next read
    it)."""
    root = _ilsvrc(tmp_path / 'imagenet', NETTE, train_per_class=3)
    common = ['--dataset=imagenette', '--data_source=folder', f'--data_dir={root}',
              f'--data_cache={tmp_path / "cache"}', '--width=8', '--depth=5',
              f'--expert_dir={tmp_path / "experts"}', '--progress=none', '--pictures=false',
              '--tensorboard=false', '--compilation_cache=']
    for module, extra in (('expert', ['--num_experts=1', '--train_epochs=2',
                                      '--batch_train=10']),
                          ('distill', ['--ipc=1', '--syn_steps=2', '--expert_epochs=1',
                                       '--max_start_epoch=1', '--iterations=2',
                                       '--eval_every=2', '--num_eval=1', '--eval_epochs=2',
                                       f'--out_dir={tmp_path / "run"}'])):
        proc = run_command(module, *common, *extra, devices=1)
    result = last_json(proc)
    assert result['iteration'] == 2
    with np.load(tmp_path / 'run' / 'best.npz') as z:
        assert z['images'].shape == (10, 128, 128, 3)
