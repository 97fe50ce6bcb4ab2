"""The field's cross-architecture evaluation networks, as in MTT's ``networks.py``.

Each architecture is a pair of pure functions over dict pytrees:

* ``init(key, input_shape, num_classes, norm) -> (params, stats)``;
* ``apply(params, stats, x, train) -> (logits, stats)``.

``stats`` holds the batch norms' running statistics (empty without batch norm): training
(``train=True``) normalises with batch statistics and updates them, inference uses them, as
PyTorch's ``train()`` / ``eval()`` modes do. Images are NHWC; flattening is in (H, W, C)
order, so a PyTorch classifier's input columns are a permutation of ours
(``tests/test_reference_models.py`` maps one to the other and compares the outputs).

Definitions, with the reference's parameter counts on 32x32x3 images and 10 classes:

============== ========================================================== ==========
name           layers                                                     parameters
============== ========================================================== ==========
convnet_bn     ConvNet with batch norm (see :mod:`mct_jax.models.conv_net`) 320,010
mlp            dense 128, 128, classes on the flattened image (ReLU)         411,146
lenet          conv5 6, max pool, conv5 16, max pool, dense 120, 84          62,006
alexnet        conv5 128, pool, conv5 192, pool, conv3 256, 192, 192, pool   1,872,202
vgg11(_bn)     VGG's configuration A with instance (batch) norm, dense       9,231,114
resnet18(_bn)  3x3 stem, four stages of two basic blocks, global average    11,173,962
resnet18_ap    as resnet18, but strided convolutions become 2x2 average     11,250,762
               pooling, and the classifier reads the whole last map
============== ========================================================== ==========

Where the reference needs it, 1-channel images get extra padding in the first layer (28x28
MNIST is treated as 32x32). At 64x64 (Tiny ImageNet) the ResNets' stem has stride 2, as in
DD-Ranking's definitions, so their last map is 4x4 as at 32x32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import mct_jax.models.layers as L

VGG11 = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M')


def _flatten(x):
    return x.reshape(x.shape[0], -1)


def _add_norm(params: dict, stats: dict, name: str, kind: str, channels: int) -> None:
    """Adds a norm layer's parameters (and running statistics) under ``name``."""
    p, s = L.norm_init(kind, channels)
    if p is not None:
        params[name] = p
    if s is not None:
        stats[name] = s


def _shape_after(apply, params, stats, input_shape):
    """Output shape of ``apply`` on one image, from shapes only."""
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
    return jax.eval_shape(lambda p, s, x: apply(p, s, x, False)[0], params, stats, x).shape


# ----------------------------------------------------------------------------- ConvNetBN

def convnet_init(key, input_shape, num_classes, norm='batchnorm', width=128, depth=3):
    """A ConvNet (conv 3x3, norm, ReLU, 2x2 average pool per block, then dense) with any
    norm, batch norm included (the instance-norm one with its hand-written derivatives is
    :mod:`mct_jax.models.conv_net`)."""
    h, w, c = input_shape
    keys = jax.random.split(key, depth + 1)
    params, stats = {}, {}
    for i in range(depth):
        params[f'conv{i}'] = L.conv_init(keys[i], 3, c, width)
        _add_norm(params, stats, f'norm{i}', norm, width)
        c, h, w = width, h // 2, w // 2
    params['dense'] = L.dense_init(keys[-1], h * w * c, num_classes)
    return params, stats


def convnet_apply(params, stats, x, train, norm='batchnorm'):
    depth = sum(1 for k in params if k.startswith('conv'))
    new = {}
    for i in range(depth):
        x = L.conv(params[f'conv{i}'], x, padding=1)
        x, s = L.norm(norm, params.get(f'norm{i}'), stats.get(f'norm{i}'), x, train)
        if s is not None:
            new[f'norm{i}'] = s
        x = L.avg_pool(L.relu(x))
    return L.dense(params['dense'], _flatten(x)), new


# ----------------------------------------------------------------------------- MLP, LeNet

