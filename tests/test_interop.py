"""PyTorch interop: MTT expert buffers imported as experts, distilled sets exported for
PyTorch evaluators; and every bad buffer refused with its message, writing nothing."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import last_json, run_command
from mct_jax import checkpoint, data, expert_store, interop
from mct_jax.models import conv_net

torch = pytest.importorskip('torch', reason="PyTorch not installed: pip install -e '.[bench]'")
nn = torch.nn

# The quick import settings: digits (16x16x1, 10 classes), a width-8, depth-3 ConvNet.
DIGITS = ['--dataset=digits', '--train_images_per_class=10']


class RefConvNet(nn.Module):
    """The reference ConvNet as MTT's networks.py builds it (GroupNorm(C, C) as its instance
    norm, 2x2 average pooling, a linear classifier on the (C, H, W)-flattened map)."""

    def __init__(self, channels=1, classes=10, width=8, depth=3, side=16, norm=True):
        super().__init__()
        layers, c = [], channels
        for _ in range(depth):
            layers.append(nn.Conv2d(c, width, 3, padding=1))
            if norm == 'layer':       # MTT's ConvNetLN: LayerNorm over (C, H, W)
                layers.append(nn.LayerNorm([width, side, side]))
            elif norm:
                layers.append(nn.GroupNorm(width, width, affine=True))
            layers += [nn.ReLU(), nn.AvgPool2d(2, 2)]
            c, side = width, side // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * side * side, classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def write_buffer(path, experts=2, epochs=3, seed=0, clone=True, **kw):
    """A replay_buffer file as MTT's buffer.py writes one: per expert, the parameters() after
    every epoch of SGD (here a few random steps each), detached on the CPU. ``clone=False``
    stores them as buffer.py does on a CPU, where ``p.detach().cpu()`` is the live
    parameter: every snapshot then is the final network."""
    snap = (lambda net: [p.detach().cpu().clone() for p in net.parameters()]) if clone else \
        (lambda net: [p.detach().cpu() for p in net.parameters()])
    torch.manual_seed(seed)
    trajectories = []
    for _ in range(experts):
        net = RefConvNet(**kw).double()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        snaps = [snap(net)]
        for _ in range(epochs):
            for _ in range(2):
                x = torch.randn(8, kw.get('channels', 1), kw.get('side', 16), kw.get('side', 16),
                                dtype=torch.float64)
                y = torch.randint(0, kw.get('classes', 10), (8,))
                opt.zero_grad()
                nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
            snaps.append(snap(net))
        trajectories.append(snaps)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(trajectories, path)
    return trajectories


def _cli(module, *args):
    return run_command(module, *args, devices=1, check=False)


def test_imported_expert_gives_pytorchs_logits_and_the_betas_of_its_snapshots(tmp_path):
    buffers = str(tmp_path / 'buffers')
    trajs = write_buffer(os.path.join(buffers, 'replay_buffer_0.pt'))
    model = interop.infer_model([tuple(p.shape) for p in trajs[0][0]])
    assert model == interop.BufferModel(1, 8, 3, 'instancenorm', 10, 16)
    config = dict(image_shape=[16, 16, 1], num_classes=10, width=8, depth=3,
                  norm='instancenorm', act='relu', pool='avgpool', train_epochs=3,
                  anchors=[0, 3], smooth_anchors=False, save_full_trajectory=True)
    experts = str(tmp_path / 'experts')
    assert interop.import_buffers(buffers, experts, config, model, log=lambda m: None) == [0, 1]
    assert interop.import_buffers(buffers, experts, config, model, log=lambda m: None) == []
    traj = expert_store.load_trajectory(expert_store.expert_path(experts, 1), 'full')
    x = np.random.default_rng(0).normal(size=(5, 1, 16, 16))
    net = RefConvNet().double()
    for t in (0, 3):
        for p, value in zip(net.parameters(), trajs[1][t]):
            p.data = value.clone()
        with torch.no_grad():
            want = net(torch.tensor(x)).numpy()
        with jax.enable_x64(True):
            params = jax.tree.map(lambda a: jnp.asarray(a[t], jnp.float64), traj.anchors)
            got = conv_net.apply(params, jnp.asarray(x.transpose(0, 2, 3, 1)))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # betas: eq. 9 from the snapshots, per parameter tensor, computed directly
    state = checkpoint.load_tree(os.path.join(expert_store.expert_path(experts, 1), 'state'))
    names = [n for n, _ in RefConvNet().named_parameters()]
    ours = {'features.0.weight': 'conv0/w', 'features.0.bias': 'conv0/b',
            'features.1.weight': 'norm0/scale', 'features.1.bias': 'norm0/bias',
            'features.4.weight': 'conv1/w', 'features.4.bias': 'conv1/b',
            'features.5.weight': 'norm1/scale', 'features.5.bias': 'norm1/bias',
            'features.8.weight': 'conv2/w', 'features.8.bias': 'conv2/b',
            'features.9.weight': 'norm2/scale', 'features.9.bias': 'norm2/bias',
            'classifier.weight': 'dense/w', 'classifier.bias': 'dense/b'}
    order = expert_store.leaf_names(traj.anchors)
    snaps = [[v.numpy() for v in s] for s in trajs[1]]
    for j, name in enumerate(names):
        d = np.array([np.linalg.norm(snaps[t][j] - snaps[t - 1][j]) for t in (1, 2, 3)])
        beta = np.concatenate([[0.0], np.cumsum(d) / d.sum()])
        np.testing.assert_allclose(state['betas'][:, order.index(ours[name])], beta, rtol=1e-5)


@pytest.mark.slow
def test_distilling_from_imported_experts_through_the_commands(tmp_path):
    buffers, experts = str(tmp_path / 'buffers'), str(tmp_path / 'experts')
    write_buffer(os.path.join(buffers, 'replay_buffer_0.pt'), experts=2, epochs=3)
    write_buffer(os.path.join(buffers, 'replay_buffer_1.pt'), experts=1, epochs=3, seed=1)
    proc = _cli('expert', *DIGITS, f'--import_buffers={buffers}', f'--expert_dir={experts}',
                '--save_full_trajectory')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '--width=8' in proc.stderr and '--train_epochs=3' in proc.stderr
    assert 'Imported 3 experts' in proc.stderr
    config = json.load(open(os.path.join(experts, 'config.json')))
    assert (config['width'], config['train_epochs'], config['anchors']) == (8, 3, [0, 3])
    for method in ('mct', 'mtt'):
        proc = _cli('distill', f'--expert_dir={experts}', f'--out_dir={tmp_path}/{method}',
                    f'--method={method}', '--ipc=1', '--syn_steps=2', '--expert_epochs=1',
                    '--max_start_epoch=2', '--lr_img=100', '--iterations=2', '--eval_every=2',
                    '--num_eval=1', '--eval_epochs=2')
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert last_json(proc)['iteration'] == 2
    # and out again, for PyTorch
    proc = _cli('evaluate', f'--synthetic={tmp_path}/mct', f'--export={tmp_path}/export')
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(os.path.join(tmp_path, 'mct', 'best.npz')) as z:
        np.testing.assert_array_equal(torch.load(tmp_path / 'export' / 'images.pt').numpy(),
                                      z['images'].transpose(0, 3, 1, 2))


@pytest.mark.parametrize('zca', [False, True])
def test_export_loads_in_torch_and_prepares_the_test_set_as_we_do(tmp_path, zca):
    ds = data.load_dataset('digits', train_images_per_class=20, zca=zca)
    n = 10
    labels = np.arange(n) % 10
    soft = np.full((n, 10), 0.02, np.float32)
    soft[np.arange(n), labels] = 0.82
    for name, lab in (('hard', labels.astype(np.int32)), ('soft', soft)):
        syn = {'images': ds.prepare(ds.x_train[:n]), 'labels': lab, 'lr': np.float32(0.0125),
               'settings': {'dataset': 'digits'}}
        out = tmp_path / name
        prep = interop.export_set(syn, ds, str(out))
        images = torch.load(out / 'images.pt')
        got_labels = torch.load(out / 'labels.pt')
        assert images.shape == (n, 1, 16, 16) and images.dtype == torch.float32
        np.testing.assert_array_equal(images.numpy(),
                                      ds.prepare(ds.x_train[:n]).transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(got_labels.numpy(), lab)
        assert got_labels.dtype == (torch.float32 if name == 'soft' else torch.int64)
        assert float(torch.load(out / 'lr.pt')) == pytest.approx(0.0125)
        assert prep == json.load(open(out / 'preprocessing.json'))
    # The test images prepared from raw pixels with what preprocessing.json says
    raw = data.load_raw('digits')
    x = torch.tensor(raw.x_test.transpose(0, 3, 1, 2) / np.float32(raw.white))   # [0, 1]
    test_inputs = ds.prepare(ds.x_test)
    if not zca:
        mean = torch.tensor(prep['mean'], dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(prep['std'], dtype=torch.float32)[None, :, None, None]
        np.testing.assert_array_equal(((x - mean) / std).numpy(),
                                      test_inputs.transpose(0, 3, 1, 2))
    else:
        z = torch.load(tmp_path / 'soft' / prep['zca_file'])
        got = ((x.reshape(len(x), -1) - z['mean']) @ z['transform']).reshape(x.shape)
        np.testing.assert_allclose(got.numpy(), test_inputs.transpose(0, 3, 1, 2), rtol=1e-5,
                                   atol=1e-5)


def _bad(tmp_path, kind):
    folder = tmp_path / kind
    path = str(folder / 'replay_buffer_0.pt')
    if kind == 'truncated':
        write_buffer(path)
        size = os.path.getsize(path)
        with open(path, 'r+b') as f:
            f.truncate(size // 2)
    elif kind == 'width':
        write_buffer(path, width=4)
    elif kind == 'classes':
        write_buffer(path, classes=5)
    elif kind == 'empty':
        os.makedirs(folder)
        torch.save([], path)
    elif kind == 'not_a_buffer':
        os.makedirs(folder)
        torch.save({'state_dict': torch.zeros(3)}, path)
    elif kind == 'resnet':
        os.makedirs(folder)
        torch.save([[[torch.zeros(64, 3, 7, 7), torch.zeros(64), torch.zeros(10, 64),
                      torch.zeros(10)]] * 2], path)
    return str(folder)


def _import_here(parse_flags, *args):
    """The expert command's --import_buffers step (its checks, then the import) in this
    process: parse the flags, run it, and let its error propagate."""
    from mct_jax.expert import __main__ as expert_command
    parse_flags(*args)
    expert_command.import_buffers()


@pytest.mark.parametrize('kind,message', [
    ('truncated', 'is not a readable PyTorch file'),
    ('width', 'width=4 in the buffers but 8 in the flags'),
    ('classes', 'num_classes=5 in the buffers but 10 in the flags'),
    ('empty', 'holds an empty list of trajectories'),
    ('not_a_buffer', 'holds a dict, not a buffer'),
    ('resnet', 'are not those of the ConvNet of trajectory matching'),
])
def test_bad_buffers_are_refused_and_nothing_is_written(tmp_path, kind, message, parse_flags):
    folder = _bad(tmp_path, kind)
    experts = str(tmp_path / 'experts')
    with pytest.raises(ValueError, match=re.escape(message)):
        _import_here(parse_flags, *DIGITS, '--width=8', f'--import_buffers={folder}',
                     f'--expert_dir={experts}')
    assert not os.path.exists(experts)


def test_the_command_refuses_bad_buffers_with_its_message_and_status_2(tmp_path):
    folder = _bad(tmp_path, 'truncated')
    experts = str(tmp_path / 'experts')
    proc = _cli('expert', *DIGITS, '--width=8', f'--import_buffers={folder}',
                f'--expert_dir={experts}')
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'is not a readable PyTorch file' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr and not os.path.exists(experts)


def test_buffers_written_without_clone_on_a_cpu_are_refused(tmp_path, parse_flags):
    """buffer.py on a CPU stores live parameters: every snapshot is the final network, and
    distillation would log loss inf. The import names the cause and the fix."""
    folder, experts = str(tmp_path / 'buffers'), str(tmp_path / 'experts')
    write_buffer(os.path.join(folder, 'replay_buffer_0.pt'), clone=False)
    with pytest.raises(ValueError, match='every snapshot of trajectory 0 is the same network'
                                         r'(.|\n)*\.clone\(\)'):
        _import_here(parse_flags, *DIGITS, f'--import_buffers={folder}',
                     f'--expert_dir={experts}')
    assert not os.path.exists(experts)


def test_a_trajectory_that_stops_moving_is_refused(tmp_path):
    path = str(tmp_path / 'replay_buffer_0.pt')
    trajectories = write_buffer(path, experts=2, epochs=3)
    trajectories[1][2] = [p.clone() for p in trajectories[1][1]]   # epoch 2 repeats epoch 1
    torch.save(trajectories, path)
    with pytest.raises(interop.BufferError, match='trajectory 1 does not move in epoch 2'):
        interop.import_buffers(str(tmp_path), str(tmp_path / 'experts'), {},
                               interop.infer_model([tuple(p.shape)
                                                    for p in trajectories[0][0]]))
    assert not os.path.exists(tmp_path / 'experts')


@pytest.mark.parametrize('path,want', [
    ('buffers/CIFAR10/ConvNet', ('ConvNet', 'cifar10', True, None, None, 'instancenorm')),
    ('buffers/CIFAR100_NO_ZCA/ConvNetD4', ('ConvNetD4', 'cifar100', False, 4, None,
                                           'instancenorm')),
    ('buffers/Tiny/ConvNetW64', ('ConvNetW64', 'tiny_imagenet', None, None, 64,
                                 'instancenorm')),
    ('buffers/ImageNet/imagewoof/128/ConvNetD5', ('ConvNetD5', 'imagewoof', None, 5, None,
                                                  'instancenorm')),
    ('buffers/CIFAR10_NO_ZCA/ConvNetNN', ('ConvNetNN', 'cifar10', False, None, None, 'none')),
    ('my_buffers', (None, None, None, None, None, None)),
])
def test_the_folder_says_model_dataset_and_zca_as_buffer_py_names_it(path, want):
    assert tuple(interop.read_buffer_folder(path)) == want


@pytest.mark.parametrize('name,what', [('ConvNetBN', 'batch norm'), ('ConvNetLN', 'layer norm'),
                                       ('ConvNetGN', 'group norm'), ('ConvNetMP', 'max pooling'),
                                       ('ConvNetAS', 'sigmoid'), ('ConvNetD4BN', 'batch norm')])
def test_variants_with_the_same_shapes_but_other_layers_are_refused(name, what):
    with pytest.raises(interop.BufferError, match=f'{name} buffers \\({what}'):
        interop.read_buffer_folder(f'buffers/CIFAR10/{name}')


@pytest.mark.parametrize('folder,flags,message', [
    ('CIFAR10_NO_ZCA/ConvNet', ['--dataset=digits'],
     "--dataset=digits, but {folder} holds buffers of 'cifar10'"),
    ('CIFAR10_NO_ZCA/ConvNet', ['--dataset=cifar10', '--zca'],
     '--zca=True, but {folder} holds buffers of False'),
    ('CIFAR10/ConvNetBN', ['--dataset=cifar10'], 'ConvNetBN buffers (batch norm)'),
    ('digits/ConvNetD4', ['--dataset=digits'], 'is named ConvNetD4, but its parameters are '
                                                'those of a ConvNet with depth=3'),
])
def test_the_folder_contradicting_the_flags_or_the_shapes_is_refused(tmp_path, folder, flags,
                                                                      message, parse_flags):
    path = str(tmp_path / 'buffers' / folder)
    write_buffer(os.path.join(path, 'replay_buffer_0.pt'), experts=1, epochs=2)
    experts = str(tmp_path / 'experts')
    with pytest.raises(ValueError, match=re.escape(message.format(folder=path))):
        _import_here(parse_flags, *flags, f'--import_buffers={path}',
                     f'--expert_dir={experts}')
    assert not os.path.exists(experts)


def test_a_layer_norm_buffer_is_refused_whatever_its_folder_says(tmp_path):
    """ConvNetLN's parameters have the instance-norm ConvNet's count and leading sizes; a
    folder renamed away from buffer.py's name must not let it import as one."""
    trajs = write_buffer(str(tmp_path / 'replay_buffer_0.pt'), experts=1, epochs=1,
                         norm='layer')
    shapes = [tuple(p.shape) for p in trajs[0][0]]
    assert shapes[2] == (8, 16, 16)
    with pytest.raises(interop.BufferError, match=r"shape \(8, 16, 16\), not \(8,\): a layer "
                                                  "norm's"):
        interop.infer_model(shapes)


