"""Gradient passes (train.microbatched) against jax.grad of the whole batch in float64, and
expert epochs with and without them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_close
from mct_jax import expert, models, train
from mct_jax.models import conv_net, conv_net_grad


def _case(key, n, soft):
    model = models.convnet((9, 9, 3), 4, width=5, depth=2)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(key))
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, 9, 9, 3), jnp.float64)
    if soft:
        y = jax.nn.softmax(jax.random.normal(jax.random.fold_in(key, 2), (n, 4), jnp.float64))
    else:
        y = jax.random.randint(jax.random.fold_in(key, 2), (n,), 0, 4)
    return params, x, y


# Batches that divide into passes, leave a remainder, fit one pass, are smaller than one,
# or are taken whole (size 0); soft labels change the loss, not the split, so one case.
@pytest.mark.parametrize('n,size,soft', [(12, 4, False), (11, 4, False), (11, 3, False),
                                         (7, 7, False), (7, 100, False), (5, 0, False),
                                         (11, 4, True)])
def test_passes_give_the_whole_batch_gradient_float64(n, size, soft):
    """The size-weighted mean of the passes' gradients is jax.grad of the mean cross-entropy
    over the whole batch, with a remainder pass (11 = 2 x 4 + 3) and without; the logits
    come back in the batch's order."""
    with jax.enable_x64(True):
        params, x, y = _case(jax.random.key(n * 7 + size), n, soft)
        # jitted: one program instead of an eager dispatch per operation
        want = jax.jit(jax.grad(lambda p: train.cross_entropy(conv_net.apply(p, x), y)))(params)
        for loss_grad in (conv_net_grad.loss_grad,
                          train.autodiff_loss_grad(lambda p, x: conv_net.apply(p, x))):
            got, got_x, logits = jax.jit(train.microbatched(loss_grad, size))(params, x, y)
            assert got_x is None
            np.testing.assert_allclose(logits, jax.jit(conv_net.apply)(params, x), rtol=1e-12)
            scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(want))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13 * scale)


def test_input_gradient_is_taken_in_one_pass():
    with jax.enable_x64(True):
        params, x, y = _case(jax.random.key(3), 6, False)
        grads, grad_x, _ = train.microbatched(conv_net_grad.loss_grad, 2)(params, x, y, True)
        want_x = jax.jit(jax.grad(lambda x: train.cross_entropy(conv_net.apply(params, x),
                                                               y)))(x)
        np.testing.assert_allclose(grad_x, want_x, rtol=1e-10, atol=1e-15)


def test_default_pass_sizes_by_backend():
    assert train.default_microbatch('cpu') == 16 and train.default_microbatch('gpu') == 0
    assert train.predict_batch('cpu') == 16 and train.predict_batch('tpu') == train.PREDICT_BATCH


def test_expert_epoch_in_passes_matches_the_epoch_in_one_pass():
    """An expert epoch with 8-image passes ends within float32 rounding of the same epoch
    with whole-batch passes, and with passes of 0 (the whole batch) bit for bit equal to the
    on-device epoch (the reference's arithmetic)."""
    from mct_jax import data
    ds = data.load_dataset('digits', train_images_per_class=20)
    model = models.convnet(ds.image_shape, ds.num_classes, width=8, depth=3)
    real = expert.RealData.of(ds)
    params, key = model.init(jax.random.key(1)), jax.random.key(2)
    old = expert.make_epoch_fn(model.apply, 0.01, 64, model.loss_grad)
    want, want_norms, want_correct = old(params, ds.prepare(ds.x_train), ds.y_train, key)
    whole = expert.EpochTrainer(model, 0.01, 64, microbatch=0)
    got, norms, correct = whole.epoch(params, real, key)
    assert_trees_close(got, want, exact=True)
    np.testing.assert_array_equal(norms, want_norms)
    passes = expert.EpochTrainer(model, 0.01, 64, microbatch=8)
    got, norms, correct = passes.epoch(params, real, key)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(norms, want_norms, rtol=1e-3)
    assert abs(int(correct) - int(want_correct)) <= 2