def mlp_init(key, input_shape, num_classes, norm='none'):
    del norm
    k = jax.random.split(key, 3)
    n = math.prod(input_shape)
    return {'fc1': L.dense_init(k[0], n, 128), 'fc2': L.dense_init(k[1], 128, 128),
            'fc3': L.dense_init(k[2], 128, num_classes)}, {}


def mlp_apply(params, stats, x, train):
    del train
    x = L.relu(L.dense(params['fc1'], _flatten(x)))
    x = L.relu(L.dense(params['fc2'], x))
    return L.dense(params['fc3'], x), stats


def lenet_init(key, input_shape, num_classes, norm='none'):
    del norm
    c = input_shape[-1]
    k = jax.random.split(key, 5)
    params = {'conv1': L.conv_init(k[0], 5, c, 6), 'conv2': L.conv_init(k[1], 5, 6, 16)}
    feats = _shape_after(lambda p, s, x, t: (_lenet_features(p, x), s), params, {},
                         input_shape)[-1]
    params.update(fc1=L.dense_init(k[2], feats, 120), fc2=L.dense_init(k[3], 120, 84),
                  fc3=L.dense_init(k[4], 84, num_classes))
    return params, {}


def _lenet_features(params, x):
    pad = 2 if x.shape[-1] == 1 else 0
    x = L.max_pool(L.relu(L.conv(params['conv1'], x, padding=pad)))
    x = L.max_pool(L.relu(L.conv(params['conv2'], x, padding=0)))
    return _flatten(x)


def lenet_apply(params, stats, x, train):
    del train
    x = L.relu(L.dense(params['fc1'], _lenet_features(params, x)))
    x = L.relu(L.dense(params['fc2'], x))
    return L.dense(params['fc3'], x), stats


# ----------------------------------------------------------------------------- AlexNet

_ALEXNET = ((128, 5, True), (192, 5, True), (256, 3, False), (192, 3, False), (192, 3, True))


def alexnet_init(key, input_shape, num_classes, norm='none'):
    del norm
    c = input_shape[-1]
    k = jax.random.split(key, len(_ALEXNET) + 1)
    params = {}
    for i, (out, size, _) in enumerate(_ALEXNET):
        params[f'conv{i}'] = L.conv_init(k[i], size, c, out)
        c = out
    feats = _shape_after(lambda p, s, x, t: (_alexnet_features(p, x), s), params, {},
                         input_shape)[-1]
    params['fc'] = L.dense_init(k[-1], feats, num_classes)
    return params, {}


def _alexnet_features(params, x):
    for i, (_, size, pool) in enumerate(_ALEXNET):
        pad = size // 2
        if i == 0 and x.shape[-1] == 1:
            pad += 2
        x = L.relu(L.conv(params[f'conv{i}'], x, padding=pad))
        if pool:
            x = L.max_pool(x)
    return _flatten(x)


def alexnet_apply(params, stats, x, train):
    del train
    return L.dense(params['fc'], _alexnet_features(params, x)), stats


# ----------------------------------------------------------------------------- VGG11

def vgg11_init(key, input_shape, num_classes, norm='instancenorm'):
    c = input_shape[-1]
    widths = [v for v in VGG11 if v != 'M']
    k = jax.random.split(key, len(widths) + 1)
    params, stats = {}, {}
    for i, out in enumerate(widths):
        params[f'conv{i}'] = L.conv_init(k[i], 3, c, out)
        _add_norm(params, stats, f'norm{i}', norm, out)
        c = out
    feats = _shape_after(lambda p, s, x, t: vgg11_apply(dict(p, fc={}), s, x, t, norm,
                                                        features_only=True),
                         params, stats, input_shape)[-1]
    if feats < 1:
        raise ValueError(f'VGG11 pools its input 5 times; {input_shape[0]}x{input_shape[1]} '
                         'images are too small (use at least 32x32).')
    params['fc'] = L.dense_init(k[-1], feats, num_classes)
    return params, stats


