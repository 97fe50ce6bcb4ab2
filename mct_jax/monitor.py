"""Seeing what a run does as it runs: progress bars, TensorBoard events, the metrics file.

Nothing here needs an account or a service:

* :class:`Progress` draws a bar with rate, ETA and the key numbers when standard error is a
  terminal, and otherwise (logs, batch jobs, notebooks' captured output) logs a line about
  every 5 % of the work or every minute.
* :class:`EventWriter` writes TensorBoard event files (``tensorboard --logdir OUT_DIR``) with
  ``tensorboardX``, which needs no TensorFlow.
* :func:`read_metrics` reads a distillation's ``metrics.jsonl``, also while it is written.

Pictures (image grids and curves, as PNG files) are :mod:`mct_jax.pictures`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import NamedTuple

import numpy as np
from absl import logging


# ----------------------------------------------------------------------------- progress

class Outputs(NamedTuple):
    """What a run shows and writes besides its results, shared by expert training and
    distillation: the progress display ('auto', 'bar', 'log' or 'none', see
    :class:`Progress`), TensorBoard event files, and PNG pictures."""
    progress: str = 'auto'
    tensorboard: bool = True
    pictures: bool = True


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return '?'
    s = int(round(s))
    return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}' if s >= 3600 else f'{s // 60}:{s % 60:02d}'


def _fmt_stats(stats: dict) -> str:
    out = []
    for k, v in stats.items():
        out.append(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}')
    return '  '.join(out)


class Progress:
    """A progress bar over ``total`` units of work, ``initial`` of them already done.

    ``mode``: 'auto' (a bar on a terminal, log lines otherwise), 'bar', 'log' or 'none'.
    """

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = 'it',
                 mode: str = 'auto', leave: bool = True):
        if mode == 'auto':
            mode = 'bar' if sys.stderr.isatty() else 'log'
        self.mode, self.total, self.desc, self.unit = mode, total, desc, unit
        self.done, self.initial = initial, initial
        self.start = self.last_log = time.time()
        self.every = max(1, (total - initial) // 20)
        self.bar = None
        if mode == 'bar':
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                            dynamic_ncols=True, file=sys.stderr, leave=leave)

    def rate(self) -> float:
        elapsed = time.time() - self.start
        return (self.done - self.initial) / elapsed if elapsed > 0 else float('nan')

    def eta(self) -> float:
        r = self.rate()
        return (self.total - self.done) / r if r > 0 else float('nan')

    def update(self, n: int = 1, **stats) -> None:
        self.done += n
        if self.bar is not None:
            if stats:
                self.bar.set_postfix_str(_fmt_stats(stats), refresh=False)
            self.bar.update(n)
        elif self.mode == 'log':
            now = time.time()
            if ((self.done - self.initial) % self.every == 0 or self.done == self.total
                    or now - self.last_log > 60):
                self.last_log = now
                logging.info('%s %d/%d  %.3g %s/s  ETA %s  %s', self.desc, self.done,
                             self.total, self.rate(), self.unit, _fmt_seconds(self.eta()),
                             _fmt_stats(stats))

    def write(self, message: str) -> None:
        """A message that does not break the bar."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        elif self.mode != 'none':
            logging.info('%s', message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- TensorBoard

class Background:
    """One worker thread that runs jobs in order (pictures, event files), so slow imports
    and rendering stay off the training loop. :meth:`wait` re-raises a job's error."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.futures = []

    def submit(self, fn, *args, **kwargs):
        self.futures.append(self.pool.submit(fn, *args, **kwargs))
        done = [f for f in self.futures if f.done()]
        for f in done:   # surface errors early, keep the list short
            self.futures.remove(f)
            f.result()

    def wait(self):
        futures, self.futures = self.futures, []
        for f in futures:
            f.result()

    def close(self):
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)


class EventWriter:
    """TensorBoard scalars and images in ``log_dir``, written from a background thread.

    ``purge_step``: when a run resumes from a checkpoint at step s, events an earlier,
    interrupted process wrote at steps >= s are hidden by TensorBoard, so curves do not
    double back.
    """

    def __init__(self, log_dir: str, purge_step: int | None = None):
        self.background = Background()
        self.writer = None

        def open_writer():
            from tensorboardX import SummaryWriter   # about 1 s to import: off the main thread
            self.writer = SummaryWriter(log_dir, purge_step=purge_step or None, flush_secs=30)
        self.background.submit(open_writer)

    def scalars(self, step: int, values: dict) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}

        def write():
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        self.background.submit(write)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """``image``: [H, W, 3] uint8."""
        self.background.submit(lambda: self.writer.add_image(tag, image, step,
                                                             dataformats='HWC'))

    def flush(self) -> None:
        self.background.submit(lambda: self.writer.flush())

    def close(self) -> None:
        self.background.submit(lambda: self.writer.close())
        self.background.close()


# ----------------------------------------------------------------------------- metrics

def read_metrics(path: str) -> tuple[list, list]:
    """(evaluations, steps) from a distillation ``metrics.jsonl``."""
    evals, steps = [], []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    for n, line in enumerate(lines):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:   # being written by the run right now
                break
            raise
        (evals if 'eval' in r else steps).append(r)
    return evals, steps
