"""Running an entry point: absl flag parsing plus readable errors instead of tracebacks."""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags

from mct_jax import checkpoint, data

# Errors that describe a problem with the user's settings or files; their messages name the
# problem and the fix, so a traceback would only hide them.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
               data.DataError, checkpoint.CheckpointError, FloatingPointError)


def enable_compilation_cache(path: str) -> None:
    """Persistent XLA compilation cache: a second run of the same command skips compiling.

    Set here, by the entry points, not by the library: a notebook or another program decides
    its own JAX settings.
    """
    if not path:
        return
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))
    # Cache every program, also the many that compile in well under a second.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def init_distributed(coordinator_address: str | None, num_processes: int | None,
                     process_id: int | None, auto: bool = False) -> None:
    """Joins a multi-process run (``jax.distributed``) when asked to; otherwise nothing.

    All three of ``coordinator_address``, ``num_processes`` and ``process_id`` are needed,
    or ``auto`` to let JAX detect the cluster. CPU processes exchange collectives through
    Gloo (this setting only concerns JAX's CPU backend; GPUs use NCCL).
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if not any(given) and not auto:
        return
    if any(given) and not all(given):
        raise ValueError('A multi-process run needs all of --coordinator_address=HOST:PORT, '
                         '--num_processes=N and --process_id=I (or --distributed to detect '
                         'them from the cluster environment).')
    if all(given) and not 0 <= process_id < num_processes:
        raise ValueError(f'--process_id={process_id} must be in [0, {num_processes}).')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if all(given):
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()


def run(main) -> None:
    """``app.run(main)``, printing ``error: <message>`` and exiting with status 2 on a user
    error (bad flag values, missing or corrupt files, numerical faults)."""
    def wrapped(argv):
        if len(argv) > 1:
            raise app.UsageError(f'Unexpected arguments {argv[1:]}; all settings are --flags.')
        enable_compilation_cache(flags.FLAGS.compilation_cache)
        try:
            f = flags.FLAGS
            init_distributed(f.coordinator_address, f.num_processes, f.process_id,
                             f.distributed)
            return main(argv)
        except USER_ERRORS as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(2)
    app.run(wrapped)
