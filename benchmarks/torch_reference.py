"""The distillation iteration in PyTorch, written the way the reference MTT code does it.

Benchmark-only (needs PyTorch: ``pip install -e '.[bench]'``, docs/interop.md). The student's
parameters are one flat vector; each of the N SGD steps differentiates the student loss with
``create_graph=True`` so that the final matching loss can be back-propagated through all
steps to the synthetic images and the learnable learning rate, as in MTT's ``distill.py``.
The ConvNet is the reference's (conv 3x3 with bias, instance norm as
``GroupNorm(C, C)`` with affine, ReLU, 2x2 average pooling, linear).

:func:`from_jax` converts our parameter pytree and NHWC images to this layout so both
implementations can be run on identical inputs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class FlatConvNet:
    """Shapes of the reference ConvNet's parameters, and its forward pass on a flat vector."""

    def __init__(self, channels: int, width: int, depth: int, num_classes: int, hw: int):
        self.depth, self.width = depth, width
        shapes = []
        c = channels
        for _ in range(depth):
            shapes += [(width, c, 3, 3), (width,), (width,), (width,)]  # conv w, b, norm w, b
            c = width
            hw //= 2
        shapes += [(num_classes, width * hw * hw), (num_classes,)]
        self.shapes = shapes
        self.sizes = [int(np.prod(s)) for s in shapes]

    def forward(self, x, flat):
        parts = torch.split(flat, self.sizes)
        p = [t.view(s) for t, s in zip(parts, self.shapes)]
        for i in range(self.depth):
            w, b, g, beta = p[4 * i: 4 * i + 4]
            x = F.conv2d(x, w, b, padding=1)
            x = F.group_norm(x, self.width, g, beta, eps=1e-5)
            x = F.avg_pool2d(F.relu(x), 2)
        x = x.flatten(1)
        return F.linear(x, p[-2], p[-1])


def meta_loss_and_grads(net: FlatConvNet, images, labels, syn_lr, start, target,
                        num_steps: int, batch_size: int | None = None, perm_seed: int = 0):
    """One outer iteration: N student steps, matching loss, backward to images and lr.

    Args:
      images: [n, C, H, W] leaf tensor with ``requires_grad``.
      syn_lr: 0-d leaf tensor with ``requires_grad``.
      start, target: flat parameter vectors.
    Returns:
      (loss, grad_images, grad_lr).
    """
    student = [start.clone().requires_grad_(True)]
    n = images.shape[0]
    batch_size = batch_size or n
    gen = torch.Generator().manual_seed(perm_seed)
    for _ in range(num_steps):
        idx = (torch.arange(n) if batch_size >= n
               else torch.randperm(n, generator=gen)[:batch_size])
        out = net.forward(images[idx], student[-1])
        ce = F.cross_entropy(out, labels[idx].long())
        grad = torch.autograd.grad(ce, student[-1], create_graph=True)[0]
        student.append(student[-1] - syn_lr * grad)
    loss = (((student[-1] - target) ** 2).sum() / ((start - target) ** 2).sum())
    g_img, g_lr = torch.autograd.grad(loss, [images, syn_lr])
    return loss, g_img, g_lr


def from_jax(params, images_nhwc, dtype=torch.float32):
    """Our ConvNet pytree -> the flat reference vector; NHWC images -> NCHW tensor."""
    depth = sum(1 for k in params if k.startswith('conv'))
    parts = []
    for i in range(depth):
        w = np.asarray(params[f'conv{i}']['w'])                   # [3, 3, Ci, Co]
        parts += [w.transpose(3, 2, 0, 1), np.asarray(params[f'conv{i}']['b']),
                  np.asarray(params[f'norm{i}']['scale']), np.asarray(params[f'norm{i}']['bias'])]
    dw = np.asarray(params['dense']['w'])                         # [(h, w, c), K]
    k = dw.shape[1]
    width = parts[-1].shape[0]
    hw = int(round((dw.shape[0] // width) ** 0.5))
    # our flatten order is (h, w, c); torch flattens NCHW as (c, h, w)
    dw = dw.reshape(hw, hw, width, k).transpose(3, 2, 0, 1).reshape(k, -1)
    parts += [dw, np.asarray(params['dense']['b'])]
    flat = torch.tensor(np.concatenate([p.ravel() for p in parts]), dtype=dtype)
    x = torch.tensor(np.asarray(images_nhwc).transpose(0, 3, 1, 2).copy(), dtype=dtype)
    return flat, x
