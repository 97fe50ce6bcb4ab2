"""Cross-architecture evaluation of a set and its report.

:func:`evaluate_models` trains the evaluation protocol's networks of several architectures
on one set; :func:`write_report` writes the Markdown table, the JSON and a bar chart. The
scores against baselines (IOR, HLR, LRS) are :mod:`mct_jax.evaluate.ranking`.
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mct_jax import checkpoint
from mct_jax.evaluate import make_evaluator, summarize


class Recipe(NamedTuple):
    """How evaluation networks are trained (``docs/method.md`` section 7)."""
    num_nets: int = 5
    epochs: int = 300
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    use_dsa: bool = True
    test_every: int = 0   # 0: each network's last epoch; k: its best over every k epochs
    lr_step: int = 0      # 0: lr x0.1 at half of the epochs; s: every s epochs


def evaluate_models(models: dict, images, labels, lrs: dict, eval_sets: dict, recipe: Recipe,
                    key, on_network: Callable | None = None, prep=None) -> dict:
    """Trains ``recipe.num_nets`` networks of each architecture on (images, labels).

    Args:
      models: name -> :class:`mct_jax.models.Model`.
      lrs: name -> learning rate of that architecture's networks.
      eval_sets: split name ('test', 'validation') -> (x, y), the images each network is
        tested on after training.
      key: network i of every architecture starts from ``network_keys(key, n)[i]``.
      on_network: ``on_network(name, i, {split: accuracy})`` after each network.
      prep: the preprocessing of raw (integer) images (:mod:`mct_jax.data.preprocess`).
    Returns:
      name -> ``{split: summary (mean, std, all, in percent), 'lr': ..., 'seconds': ...}``.
    """
    splits = list(eval_sets)
    sets = tuple((jax.device_put(x), jax.device_put(y)) for x, y in eval_sets.values())
    out = {}
    for name, model in models.items():
        evaluate = make_evaluator(model, **recipe._asdict())
        start = time.time()
        notify = None
        if on_network is not None:
            notify = lambda i, a, name=name: on_network(name, i, dict(zip(splits, a)))
        acc = np.asarray(evaluate(key, jax.device_put(images), jax.device_put(labels),
                                  jnp.float32(lrs[name]), sets, on_network=notify, prep=prep))
        out[name] = {split: summarize(acc[:, j]) for j, split in enumerate(splits)}
        out[name].update(lr=float(lrs[name]), seconds=time.time() - start)
    return out


def write_report(report: dict, folder: str, name: str = 'cross_architecture') -> str:
    """``NAME.md`` (one row per architecture: accuracy mean +- std per split, seconds, and
    the scores when present), ``NAME.json`` and ``NAME.png`` (bars with their std) in
    ``folder``. Returns the Markdown."""
    os.makedirs(folder, exist_ok=True)
    results = report['results']
    splits = [s for s in ('validation', 'test') if any(s in r for r in results.values())]
    has_scores = any('scores' in r for r in results.values())
    head = ['architecture'] + [f'{s} accuracy (%)' for s in splits] + ['lr', 'networks',
                                                                     'seconds']
    if has_scores:
        head += ['random real (%)', 'full data (%)', 'IOR', 'HLR', 'LRS']
    lines = [f'# {report.get("title", "Cross-architecture evaluation")}', '']
    for k in ('set', 'selected_on', 'recipe', 'protocol', 'note', 'full_data',
              'scores_note'):
        if k in report:
            lines.append(f'- {k.replace("_", " ")}: {report[k]}')
    lines += ['', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for arch, r in results.items():
        row = [arch] + [f'{r[s]["mean"]:.2f} +- {r[s]["std"]:.2f}' for s in splits]
        row += [f'{r["lr"]:.4g}', str(len(r[splits[-1]]['all'])), f'{r["seconds"]:.0f}']
        if has_scores:
            sc = r.get('scores')
            row += ([f'{r["random"]["mean"]:.2f}', f'{r["full"]["mean"]:.2f}']
                    + [f'{sc[k]:.2f} +- {sc[k + "_std"]:.2f}' if k + '_std' in sc
                       else f'{sc[k]:.2f}' for k in ('IOR', 'HLR', 'LRS')]
                    if sc else ['-'] * 5)
        lines.append('| ' + ' | '.join(row) + ' |')
    md = '\n'.join(lines) + '\n'
    with open(os.path.join(folder, f'{name}.md'), 'w') as f:
        f.write(md)
    checkpoint.write_json(os.path.join(folder, f'{name}.json'), report)
    _bar_chart(results, splits[-1], os.path.join(folder, f'{name}.png'),
               report.get('title', ''))
    return md


def _bar_chart(results: dict, split: str, png: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(results)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    x = np.arange(len(names))
    series = [('synthetic', lambda r: r[split])]
    if any('random' in r for r in results.values()):
        series += [('random real', lambda r: r.get('random')),
                   ('full data', lambda r: r.get('full'))]
    width = 0.8 / len(series)
    for j, (label, get) in enumerate(series):
        vals = [get(results[n]) for n in names]
        ax.bar(x + (j - (len(series) - 1) / 2) * width,
               [v['mean'] if v else 0 for v in vals], width,
               yerr=[v['std'] if v else 0 for v in vals], capsize=3, label=label)
    ax.set_xticks(x, names)
    ax.set(ylabel=f'{split} accuracy (%)', title=title)
    ax.grid(alpha=0.3, axis='y')
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = png + '.tmp.png'
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)
