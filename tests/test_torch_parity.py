"""Our meta-gradient equals an independent PyTorch implementation in the reference MTT style
(flat parameters, create_graph=True) on identical inputs, in float64, without augmentation.

PyTorch is a benchmark-only dependency (``pip install -e '.[bench]'``, which CI installs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason="PyTorch not installed: pip install -e '.[bench]'")

from benchmarks import torch_reference  # noqa: E402
from mct_jax import models, rollout  # noqa: E402


@pytest.mark.parametrize('width,n,steps', [(4, 6, 3),
                                           pytest.param(8, 10, 2, marks=pytest.mark.slow)])
def test_loss_and_gradients_match_pytorch(width, n, steps):
    with jax.enable_x64(True):
        m = models.convnet((8, 8, 3), 5, width, 2)
        start = jax.tree.map(lambda a: a.astype(jnp.float64), m.init(jax.random.key(0)))
        start['norm0']['scale'] = start['norm0']['scale'] * 1.3  # non-trivial affine norm
        target = jax.tree.map(lambda a, b: a + 0.2 * b.astype(jnp.float64), start,
                              m.init(jax.random.key(1)))
        images = jax.random.normal(jax.random.key(2), (n, 8, 8, 3), jnp.float64)
        labels = jnp.arange(n) % 5
        lr = jnp.float64(0.05)
        loss, grads = jax.value_and_grad(rollout.meta_loss)(
            {'images': images, 'lr': lr}, labels, start, target, jax.random.key(3),
            m._replace(loss_grad=None, stored_hvp=None),
            rollout.RolloutOptions(steps, n, use_dsa=False))
        g_img, g_lr = grads['images'], grads['lr']

    net = torch_reference.FlatConvNet(3, width, 2, 5, 8)
    t_start, t_img = torch_reference.from_jax(start, images, torch.float64)
    t_target, _ = torch_reference.from_jax(target, images, torch.float64)
    t_img.requires_grad_(True)
    t_lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    t_loss, t_gi, t_gl = torch_reference.meta_loss_and_grads(
        net, t_img, torch.tensor(np.asarray(labels)), t_lr, t_start, t_target, steps)
    np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-10)
    np.testing.assert_allclose(g_lr, t_gl.item(), rtol=1e-8)
    np.testing.assert_allclose(g_img, t_gi.numpy().transpose(0, 2, 3, 1), rtol=1e-8, atol=1e-14)
