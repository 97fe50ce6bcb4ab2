"""The cross-architecture networks against PyTorch: one forward pass of each architecture
equals PyTorch's own layers holding the same weights, in float64, in training mode and then
in inference mode (batch norm's running statistics included).

PyTorch is an optional dependency (``pip install -e '.[bench]'``, which CI installs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mct_jax import models
from test_reference_models import COUNTS

torch = pytest.importorskip('torch', reason="PyTorch not installed: pip install -e '.[bench]'")
nn, F = torch.nn, torch.nn.functional


def _norm(kind, c):
    return {'batchnorm': lambda: nn.BatchNorm2d(c), 'instancenorm': lambda: nn.GroupNorm(c, c),
            'none': lambda: nn.Identity()}[kind]()


class TConvNet(nn.Module):
    def __init__(self, c, classes, width, depth, norm, hw):
        super().__init__()
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for i in range(depth):
            self.convs.append(nn.Conv2d(c if i == 0 else width, width, 3, padding=1))
            self.norms.append(_norm(norm, width))
            hw //= 2
        self.classifier = nn.Linear(width * hw * hw, classes)

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = F.avg_pool2d(F.relu(norm(conv(x))), 2, 2)
        return self.classifier(x.flatten(1))


class TMLP(nn.Module):
    def __init__(self, n, classes):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(n, 128), nn.Linear(128, 128), nn.Linear(128, classes)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


class TLeNet(nn.Module):
    def __init__(self, c, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 6, 5, padding=2 if c == 1 else 0)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TAlexNet(nn.Module):
    def __init__(self, c, classes):
        super().__init__()
        spec = [(c, 128, 5, 4 if c == 1 else 2), (128, 192, 5, 2), (192, 256, 3, 1),
                (256, 192, 3, 1), (192, 192, 3, 1)]
        self.convs = nn.ModuleList([nn.Conv2d(a, b, k, padding=p) for a, b, k, p in spec])
        self.fc = nn.Linear(192 * 4 * 4, classes)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i in (0, 1, 4):
                x = F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


class TVGG11(nn.Module):
    CFG = [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M']

    def __init__(self, c, classes, norm):
        super().__init__()
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for v in self.CFG:
            if v != 'M':
                self.convs.append(nn.Conv2d(c, v, 3, padding=1))
                self.norms.append(_norm(norm, v))
                c = v
        self.classifier = nn.Linear(512, classes)

    def forward(self, x):
        i = 0
        for v in self.CFG:
            if v == 'M':
                x = F.max_pool2d(x, 2)
            else:
                x = F.relu(self.norms[i](self.convs[i](x)))
                i += 1
        return self.classifier(x.flatten(1))


class TBlock(nn.Module):
    def __init__(self, cin, planes, stride, norm, ap):
        super().__init__()
        conv_stride = 1 if ap else stride
        self.pool = ap and stride != 1
        self.conv1 = nn.Conv2d(cin, planes, 3, conv_stride, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.sconv = None
        if stride != 1 or cin != planes:
            self.sconv = nn.Conv2d(cin, planes, 1, conv_stride, bias=False)
            self.sbn = _norm(norm, planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.pool:
            out = F.avg_pool2d(out, 2, 2)
        out = self.bn2(self.conv2(out))
        short = x
        if self.sconv is not None:
            short = self.sconv(x)
            if self.pool:
                short = F.avg_pool2d(short, 2, 2)
            short = self.sbn(short)
        return F.relu(out + short)


class TResNet18(nn.Module):
    def __init__(self, c, classes, norm, ap):
        super().__init__()
        self.ap = ap
        self.stem = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
        self.bn = _norm(norm, 64)
        blocks, cin = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [TBlock(cin, planes, stride, norm, ap), TBlock(planes, planes, 1, norm, ap)]
            cin = planes
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(512 * 4 * 4 if ap else 512, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        for b in self.blocks:
            x = b(x)
        x = x if self.ap else F.avg_pool2d(x, 4)
        return self.classifier(x.flatten(1))


def _conv_w(w):
    return torch.tensor(np.asarray(w).transpose(3, 2, 0, 1))


def _dense_w(w, chw=None):
    """Ours [in, out] -> torch [out, in]; ``chw``: the (C, H, W) of a flattened map, whose
    features we order (H, W, C) and PyTorch (C, H, W)."""
    w = np.asarray(w)
    if chw is not None:
        c, h, wd = chw
        w = w.reshape(h, wd, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * wd)
        return torch.tensor(w)
    return torch.tensor(w.T)


def _set(module, **tensors):
    for name, value in tensors.items():
        getattr(module, name).data = value.to(torch.float64)


def _load_norm(mod, p, stats=None):
    if p is None:
        return
    _set(mod, weight=torch.tensor(np.asarray(p['scale'])), bias=torch.tensor(np.asarray(p['bias'])))
    if stats is not None:
        mod.running_mean.data = torch.tensor(np.asarray(stats['mean']))
        mod.running_var.data = torch.tensor(np.asarray(stats['var']))


def _torch_twin(name, params, stats, shape, classes):
    """The PyTorch definition of ``name`` holding our parameters and statistics."""
    h, w, c = shape
    norm = 'batchnorm' if '_bn' in name else 'none' if name in ('convnet_nn', 'mlp', 'lenet',
                                                                'alexnet') else 'instancenorm'
    if name.startswith('convnet'):
        depth = sum(1 for k in params if k.startswith('conv'))
        net = TConvNet(c, classes, 8, depth, norm, h)
        for i in range(depth):
            _set(net.convs[i], weight=_conv_w(params[f'conv{i}']['w']),
                 bias=torch.tensor(np.asarray(params[f'conv{i}']['b'])))
            _load_norm(net.norms[i], params.get(f'norm{i}'), stats.get(f'norm{i}'))
        side = h // 2 ** depth
        _set(net.classifier, weight=_dense_w(params['dense']['w'], (8, side, side)),
             bias=torch.tensor(np.asarray(params['dense']['b'])))
    elif name == 'mlp':
        net = TMLP(h * w * c, classes)
        for i, (k, chw) in enumerate([('fc1', (c, h, w)), ('fc2', None), ('fc3', None)]):
            _set(getattr(net, k), weight=_dense_w(params[k]['w'], chw),
                 bias=torch.tensor(np.asarray(params[k]['b'])))
    elif name == 'lenet':
        net = TLeNet(c, classes)
        for k in ('conv1', 'conv2'):
            _set(getattr(net, k), weight=_conv_w(params[k]['w']),
                 bias=torch.tensor(np.asarray(params[k]['b'])))
        for k, chw in (('fc1', (16, 5, 5)), ('fc2', None), ('fc3', None)):
            _set(getattr(net, k), weight=_dense_w(params[k]['w'], chw),
                 bias=torch.tensor(np.asarray(params[k]['b'])))
    elif name == 'alexnet':
        net = TAlexNet(c, classes)
        for i, conv in enumerate(net.convs):
            _set(conv, weight=_conv_w(params[f'conv{i}']['w']),
                 bias=torch.tensor(np.asarray(params[f'conv{i}']['b'])))
        _set(net.fc, weight=_dense_w(params['fc']['w'], (192, 4, 4)),
             bias=torch.tensor(np.asarray(params['fc']['b'])))
    elif name.startswith('vgg11'):
        net = TVGG11(c, classes, norm)
        for i, conv in enumerate(net.convs):
            _set(conv, weight=_conv_w(params[f'conv{i}']['w']),
                 bias=torch.tensor(np.asarray(params[f'conv{i}']['b'])))
            _load_norm(net.norms[i], params.get(f'norm{i}'), stats.get(f'norm{i}'))
        _set(net.classifier, weight=_dense_w(params['fc']['w'], (512, 1, 1)),
             bias=torch.tensor(np.asarray(params['fc']['b'])))
    else:
        ap = name.endswith('_ap')
        net = TResNet18(c, classes, norm, ap)
        _set(net.stem, weight=_conv_w(params['stem']['w']))
        _load_norm(net.bn, params.get('stem_norm'), stats.get('stem_norm'))
        for i, block in enumerate(net.blocks):
            n = f'layer{i // 2 + 1}_{i % 2}'
            _set(block.conv1, weight=_conv_w(params[f'{n}_conv1']['w']))
            _set(block.conv2, weight=_conv_w(params[f'{n}_conv2']['w']))
            _load_norm(block.bn1, params.get(f'{n}_norm1'), stats.get(f'{n}_norm1'))
            _load_norm(block.bn2, params.get(f'{n}_norm2'), stats.get(f'{n}_norm2'))
            if block.sconv is not None:
                _set(block.sconv, weight=_conv_w(params[f'{n}_shortcut']['w']))
                _load_norm(block.sbn, params.get(f'{n}_shortcut_norm'),
                           stats.get(f'{n}_shortcut_norm'))
        _set(net.classifier, weight=_dense_w(params['fc']['w'], (512, 4, 4) if ap else None),
             bias=torch.tensor(np.asarray(params['fc']['b'])))
    return net.double()


def _perturb_norms(params, key):
    """Norm scales and shifts away from 1 and 0, so that a wrong affine would show."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for i, (path, a) in enumerate(leaves):
        name = jax.tree_util.keystr(path)
        if 'scale' in name or ("'bias'" in name and 'norm' in name):
            a = a + 0.2 * jax.random.normal(jax.random.fold_in(key, i), a.shape, a.dtype)
        out.append(a)
    return jax.tree.unflatten(jax.tree.structure(params), out)