def vgg11_apply(params, stats, x, train, norm='instancenorm', features_only=False):
    i, new = 0, {}
    for v in VGG11:
        if v == 'M':
            x = L.max_pool(x)
            continue
        pad = 3 if i == 0 and x.shape[-1] == 1 else 1
        x = L.conv(params[f'conv{i}'], x, padding=pad)
        x, s = L.norm(norm, params.get(f'norm{i}'), stats.get(f'norm{i}'), x, train)
        if s is not None:
            new[f'norm{i}'] = s
        x = L.relu(x)
        i += 1
    x = _flatten(x)
    return (x if features_only else L.dense(params['fc'], x)), new


# ----------------------------------------------------------------------------- ResNet18

_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def _stem_stride(input_shape) -> int:
    return 2 if min(input_shape[:2]) >= 64 else 1


def resnet18_init(key, input_shape, num_classes, norm='instancenorm', pool_shortcuts=False):
    """ResNet18 of the reference (3x3 stem, no max pool); ``pool_shortcuts`` gives the
    ``_AP`` variant: stride-2 convolutions become stride 1 followed by 2x2 average pooling
    and the classifier reads the flattened last map instead of its average."""
    keys = iter(jax.random.split(key, 64))
    params, stats = {}, {}
    add_norm = lambda name, channels: _add_norm(params, stats, name, norm, channels)

    params['stem'] = L.conv_init(next(keys), 3, input_shape[-1], 64, bias=False)
    add_norm('stem_norm', 64)
    c = 64
    for stage, (planes, stride) in enumerate(_STAGES):
        for block in range(2):
            name = f'layer{stage + 1}_{block}'
            s = stride if block == 0 else 1
            params[f'{name}_conv1'] = L.conv_init(next(keys), 3, c, planes, bias=False)
            add_norm(f'{name}_norm1', planes)
            params[f'{name}_conv2'] = L.conv_init(next(keys), 3, planes, planes, bias=False)
            add_norm(f'{name}_norm2', planes)
            if s != 1 or c != planes:
                params[f'{name}_shortcut'] = L.conv_init(next(keys), 1, c, planes, bias=False)
                add_norm(f'{name}_shortcut_norm', planes)
            c = planes
    feats = _shape_after(lambda p, st, x, t: resnet18_apply(
        dict(p, fc={}), st, x, t, norm, pool_shortcuts, features_only=True),
        params, stats, input_shape)[-1]
    params['fc'] = L.dense_init(next(keys), feats, num_classes)
    return params, stats


def resnet18_apply(params, stats, x, train, norm='instancenorm', pool_shortcuts=False,
                   features_only=False):
    new = {}

    def nrm(name, x):
        x, s = L.norm(norm, params.get(name), stats.get(name), x, train)
        if s is not None:
            new[name] = s
        return x

    x = L.relu(nrm('stem_norm', L.conv(params['stem'], x, _stem_stride(x.shape[1:]), 1)))
    for stage, (_, stride) in enumerate(_STAGES):
        for block in range(2):
            name = f'layer{stage + 1}_{block}'
            s = stride if block == 0 else 1
            conv_stride = 1 if pool_shortcuts else s
            out = L.relu(nrm(f'{name}_norm1', L.conv(params[f'{name}_conv1'], x, conv_stride)))
            if pool_shortcuts and s != 1:
                out = L.avg_pool(out, s)
            out = nrm(f'{name}_norm2', L.conv(params[f'{name}_conv2'], out, 1))
            if f'{name}_shortcut' in params:
                short = L.conv(params[f'{name}_shortcut'], x, conv_stride, 0)
                if pool_shortcuts and s != 1:
                    short = L.avg_pool(short, s)
                x = out + nrm(f'{name}_shortcut_norm', short)
            else:
                x = out + x
            x = L.relu(x)
    x = _flatten(x) if pool_shortcuts else jnp.mean(x, axis=(1, 2))
    return (x if features_only else L.dense(params['fc'], x)), new
