"""Running an entry point: logging for the user, readable errors instead of tracebacks."""

from __future__ import annotations

import logging as py_logging
import os
import sys

import jax
from absl import app, logging

from mct_jax import checkpoint, data
from mct_jax.cli import flags as cli_flags

# Errors that describe a problem with the user's settings or files; their messages name the
# problem and the fix, so a traceback would only hide them.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
               ImportError, data.DataError, checkpoint.CheckpointError, FloatingPointError)

# Loggers whose INFO lines describe the machine rather than the user's run: JAX reporting
# the backends it looked for and did not find (the TPU probe), matplotlib building its font
# cache.
_QUIET_LOGGERS = ('jax._src.xla_bridge', 'matplotlib')


class _PlainFormatter(py_logging.Formatter):
    """``[HH:MM:SS] message``, with ``warning:`` / ``error:`` before the message when it is
    not an INFO line."""

    def format(self, record):
        message = record.getMessage()
        if record.levelno >= py_logging.WARNING:
            message = f'{record.levelname.lower()}: {message}'
        return f'[{self.formatTime(record, "%H:%M:%S")}] {message}'


def setup_logging(prefix: bool) -> None:
    """Log lines about the user's run only, as ``[time] message`` unless ``prefix`` asks for
    absl's own prefix (level, date, thread, source line)."""
    for name in _QUIET_LOGGERS:
        py_logging.getLogger(name).setLevel(py_logging.WARNING)
    if not prefix:
        logging.get_absl_handler().setFormatter(_PlainFormatter())


def enable_compilation_cache(path: str) -> None:
    """Persistent XLA compilation cache: a second run of the same command skips compiling."""
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


# XLA settings every command starts JAX with, each from a jaxlib that knows it (XLA stops a
# process whose XLA_FLAGS name a flag it does not know; this one is in jaxlib 0.5.3 and
# later, not in 0.5.0, and is set from 0.6 on). XLA:CPU's fusion emitters, its default in
# the jaxlib the project is tested with, take 0.1-0.2 GB more memory to compile our
# programs than the emitters before them, and the code they produce is no faster
# (docs/benchmarks.md, "Compiling"). Other backends ignore the flag.
XLA_FLAGS = (('--xla_cpu_use_fusion_emitters=false', (0, 6)),)


def _version(text: str) -> tuple:
    parts = []
    for part in text.split('.')[:3]:
        digits = ''.join(c for c in part if c.isdigit())   # '0rc1' -> 0
        parts.append(int(digits or 0))
    return tuple(parts)


def xla_flags(command_flags=(), jaxlib_version: str | None = None) -> list[str]:
    """The XLA flags a command starts with: every command's (:data:`XLA_FLAGS`) that this
    jaxlib knows, then the command's own ``command_flags``."""
    if jaxlib_version is None:
        import jaxlib.version
        jaxlib_version = jaxlib.version.__version__
    have = _version(jaxlib_version)
    return [flag for flag, since in XLA_FLAGS if have >= since] + list(command_flags)


def add_xla_flags(flags) -> None:
    """Adds XLA flags to ``XLA_FLAGS`` (before JAX starts its backends), each unless the
    user's environment sets that flag already."""
    current = os.environ.get('XLA_FLAGS', '')
    names = {f.split('=')[0] for f in current.split()}
    extra = [f for f in flags if f.split('=')[0] not in names]
    if extra:
        os.environ['XLA_FLAGS'] = ' '.join([current] + extra).strip()


def run(main, command_xla_flags=()) -> None:
    """``app.run(main)``, printing ``error: <message>`` and exiting with status 2 on a user
    error (bad flag values, missing or corrupt files, numerical faults).
    ``command_xla_flags`` are the command's own XLA settings, added to every command's
    (:func:`xla_flags`) unless the user's ``XLA_FLAGS`` set them."""
    add_xla_flags(xla_flags(command_xla_flags))

    def wrapped(argv):
        if len(argv) > 1:
            raise app.UsageError(f'Unexpected arguments {argv[1:]}; all settings are --flags.')
        f = cli_flags.FLAGS
        setup_logging(f.log_prefix)
        enable_compilation_cache(f.compilation_cache)
        try:
            init_distributed(f.coordinator_address, f.num_processes, f.process_id,
                             f.distributed)
            return main(argv)
        except USER_ERRORS as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(2)
    app.run(wrapped)
