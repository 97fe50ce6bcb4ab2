"""The command layer: flags and what the commands build from them (:mod:`.flags`), their
checks (:mod:`.validate`) and the runner every entry point's ``__main__`` calls
(:func:`mct_jax.cli.app.run`).

Only this package and the ``__main__`` modules read ``FLAGS`` or set global JAX options; the
library below takes plain values, so a notebook or another program decides its own.
"""