@pytest.mark.slow
def test_the_folder_name_gives_dataset_and_zca_when_the_flags_leave_them_out(tmp_path):
    """CIFAR10_NO_ZCA/ConvNet, imported with no data flag: the experts record cifar10 without
    ZCA, and the command says what it read; a folder not named as buffer.py names it says
    what it assumed."""
    path = str(tmp_path / 'buffers' / 'CIFAR10_NO_ZCA' / 'ConvNet')
    write_buffer(os.path.join(path, 'replay_buffer_0.pt'), experts=1, epochs=2, channels=3,
                 side=32)
    experts = str(tmp_path / 'experts')
    proc = _cli('expert', f'--import_buffers={path}', f'--expert_dir={experts}')
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.load(open(os.path.join(experts, 'config.json')))
    assert (config['dataset'], config['zca'], config['width'], config['train_epochs']) == \
        ('cifar10', False, 8, 2)
    assert config['train_images_per_class'] is None          # buffer.py: every image
    assert f'Read from {path}: ' in proc.stderr and '--dataset=cifar10' in proc.stderr
    assert '--zca=False' in proc.stderr
    plain = str(tmp_path / 'mine')
    write_buffer(os.path.join(plain, 'replay_buffer_0.pt'), experts=1, epochs=2)
    proc = _cli('expert', *DIGITS, f'--import_buffers={plain}',
                f"--expert_dir={tmp_path / 'experts2'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'is not named as buffer.py names its folders' in proc.stderr
    assert 'the data of --dataset=digits with --zca=False' in proc.stderr


@pytest.mark.slow
def test_a_run_that_learns_nothing_says_so_and_its_export_too(tmp_path):
    """An lr step far larger than the lr skips every update: after a few the run says that
    nothing is being learned and names an --lr_lr that fits; the saved set and its export
    (with the reference's file names) say that it never changed. The import leaves
    --train_images_per_class out (every image, as buffer.py trains): distillation takes
    that from the experts."""
    buffers, experts = str(tmp_path / 'buffers'), str(tmp_path / 'experts')
    write_buffer(os.path.join(buffers, 'replay_buffer_0.pt'), experts=2, epochs=3)
    proc = _cli('expert', '--dataset=digits', f'--import_buffers={buffers}',
                f'--expert_dir={experts}')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.load(open(os.path.join(experts, 'config.json')))['train_images_per_class'] is None
    run = str(tmp_path / 'run')
    proc = _cli('distill', f'--expert_dir={experts}', f'--out_dir={run}', '--ipc=1',
                '--syn_steps=2', '--expert_epochs=1', '--max_start_epoch=2', '--lr_lr=1000',
                '--iterations=6', '--eval_every=6', '--num_eval=1', '--eval_epochs=2',
                '--progress=log')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count('non-positive learned lr; the update was skipped') == 6
    assert proc.stderr.count('nothing is being learned') == 1
    advice = proc.stderr[proc.stderr.index('nothing is being learned'):]
    suggested = float(advice.split('Use --lr_lr=')[1].split()[0])
    assert 0 < suggested < 1000
    assert 'The set never changed' in proc.stderr
    for name in ('best.npz', 'synthetic.npz'):
        with np.load(os.path.join(run, name)) as z:
            assert not bool(z['changed'])
    proc = _cli('evaluate', f'--synthetic={run}', f'--export={tmp_path}/export',
                '--export_names=reference')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'never changed from its initial real images' in proc.stderr
    prep = json.load(open(tmp_path / 'export' / 'preprocessing.json'))
    assert prep['learned'] is False and prep['ipc'] == 1 and prep['network']['width'] == 8
    assert prep['files'] == {'images': 'images_best.pt', 'labels': 'labels_best.pt',
                             'lr': 'lr_best.pt'}
    with np.load(os.path.join(run, 'best.npz')) as z:
        np.testing.assert_array_equal(torch.load(tmp_path / 'export' / 'images_best.pt').numpy(),
                                      z['images'].transpose(0, 3, 1, 2))
        assert torch.load(tmp_path / 'export' / 'labels_best.pt').dtype == torch.int64
        assert torch.load(tmp_path / 'export' / 'lr_best.pt').item() == pytest.approx(
            float(z['lr']))
    for name in ('preprocessing.json', 'images_best.pt'):
        assert os.stat(tmp_path / 'export' / name).st_mode & 0o777 == \
            os.stat(tmp_path / 'export' / 'labels_best.pt').st_mode & 0o777
