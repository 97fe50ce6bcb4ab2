"""Expert training in PyTorch, written the way the reference MTT code (``buffer.py``) does it.

Benchmark-only (needs PyTorch, CPU or CUDA build: docs/interop.md). The whole training split is converted to
standardised float32 and held in memory, as the reference's ``images_all`` tensor is; each
batch of 256 is DSA-augmented and trained with plain SGD (lr 0.01), the ConvNet being the
reference's (conv 3x3 with bias, instance norm as ``GroupNorm(C, C)`` with affine, ReLU,
2x2 average pooling, linear). DSA follows the reference's mode "S": one family per batch,
chosen at random among color, crop, cutout, flip, scale and rotate, with parameters drawn
per image (``docs/method.md`` section 5).

    python benchmarks/torch_expert.py --data=PREPARED_OR_NPZ_FOLDER --width=128 --depth=3 \\
        --batches=24

Prints one JSON line: images per second over the timed batches, and the peak resident
memory of the process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mct_jax import host


def convnet(channels: int, width: int, depth: int, num_classes: int, size: int) -> nn.Module:
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(width, width),
                   nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
        channels, size = width, size // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size * size, num_classes))


# --------------------------------------------------------------------------- DSA, mode S

def _affine(x, theta):
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x, g):
    s = torch.rand(x.shape[0], 2, generator=g) * (1.2 - 1 / 1.2) + 1 / 1.2
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
    return _affine(x, theta)


def _rotate(x, g):
    a = (torch.rand(x.shape[0], generator=g) - 0.5) * 2 * 15 / 180 * math.pi
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(-a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    return _affine(x, theta)


def _flip(x, g):
    flip = torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5
    return torch.where(flip, x.flip(3), x)


def _color(x, g):
    n = x.shape[0]
    x = x + (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, generator=g) * 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, generator=g) + 0.5) + mean


def _crop(x, g):
    n, _, h, w = x.shape
    r = int(h * 0.125 + 0.5)
    dy = torch.randint(-r, r + 1, (n,), generator=g)
    dx = torch.randint(-r, r + 1, (n,), generator=g)
    padded = F.pad(x, (r, r, r, r))
    out = torch.empty_like(x)
    for i in range(n):   # a translation with zero fill
        out[i] = padded[i, :, r + dy[i]:r + dy[i] + h, r + dx[i]:r + dx[i] + w]
    return out


def _cutout(x, g):
    n, _, h, w = x.shape
    side = int(h * 0.5 + 0.5)
    cy = torch.randint(0, h + (1 - side % 2), (n,), generator=g)
    cx = torch.randint(0, w + (1 - side % 2), (n,), generator=g)
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = ((ys - cy[:, None, None]).abs() < side / 2) & ((xs - cx[:, None, None]).abs()
                                                           < side / 2)
    return x * (~inside)[:, None].to(x.dtype)


FAMILIES = (_color, _crop, _cutout, _flip, _scale, _rotate)


def dsa(x, g):
    return FAMILIES[int(torch.randint(0, len(FAMILIES), (1,), generator=g))](x, g)


# --------------------------------------------------------------------------------- data

def load(folder: str):
    """Standardised float32 NCHW training images and labels, all in memory (as the
    reference), from a prepared folder or an npz folder."""
    if os.path.isfile(os.path.join(folder, 'dataset.json')):
        x = np.load(os.path.join(folder, 'train_images.npy'), mmap_mode='r')
        y = np.load(os.path.join(folder, 'train_labels.npy'))
        meta = json.load(open(os.path.join(folder, 'dataset.json')))
        num_classes = len(meta['class_names'])
    else:
        with np.load(os.path.join(folder, 'train.npz')) as z:
            x, y = z['x'], z['y']
        num_classes = int(y.max()) + 1
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[None, :, None, None]
    std = torch.tensor([0.2023, 0.1994, 0.2010])[None, :, None, None]
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div(255)
    images = (images - mean) / std
    return images, torch.from_numpy(np.asarray(y, np.int64)), num_classes


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', required=True)
    p.add_argument('--width', type=int, default=128)
    p.add_argument('--depth', type=int, default=3)
    p.add_argument('--batch', type=int, default=256)
    p.add_argument('--batches', type=int, default=24, help='timed batches')
    p.add_argument('--warmup', type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    images, labels, num_classes = load(args.data)
    net = convnet(images.shape[1], args.width, args.depth, num_classes, images.shape[2])
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(labels), generator=g)
    start, done = None, 0
    for b in range(args.warmup + args.batches):
        if b == args.warmup:
            start = time.perf_counter()
        idx = perm[(b * args.batch) % len(labels):][:args.batch]
        x = dsa(images[idx], g)
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += len(idx) if b >= args.warmup else 0
    seconds = time.perf_counter() - start
    peak = host.peak_resident_mb()
    print(json.dumps({'images_per_second': done / seconds, 'seconds': seconds,
                      'peak_mb': peak, 'torch': torch.__version__,
                      'threads': torch.get_num_threads()}))
    sys.stdout.flush()


if __name__ == '__main__':
    main()