SLOW_NAMES = {'lenet', 'alexnet', 'vgg11', 'vgg11_bn', 'resnet18', 'resnet18_bn', 'resnet18_ap',
              'resnet18_bn_ap'}


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_NAMES
                                  else n for n, *_ in COUNTS])
def test_forward_equals_pytorch_float64(name):
    """Training-mode and then inference-mode forward passes (batch norm: batch statistics,
    the running statistics they update, then those) equal PyTorch's on the same weights."""
    shape, classes = (32, 32, 3), 10
    with jax.enable_x64(True):
        m = models.get(name, shape, classes, width=8, depth=3)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), m.init(jax.random.key(0)))
        params = _perturb_norms(params, jax.random.key(1))
        stats = jax.tree.map(lambda a: a.astype(jnp.float64), m.init_stats()) \
            if m.init_stats else {}
        x1 = jax.random.normal(jax.random.key(2), (4,) + shape, jnp.float64)
        x2 = jax.random.normal(jax.random.key(3), (3,) + shape, jnp.float64)
        if m.apply_stats:
            y1, new_stats = m.apply_stats(params, stats, x1, True)
            y2, same = m.apply_stats(params, new_stats, x2, False)
            assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), same,
                                             new_stats))
            np.testing.assert_array_equal(m.apply(params, x1), y1)   # apply: training mode
        else:
            y1, y2 = m.apply(params, x1), m.apply(params, x2)
    net = _torch_twin(name, params, stats, shape, classes)
    to_torch = lambda x: torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))
    net.train()
    with torch.no_grad():
        t1 = net(to_torch(x1)).numpy()
        net.eval()
        t2 = net(to_torch(x2)).numpy()
    np.testing.assert_allclose(y1, t1, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(y2, t2, rtol=1e-9, atol=1e-10)
    if m.apply_stats:   # the running statistics PyTorch's training pass left
        mod = next(mod for mod in net.modules() if isinstance(mod, nn.BatchNorm2d))
        first = 'norm0' if 'norm0' in new_stats else 'stem_norm'   # the first batch norm
        np.testing.assert_allclose(new_stats[first]['var'], mod.running_var.numpy(), rtol=1e-10)
        np.testing.assert_allclose(new_stats[first]['mean'], mod.running_mean.numpy(),
                                   rtol=1e-10, atol=1e-14)


