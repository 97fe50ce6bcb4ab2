"""Test set-up: fake CPU devices, fixed before any array exists."""

import os

# Several fake CPU devices so that multi-device code paths run in the tests (must be set
# before JAX creates its backend).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_DIR = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'cifar10')


@pytest.fixture
def key():
    return jax.random.key(0)
