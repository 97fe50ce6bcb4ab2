"""Running an entry point: absl flag parsing plus readable errors instead of tracebacks."""

from __future__ import annotations

import sys

from absl import app

from mct_jax import checkpoint, data

# Errors that describe a problem with the user's settings or files; their messages name the
# problem and the fix, so a traceback would only hide them.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
               data.DataError, checkpoint.CheckpointError, FloatingPointError)


def run(main) -> None:
    """``app.run(main)``, printing ``error: <message>`` and exiting with status 2 on a user
    error (bad flag values, missing or corrupt files, numerical faults)."""
    def wrapped(argv):
        if len(argv) > 1:
            raise app.UsageError(f'Unexpected arguments {argv[1:]}; all settings are --flags.')
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(2)
    app.run(wrapped)
