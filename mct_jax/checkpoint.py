"""Saving and loading: Orbax pytrees, and atomic JSON / NPZ files.

Every write goes to a temporary name in the same folder and is renamed into place, so a
crash mid-write leaves either the old file or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from typing import Any

import numpy as np
from absl import logging as absl_logging


class CheckpointError(RuntimeError):
    """A saved file is missing, incomplete or corrupt; the message says which and what to do."""


def _orbax():
    # Imported lazily: Orbax pulls in TensorStore, which is slow to import and not needed by
    # most of the library.
    import orbax.checkpoint as ocp
    return ocp


def _checkpointer():
    """An Orbax checkpointer private to this process.

    In a multi-process run (``jax.distributed``) Orbax by default treats every save as a
    collective of all processes; here each file belongs to one process (an expert to the
    process that trained it, a distillation checkpoint to process 0), so each process saves
    and restores on its own, with barrier keys that cannot collide.
    """
    ocp = _orbax()
    import jax
    me = jax.process_index()
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f'process{me}'))


@contextlib.contextmanager
def _quiet():
    """Orbax logs a dozen INFO lines per save through absl; keep the user's log readable."""
    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        yield
    finally:
        absl_logging.set_verbosity(old)


_CRASH_COUNTS: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Fault injection for the crash tests: ``MCT_JAX_CRASH_AT=name:n`` kills the process
    with SIGKILL the n-th time it reaches the point ``name``. Does nothing otherwise."""
    spec = os.environ.get('MCT_JAX_CRASH_AT')
    if not spec:
        return
    want, _, n = spec.partition(':')
    if want == name:
        _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
        if _CRASH_COUNTS[name] == int(n or 1):
            os.kill(os.getpid(), signal.SIGKILL)


PREVIOUS = '.prev'
# Where a checkpoint may be found, newest first: itself, the kept previous one, and the old
# one a crash left moved aside mid-swap.
FALLBACKS = ('', PREVIOUS, '.tmp-old')


def save_tree(path: str, tree: Any, keep_previous: bool = False) -> None:
    """Writes a pytree of arrays with Orbax to the folder ``path`` (replacing it atomically).

    Orbax itself writes into a temporary folder and renames it when complete; we write next
    to ``path`` and swap, so an existing ``path`` survives until the new one is complete.
    With ``keep_previous`` the replaced one is kept as ``path + '.prev'``, the fallback of
    :func:`load_tree_or_previous`.

    Arrays are written from host memory. In a multi-process run only process 0 may call
    this: Orbax writes NumPy data from process 0 alone (and refuses one process's device
    arrays), so other processes hand their results to process 0 (see ``mct_jax.expert``).
    """
    import jax
    if jax.process_index() != 0:
        raise RuntimeError(f'save_tree({path}) called on process {jax.process_index()}; in a '
                           'multi-process run only process 0 writes Orbax checkpoints.')
    tree = jax.tree.map(np.asarray, tree)
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = path + '.tmp-write'
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    with _quiet():
        ckpt = _checkpointer()
        ckpt.save(tmp, tree)
        ckpt.wait_until_finished()
        ckpt.close()
    crash_point('checkpoint_written')
    if os.path.exists(path):
        old = path + (PREVIOUS if keep_previous else '.tmp-old')
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(path, old)
        crash_point('checkpoint_swap')
        os.replace(tmp, path)
        if not keep_previous:
            shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def load_tree(path: str) -> Any:
    """Reads a pytree written by :func:`save_tree` as NumPy arrays.

    Raises:
      CheckpointError: the folder is missing, incomplete or unreadable.
    """
    if not os.path.isdir(path):
        raise CheckpointError(f'No checkpoint folder at {path}.')
    try:
        with _quiet():
            ckpt = _checkpointer()
            tree = ckpt.restore(os.path.abspath(path))
            ckpt.close()
    except Exception as e:  # Orbax/TensorStore raise many types for damaged files.
        raise CheckpointError(f'Checkpoint {path} is incomplete or corrupt '
                              f'({type(e).__name__}: {e}).') from e
    return tree


def load_tree_or_previous(path: str) -> tuple[Any, str]:
    """The newest readable of ``path`` and its previous version (see ``keep_previous``).

    Returns ``(tree, the folder read)``; logs a warning naming the damaged folder when it
    falls back. Raises :class:`CheckpointError` when neither can be read.
    """
    errors = []
    for candidate in (path + sfx for sfx in FALLBACKS):
        if not os.path.isdir(candidate):
            continue
        try:
            tree = load_tree(candidate)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if errors:
            absl_logging.warning('%s Using the previous checkpoint %s instead.',
                                 ' '.join(errors), candidate)
        return tree, candidate
    if not errors:
        raise CheckpointError(f'No checkpoint folder at {path}.')
    raise CheckpointError(' '.join(errors) + ' No earlier checkpoint is readable either.')


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write) -> None:
    """Writes ``path`` through a temporary file renamed over it, so that a reader never sees
    half a file; the file gets the mode any new file of the user gets (0666 less the
    umask), not the temporary file's private 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON."""
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def read_json(path: str) -> Any:
    """Reads a JSON file, raising :class:`CheckpointError` if it is unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f'Cannot read {path}: {e}') from e


def write_npz(path: str, **arrays) -> None:
    """Atomically writes an uncompressed ``.npz`` archive (``np.load`` reads it)."""
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def folder_bytes(path: str) -> int:
    """Total size in bytes of the files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total
