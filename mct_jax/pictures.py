"""Pictures of a run, as PNG files: the synthetic images as a grid with their class names,
a distillation's curves from its metrics, an expert's betas and accuracies. Everything is
written atomically (a reader never sees half a file); PIL and matplotlib are imported only
when a picture is drawn."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from mct_jax.monitor import read_metrics

def image_grid(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
               max_per_class: int = 10, max_classes: int = 100, tile: int = 32,
               names: bool = True) -> np.ndarray:
    """One row per class (up to ``max_classes``), up to ``max_per_class`` images each.

    Args:
      images: [n, H, W, C] in [0, 1] (a dataset's ``to_display``); C is 1 or 3.
      labels: [n] class of each image.
      tile: images smaller than this are enlarged by an integer factor (nearest neighbour).
    Returns:
      [rows * (h + 2) + 2, margin + cols * (w + 2) + 2, 3] uint8, with the class names in a
      left margin when ``names``.
    """
    from PIL import Image, ImageDraw
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f'Expected images [n, H, W, 1 or 3], got shape {images.shape}.')
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))[:max_classes]
    per_class = [np.flatnonzero(labels == c)[:max_per_class] for c in classes]
    cols = max(len(p) for p in per_class)
    scale = max(1, -(-tile // images.shape[1]))
    h, w = images.shape[1] * scale, images.shape[2] * scale
    longest = max(len(str(class_names[c]) if c < len(class_names) else str(c)) for c in classes)
    margin = 8 + 6 * min(longest, 14) if names else 0
    canvas = np.full((len(classes) * (h + 2) + 2, margin + cols * (w + 2) + 2, 3), 255, np.uint8)
    pixels = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    for r, idx in enumerate(per_class):
        for c, i in enumerate(idx):
            y, x = 2 + r * (h + 2), margin + 2 + c * (w + 2)
            canvas[y:y + h, x:x + w] = pixels[i]
    if names:
        img = Image.fromarray(canvas)
        draw = ImageDraw.Draw(img)
        for r, c in enumerate(classes):
            name = str(class_names[c]) if c < len(class_names) else str(c)
            draw.text((3, 2 + r * (h + 2) + h // 2 - 6), name[:14], fill=(0, 0, 0))
        canvas = np.asarray(img)
    return canvas


def save_png(path: str, image: np.ndarray) -> None:
    """Writes a [H, W, 3] uint8 image atomically."""
    from PIL import Image
    tmp = path + '.tmp.png'
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


def _moving_average(x, k):
    x = np.asarray(x, np.float64)
    if len(x) < k or k < 2:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    head = c[1:k] / np.arange(1, k)
    return np.concatenate([head, (c[k:] - c[:-k]) / k])


def _finish(fig, axes, title: str, png: str) -> None:
    """Grid lines, title, and an atomic write of the figure to ``png``."""
    import matplotlib.pyplot as plt
    for a in axes:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = png + '.tmp.png'
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


def plot_distillation(metrics_path: str, png: str, title: str = '') -> None:
    """Accuracy (mean +- std), matching loss and learned lr against the iteration."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    evals, steps = read_metrics(metrics_path)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.6))
    if evals:
        it = [e['iteration'] for e in evals]
        m = np.array([e['eval']['mean'] for e in evals])
        s = np.array([e['eval']['std'] for e in evals])
        a1.plot(it, m, marker='o', ms=3)
        a1.fill_between(it, m - s, m + s, alpha=0.2)
    a1.set(xlabel='iteration', ylabel='test accuracy (%)', title='evaluation (mean +- std)')
    if steps:
        it = [r['iteration'] for r in steps]
        loss = [r['loss'] for r in steps]
        a2.plot(it, loss, lw=0.6, alpha=0.4, label='per iteration')
        a2.plot(it, _moving_average(loss, 10), lw=1.5, label='moving average (10)')
        a2.legend(fontsize=8)
        a3.plot(it, [r['lr'] for r in steps])
    a2.set(xlabel='iteration', ylabel='matching loss', title='loss')
    a3.set(xlabel='iteration', ylabel='learned student lr', title='learned lr')
    _finish(fig, (a1, a2, a3), title, png)


def plot_expert(betas: np.ndarray, anchor_epochs: Sequence[int], leaf_names: Sequence[str],
                train_acc: Sequence[float], test_acc: Sequence[float], png: str,
                title: str = '') -> None:
    """Per-layer beta curves (eq. 9) and accuracy per epoch of one expert.

    ``betas``: [K+1, L], the fraction of each segment's distance covered by epoch t.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    betas = np.asarray(betas)
    k = betas.shape[0] - 1
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap('viridis')
    for l in range(betas.shape[1]):
        a1.plot(range(k + 1), betas[:, l], color=cmap(l / max(1, betas.shape[1] - 1)),
                label=leaf_names[l] if l < len(leaf_names) else str(l), lw=1.2)
    a1.plot(range(k + 1), [_uniform(t, anchor_epochs) for t in range(k + 1)], 'k--', lw=1,
            label='uniform (t/K)')
    for a in anchor_epochs:
        a1.axvline(a, color='gray', lw=0.5)
    a1.set(xlabel='epoch', ylabel='beta (fraction of the segment covered)',
           title='convexified trajectory: per-layer betas')
    a1.legend(fontsize=6, ncol=2)
    a2.plot(range(1, len(train_acc) + 1), 100 * np.asarray(train_acc), label='train (augmented)')
    a2.plot(range(len(test_acc)), 100 * np.asarray(test_acc), label='test')
    a2.set(xlabel='epoch', ylabel='accuracy (%)', title='expert accuracy')
    a2.legend()
    _finish(fig, (a1, a2), title, png)


def _uniform(t, anchor_epochs):
    for a, b in zip(anchor_epochs[:-1], anchor_epochs[1:]):
        if a <= t <= b:
            return (t - a) / (b - a)
    return 1.0
