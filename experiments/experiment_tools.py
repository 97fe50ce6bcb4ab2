"""What the experiment scripts share: running the project's commands with a log, finding
real CIFAR-10, and the convergence measure of a run's evaluations."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def log(msg: str) -> None:
    print(f'[{time.strftime("%H:%M:%S")}] {msg}', flush=True)


def run_command(args: list[str], log_path: str) -> str:
    """Runs ``python args`` (``['-m', 'mct_jax.distill', ...]`` or a script and its
    arguments) from the repository root, its output going to ``log_path``. Returns the last
    line of standard output; raises with the log's tail on failure."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, 'w') as f:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=f, text=True)
        f.write(proc.stdout)
    if proc.returncode:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f'{" ".join(args[:3])} failed (exit {proc.returncode}); see '
                           f'{log_path}:\n{tail}')
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ''


def cifar10_flags(data_dir: str) -> list[str]:
    """``--data_source`` and ``--data_dir`` of real CIFAR-10 in ``data_dir``; exits naming
    the fix if it holds none."""
    from mct_jax.data import DataError, store
    folder = os.path.abspath(data_dir)
    try:
        return [f'--data_source={store.source_of(folder)}', f'--data_dir={folder}']
    except DataError as e:
        sys.exit(f'error: real CIFAR-10 is needed (--data_dir or $MCT_CIFAR10_DIR): {e}')


def curve_summary(iterations, means, window: float = 2.0) -> dict:
    """Best accuracy, convergence iteration and the spread after it.

    The convergence iteration is the first evaluated iteration from which every later
    evaluation is within ``window`` points of the run's best.
    """
    best = max(means)
    k = len(means) - 1
    while k > 0 and means[k - 1] >= best - window:
        k -= 1
    after = means[k:]
    return {'best': best, 'best_iteration': iterations[means.index(best)],
            'converged_at': iterations[k], 'spread_std': statistics.pstdev(after),
            'spread_range': max(after) - min(after), 'evals_after': len(after),
            'final': means[-1]}
