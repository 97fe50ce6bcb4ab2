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


def run(main) -> None:
    """``app.run(main)``, printing ``error: <message>`` and exiting with status 2 on a user
    error (bad flag values, missing or corrupt files, numerical faults)."""
    def wrapped(argv):
        if len(argv) > 1:
            raise app.UsageError(f'Unexpected arguments {argv[1:]}; all settings are --flags.')
        enable_compilation_cache(flags.FLAGS.compilation_cache)
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(2)
    app.run(wrapped)
