"""Test set-up: fake CPU devices, fixed before any array exists."""

import os

# Several fake CPU devices so that multi-device code paths run in the tests (must be set
# before JAX creates its backend).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')

import jax  # noqa: E402
import pytest  # noqa: E402

# The persistent XLA compilation cache, for programs that take a second or more to compile:
# a second run of the suite (the inner loop) loads them instead of compiling, and so does a
# worker that compiles what another already did. MCT_JAX_TEST_CACHE names the folder; empty
# turns it off.
_CACHE = os.environ.get('MCT_JAX_TEST_CACHE', os.path.expanduser('~/.cache/mct_jax/xla-tests'))
if _CACHE:
    jax.config.update('jax_compilation_cache_dir', _CACHE)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real CIFAR-10, for the tests that read it: a folder with train.npz and test.npz, or one
# written by `python -m mct_jax.prepare --dataset=cifar10`, named by this variable.
CIFAR10_ENV = 'MCT_CIFAR10_DIR'


def run_command(module, *args, devices=2, check=True, cwd=REPO, timeout=600, **env_vars):
    """``python -m mct_jax.<module> args`` in a fresh process with ``devices`` fake CPU
    devices and ``env_vars`` added to the environment (a crash-injection setting of the
    caller's environment is dropped); the finished ``CompletedProcess``. With ``check``, a
    non-zero exit fails the test with the end of stderr."""
    import subprocess
    import sys
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    env.pop('MCT_JAX_CRASH_AT', None)
    env.update(env_vars)
    proc = subprocess.run([sys.executable, '-m', f'mct_jax.{module}', *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f'{module} exited with {proc.returncode}:\n'
                             f'{proc.stderr[-3000:]}')
    return proc


@pytest.fixture
def parse_flags():
    """``parse(*args)`` parses command-line flags (every flag of :mod:`mct_jax.cli.flags`)
    into absl's global ``FLAGS`` and returns it, so that a command's own checks and steps
    run in the test's process without starting one; the defaults come back afterwards."""
    from mct_jax.cli import flags as cli_flags

    def parse(*args):
        cli_flags.FLAGS.unparse_flags()
        cli_flags.FLAGS(['prog', *args])
        return cli_flags.FLAGS
    yield parse
    cli_flags.FLAGS.unparse_flags()


def last_json(proc):
    """The JSON a command printed last (every entry point ends with one)."""
    import json
    return json.loads(proc.stdout.strip().splitlines()[-1])


# A user's module of Flax networks, defined outside the package: a working one with batch
# norm, one without state, one with the wrong number of outputs, and a name that is no module.
USER_NETS = """
import flax.linen as nn

NOT_A_MODULE = 3


class TinyNet(nn.Module):
    num_classes: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(self.num_classes)(nn.relu(x).mean(axis=(1, 2)))


class Plain(nn.Module):
    num_classes: int = 2

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class ThreeOutputs(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x.mean(axis=(1, 2)))
"""


def write_user_nets(path) -> None:
    """Writes :data:`USER_NETS` as the Python file ``path``."""
    with open(path, 'w') as f:
        f.write(USER_NETS)


def real_cifar10():
    """(source, folder) of real CIFAR-10 for `data.load_raw`; skips the test, saying how to
    provide it, when the variable is unset (a folder that holds no dataset is an error)."""
    folder = os.environ.get(CIFAR10_ENV, '')
    if not folder:
        pytest.skip(f'real CIFAR-10 not given: set {CIFAR10_ENV} to a folder with '
                    'train.npz/test.npz or one written by python -m mct_jax.prepare')
    from mct_jax.data import store
    return store.source_of(folder), folder


@pytest.fixture
def key():
    return jax.random.key(0)


# Every compiled XLA:CPU program keeps memory mappings of its code until JAX's caches let it
# go, and Linux allows a process 65,530 mappings (vm.max_map_count). The whole suite in one
# process compiles enough programs (the eager finite-difference checks alone add ~5,000
# mappings each) that the next compilation crashed with a segmentation fault. Clearing the
# caches when a test leaves many mappings behind keeps the suite well under the limit.
MAX_MAPPINGS_KEPT = 20_000


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    yield
    try:
        with open('/proc/self/maps') as f:
            mappings = sum(1 for _ in f)
    except OSError:   # not Linux: no such limit to watch
        return
    if mappings > MAX_MAPPINGS_KEPT:
        import gc
        jax.clear_caches()
        gc.collect()


def scaled_trajectory(model, epochs: int):
    """A full trajectory of ``epochs`` epochs without training: the init scaled by
    1 + 0.1 t at epoch t (what the loop-level tests need, in milliseconds)."""
    from mct_jax import trajectory
    snaps = [model.init(jax.random.key(0))]
    for t in range(1, epochs + 1):
        snaps.append(jax.tree.map(lambda a, t=t: a * (1 + 0.1 * t), snaps[0]))
    return trajectory.full(snaps)


def assert_trees_close(got, want, rtol=1e-7, atol=0.0, exact=False):
    """Asserts two pytrees have the same structure and leaves equal within ``rtol``/``atol``
    (or bit for bit with ``exact``); a failure names the leaf's path."""
    import numpy as np
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
    assert got_def == want_def, f'tree structures differ:\n{got_def}\n{want_def}'
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        name = jax.tree_util.keystr(path)
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)
