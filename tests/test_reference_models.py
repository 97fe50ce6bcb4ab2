"""The cross-architecture networks: exact parameter counts of the reference definitions, the
field's names, and a batch-norm network trained by the evaluator (its PyTorch parity is in
test_reference_parity.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mct_jax import evaluate, models

# Parameter counts of the reference PyTorch definitions (MTT's networks.py), as the field
# reports them: (architecture, CIFAR-10, CIFAR-100, Tiny ImageNet or None).
COUNTS = [
    ('convnet', 320_010, 504_420, None),
    ('convnet_bn', 320_010, 504_420, 1_938_120),
    ('convnet_nn', 319_242, 503_652, 1_937_352),
    ('mlp', 411_146, 422_756, None),
    ('lenet', 62_006, 69_656, None),
    ('alexnet', 1_872_202, 2_148_772, None),
    ('vgg11', 9_231_114, 9_277_284, None),
    ('vgg11_bn', 9_231_114, 9_277_284, None),
    ('resnet18', 11_173_962, 11_220_132, 11_271_432),
    ('resnet18_bn', 11_173_962, 11_220_132, 11_271_432),
    ('resnet18_ap', 11_250_762, 11_988_132, 12_807_432),
    ('resnet18_bn_ap', 11_250_762, 11_988_132, 12_807_432),
]


def _count(name, shape, classes, **kw):
    m = models.get(name, shape, classes, **kw)
    return models.num_params(jax.eval_shape(m.init, jax.random.key(0)))


@pytest.mark.parametrize('name,c10,c100,tiny', COUNTS)
def test_parameter_counts_equal_the_reference(name, c10, c100, tiny):
    depth = 3 if name.startswith('convnet') else None   # ConvNet D3 at every size
    assert _count(name, (32, 32, 3), 10, depth=depth) == c10
    assert _count(name, (32, 32, 3), 100, depth=depth) == c100
    if tiny:
        assert _count(name, (64, 64, 3), 200, depth=depth) == tiny


def test_convnet_depth_follows_the_image_size():
    """ConvNet D4 at 64x64 (Tiny ImageNet) by default, D3 at 32x32."""
    assert models.default_depth((32, 32, 3)) == 3 and models.default_depth((64, 64, 3)) == 4
    assert _count('convnet', (32, 32, 3), 10, depth=4) == 452_490
    assert _count('convnet', (64, 64, 3), 200) == 857_160
    assert _count('convnet', (32, 32, 3), 100, depth=4) == 498_660


def test_names_as_the_field_writes_them():
    assert models.canonical_name('ResNet18BN') == 'resnet18_bn'
    assert models.canonical_name('ConvNetBN') == 'convnet_bn'
    assert models.canonical_name('VGG11') == 'vgg11'
    assert models.canonical_name('ResNet18_AP') == 'resnet18_ap'
    with pytest.raises(ValueError, match='Unknown architecture .densenet.*choose from'):
        models.canonical_name('densenet')


def test_vgg_refuses_images_it_would_pool_away():
    with pytest.raises(ValueError, match='too small'):
        models.get('vgg11', (16, 16, 1), 10).init(jax.random.key(0))


def test_the_evaluator_trains_a_batch_norm_network_and_tests_with_its_statistics():
    """A ConvNetBN learns a tiny separable set with the evaluation protocol (its running
    statistics used at test time), and the protocol is reproducible."""
    shape, classes = (8, 8, 1), 2
    m = models.get('convnet_bn', shape, classes, width=4, depth=2)
    x = jax.random.normal(jax.random.key(0), (40,) + shape)
    y = jnp.arange(40) % 2
    x = x + 3.0 * y[:, None, None, None]          # class 1 is brighter
    evaluator = evaluate.make_evaluator(m, 2, 30, use_dsa=False)
    acc = evaluator(jax.random.key(1), x, y, jnp.float32(0.05), ((x, y),))
    assert acc.shape == (2, 1) and float(acc.min()) > 0.9
    again = evaluator(jax.random.key(1), x, y, jnp.float32(0.05), ((x, y),))
    np.testing.assert_array_equal(acc, again)
    assert math.isclose(float(acc.mean()), float(again.mean()))


@pytest.mark.parametrize('name,shape', [('lenet', (28, 28, 1)), ('alexnet', (32, 32, 1)),
                                        ('resnet18_bn', (64, 64, 3))])
def test_both_convolution_forms_give_the_same_logits(name, shape):
    """im2col and lax.conv_general_dilated agree on every stride, padding and kernel size the
    architectures use: 5x5 unpadded, the 1-channel extra padding, 3x3 and 1x1 stride-2
    convolutions and the stride-2 stem at 64x64. In float32 the two forms differ by rounding
    only (about 1e-6 of the logits); a wrong stride, padding or patch order moves them by
    order 1. (Float32 because XLA:CPU has no fast float64 convolution.)"""
    a, b = (models.get(name, shape, 10, conv=form) for form in ('im2col', 'lax'))
    # jitted: one program each instead of an eager dispatch per layer
    params = jax.jit(a.init)(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2,) + shape)
    want = jax.jit(b.apply)(params, x)
    np.testing.assert_allclose(jax.jit(a.apply)(params, x), want, rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_an_unknown_convolution_form_is_refused():
    with pytest.raises(ValueError, match="convolution form 'fft'.*im2col"):
        models.get('lenet', (32, 32, 3), 10, conv='fft').init(jax.random.key(0))


def test_a_registered_architecture_is_built_by_name():
    """An architecture is one registration: get() builds it by its name and its aliases."""
    from mct_jax.models import registry
    from mct_jax.models.architectures.mlp import MLP
    name = 'test_tiny_mlp'
    if name not in registry.names():
        registry.register(name, lambda shape, classes, width, depth, conv: models.from_flax(
            MLP(classes), shape), aliases=('tinymlp',))
    m = models.get('TinyMLP', (4, 4, 1), 3)
    assert m.apply(m.init(jax.random.key(0)), jnp.zeros((5, 4, 4, 1))).shape == (5, 3)
    with pytest.raises(ValueError, match='registered twice'):
        registry.register(name, None)
