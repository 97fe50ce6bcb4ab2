"""DD-Ranking's side of the side-by-side benchmark: its hard-label LRS of an exported set.

Scores a distilled set written by ``python -m mct_jax.evaluate --synthetic=RUN --export=DIR``
with ``ddranking.metrics.LabelRobustScoreHard`` (DD-Ranking 0.2.0) and writes its scores, the
per-run lists and the per-run accuracies (synthetic set, random real images at their best lr,
full training data) to a JSON file. Runs in its own venv (PyTorch + ddranking; never mct_jax):

    python3 -m venv ddr-venv
    ddr-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 "numpy<2" "scipy<1.16"
    ddr-venv/bin/pip install --no-deps ddranking==0.2.0
    ddr-venv/bin/pip install kornia timm pandas tqdm "numpy<2" "scipy<1.16"

(The PyPI builds of torch/torchvision are CUDA builds with nvidia-* wheels, about 5.6 GB in
all; they run on a CPU. ``numpy<2`` and ``scipy<1.16`` are ddranking's own pins, repeated
so that pandas does not pull NumPy 2 in.) The real data is a torchvision CIFAR-10 folder
written by ``benchmarks/cifar_folder.py`` (use its ``--train_images_per_class`` equal to the
set's, so that the full-data and random baselines draw from the images the experts saw)::

    ddr-venv/bin/python benchmarks/ddranking_side.py --export_dir=DIR --cifar_dir=CIFAR \\
        --num_eval=5 --num_epochs=1000 --out_json=scores.json

What it sets: ``ConvNet-3`` (DD-Ranking's ConvNet: width 128, instance norm, depth 3; its
width is fixed, whatever width the set was distilled with), DSA with the reference
parameters of DD-Ranking's ``configs/Demo_LRS_Hard_Label.yaml`` (applied as DD-Ranking
does: one of scale, rotate, flip, colour, crop, cutout drawn per batch), SGD (momentum 0.9, weight
decay 5e-4) at the set's learned lr with a step decay (x0.1) every ``num_epochs // 2``
epochs, batches of 256, ``eval_full_data`` (the full-data accuracy is trained, not read
from DD-Ranking's cache, which has no CIFAR entry), on the CPU.

What it works around without editing the package:
* torchvision checks the official md5 sums of the CIFAR files even when they are present;
  ``torchvision.datasets.cifar.check_integrity`` is replaced by an existence check.
* ``compute_metrics`` appends each run's LRS twice, then its ``save_results`` fails to
  write a CSV of lists of unequal lengths; ``save_results`` is replaced by a recorder and
  the LRS list is de-duplicated here. (The returned LRS mean and std are unaffected: a list
  with every value twice has the same mean and population std.)
* ``set_seed()`` (no argument) seeds from the clock before each run; it is replaced so that
  run i is seeded with ``--seed + i`` (torch, NumPy, Python's random).
* The images are re-expressed in DD-Ranking's normalisation (mean 0.4914, 0.4822, 0.4465,
  std 0.2023, 0.1994, 0.2010) when the export's differs; a ZCA export is scored with
  ``use_zca`` (DD-Ranking fits kornia's ZCA on the folder's training images) and the fitted
  transform is compared with the export's ``zca.pt``. With ``use_zca`` its whitened training
  set keeps tensor labels, which its random-image draw cannot look up (KeyError); they are
  turned into ints.

What remains random or differs: the random real images are drawn by Python's ``random``
(seeded, but not the images mct_jax draws); float results repeat on the same machine, thread
count and library versions only. DD-Ranking reports the best test accuracy over its
validations, which happen every 10 epochs (``--num_epochs`` must be at least 10); it picks
the random baseline's lr (0.001 ... 0.1) by test accuracy; it trains the full data for
``--num_epochs`` epochs at lr 0.01 with its own step decay (every 100 epochs), without
augmentation; and it computes LRS from accuracies in percent, so LRS saturates (floor
-0.1565). The JSON also gives ``lrs_from_fractions`` per run (the paper's formula on
accuracies in [0, 1]), computed here from the same accuracies.
"""

import argparse
import inspect
import json
import math
import os
import tempfile
import time

import numpy as np
import torch

# Reference DSA parameters (DD-Ranking configs/Demo_LRS_Hard_Label.yaml).
DSA_PARAMS = {'flip': 0.5, 'rotate': 15.0, 'saturation': 2.0, 'brightness': 1.0,
              'contrast': 0.5, 'scale': 1.2, 'crop': 0.125, 'cutout': 0.5}
DATASETS = {'cifar10': 'CIFAR10'}
TEST_INTERVAL = 10   # LabelRobustScoreHard validates every 10 epochs


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--export_dir', required=True, help='folder written by evaluate --export')
    p.add_argument('--cifar_dir', required=True,
                   help='folder holding cifar-10-batches-py (benchmarks/cifar_folder.py)')
    p.add_argument('--num_eval', type=int, default=5, help='evaluation runs')
    p.add_argument('--num_epochs', type=int, default=1000, help='epochs per trained network')
    p.add_argument('--out_json', required=True, help='where to write the scores')
    p.add_argument('--seed', type=int, default=0, help='run i is seeded with seed + i')
    p.add_argument('--model_name', default='ConvNet-3')
    p.add_argument('--data_aug_func', default='dsa', choices=['dsa', 'none'],
                   help="the synthetic set's augmentation (none: no augmentation)")
    p.add_argument('--step_size', type=int, default=None, help='default num_epochs // 2')
    p.add_argument('--syn_batch_size', type=int, default=256)
    p.add_argument('--real_batch_size', type=int, default=256)
    p.add_argument('--eval_full_data', action=argparse.BooleanOptionalAction, default=True)
    p.add_argument('--lrs_lambda', type=float, default=0.5)
    p.add_argument('--device', default='cpu')
    p.add_argument('--num_workers', type=int, default=0)
    p.add_argument('--work_dir', default=None,
                   help="for the package's random-data files; default a temporary folder")
    a = p.parse_args()
    if a.num_epochs < TEST_INTERVAL:
        p.error(f'--num_epochs must be >= {TEST_INTERVAL}: DD-Ranking validates every '
                f'{TEST_INTERVAL} epochs and reports 0 when it never did.')
    return a


def _f(v):
    return None if v is None else float(v)


def lrs_from_fractions(syn, rnd, full, lam):
    """The paper's LRS on accuracies in [0, 1] (inputs in percent)."""
    a = lam * (syn - rnd) / 100 - (1 - lam) * (full - syn) / 100
    return (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def to_ddranking_space(images, prep, mean, std):
    """(images, converted): standardised images re-expressed with DD-Ranking's mean and std
    (the same pixels) when the export's differ."""
    m_e, s_e, m_d, s_d = (np.asarray(v, np.float64) for v in (prep['mean'], prep['std'], mean, std))
    if np.allclose(m_e, m_d, atol=1e-6) and np.allclose(s_e, s_d, atol=1e-6):
        return images, False
    view = lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
    return (images * view(s_e) + view(m_e) - view(m_d)) / view(s_d), True


def load_export(folder):
    with open(os.path.join(folder, 'preprocessing.json')) as f:
        prep = json.load(f)
    files = prep.get('files', {'images': 'images.pt', 'labels': 'labels.pt', 'lr': 'lr.pt'})
    load = lambda k: torch.load(os.path.join(folder, files[k]), map_location='cpu')
    return prep, load('images').float(), load('labels'), float(load('lr'))


def main():
    a = parse_args()
    t_start = time.time()
    prep, images, labels, lr = load_export(a.export_dir)
    if labels.ndim != 1:
        raise SystemExit('labels.pt holds soft labels [N, K]; this script scores hard-label '
                         'sets only (LabelRobustScoreHard).')
    if prep.get('dataset') not in DATASETS:
        raise SystemExit(f"dataset {prep.get('dataset')!r} is not supported here; "
                         f'only {sorted(DATASETS)}.')
    dataset = DATASETS[prep['dataset']]
    labels = labels.long()
    num_classes = len(prep.get('class_names', [])) or int(labels.max()) + 1
    ipc = int(prep.get('ipc') or len(labels) // num_classes)
    zca = prep.get('space') == 'zca'

    import torchvision
    import torchvision.datasets.cifar as tv_cifar
    tv_cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
    import kornia
    import ddranking
    import ddranking.metrics.hard_label as hl
    LRS = hl.LabelRobustScoreHard

    # --- recorders and patches (this process only) ---
    saved, got, runs, fitted = {}, {}, [], []
    stack = []

    def save_results(results, save_path):
        saved.update({k: [float(v) for v in vs] for k, vs in results.items()})

    def set_seed(seed=None):
        seed = a.seed + len(runs) if seed is None else seed
        runs.append({'run': len(runs), 'seed': seed, 'trainings': []})
        torch.manual_seed(seed)
        np.random.seed(seed)
        import random
        random.seed(seed)

    def get_dataset(*args, **kwargs):
        out = orig_get_dataset(*args, **kwargs)
        got.update(mean=list(out[2]), std=list(out[3]), train_images=len(out[5]),
                   test_images=len(out[6]))
        return out

    sig_helper = inspect.signature(LRS._compute_hard_label_metrics_helper)
    sig_inner = inspect.signature(LRS._compute_hard_label_metrics)

    def helper(self, *args, **kwargs):
        b = sig_helper.bind(self, *args, **kwargs).arguments
        kind = ('full' if b['mode'] == 'real' else
                'synthetic' if b['image_tensor'] is images else 'random')
        rec = {'kind': kind, 'search': []}
        stack.append(rec)
        t = time.time()
        try:
            acc, best_lr = orig_helper(self, *args, **kwargs)
        finally:
            stack.pop()
        rec.update(acc=_f(acc), lr=_f(best_lr), seconds=round(time.time() - t, 1))
        if kind == 'full':   # the package passes lr=None; it trains at its own config's lr
            rec['lr'] = hl.REAL_DATA_TRAINING_CONFIG[f'{dataset}-{a.model_name}']['lr']
        runs[-1]['trainings'].append(rec)
        return acc, best_lr

    def inner(self, *args, **kwargs):
        b = sig_inner.bind(self, *args, **kwargs).arguments
        acc = orig_inner(self, *args, **kwargs)
        if stack and stack[-1]['kind'] != 'full':
            stack[-1]['search'].append({'lr': _f(b['lr']), 'acc': _f(acc)})
        return acc

    orig_fit = kornia.enhance.ZCAWhitening.fit

    def fit(self, x):
        fitted.append(self)
        return orig_fit(self, x)

    orig_get_dataset = hl.get_dataset
    orig_helper = LRS._compute_hard_label_metrics_helper
    orig_inner = LRS._compute_hard_label_metrics
    hl.save_results, hl.set_seed, hl.get_dataset = save_results, set_seed, get_dataset
    LRS._compute_hard_label_metrics_helper, LRS._compute_hard_label_metrics = helper, inner
    kornia.enhance.ZCAWhitening.fit = fit

    tmp = None if a.work_dir else tempfile.TemporaryDirectory()
    work = a.work_dir or tmp.name
    step_size = a.step_size or max(1, a.num_epochs // 2)
    torch.manual_seed(a.seed)
    metric = LRS(
        dataset=dataset, real_data_path=a.cifar_dir, ipc=ipc, model_name=a.model_name,
        data_aug_func=a.data_aug_func,
        aug_params=dict(DSA_PARAMS) if a.data_aug_func == 'dsa' else {},
        optimizer='sgd', lr_scheduler='step', step_size=step_size, weight_decay=0.0005,
        momentum=0.9, use_zca=zca, num_eval=a.num_eval, im_size=(32, 32),
        num_epochs=a.num_epochs, real_batch_size=a.real_batch_size,
        syn_batch_size=a.syn_batch_size, num_workers=a.num_workers,
        save_path=os.path.join(work, 'obj_scores.csv'), device=a.device, dist=False,
        random_data_format='tensor', random_data_path=os.path.join(work, 'random_data'),
        eval_full_data=a.eval_full_data)

    notes = []
    norm = {'space': prep.get('space'), 'converted': False}
    if zca:
        # With use_zca its training set holds tensor labels, which get_random_data_tensors
        # looks up in a dict of ints (KeyError: tensor(0)): give it int labels.
        if torch.is_tensor(getattr(metric.dst_train, 'targets', None)):
            metric.dst_train.targets = metric.dst_train.targets.tolist()
        z = torch.load(os.path.join(a.export_dir, prep.get('zca_file', 'zca.pt')))
        fit_k = fitted[-1]
        t_ref, t_k = z['transform'].double(), fit_k.transform_matrix.double().cpu()
        norm['zca_transform_max_abs_diff'] = float((t_k - t_ref).abs().max())
        norm['zca_transform_max_abs'] = float(t_ref.abs().max())
        mean_k = fit_k.mean_vector.double().cpu().reshape(-1)
        norm['zca_mean_max_abs_diff'] = float((mean_k - z['mean'].double().reshape(-1)).abs().max())
    else:
        norm.update(export_mean=prep['mean'], export_std=prep['std'],
                    ddranking_mean=got['mean'], ddranking_std=got['std'])
        images, norm['converted'] = to_ddranking_space(images, prep, got['mean'], got['std'])
        if norm['converted']:
            notes.append("images re-expressed from the export's normalisation to DD-Ranking's")
    k = prep.get('train_images_per_class')
    expected = num_classes * k if k else 50000
    if got['train_images'] != expected:
        notes.append(f"the CIFAR folder has {got['train_images']} training images; the set was "
                     f'distilled from {expected}')
    width = (prep.get('network') or {}).get('width')
    if a.model_name.startswith('ConvNet') and width not in (None, 128):
        notes.append(f'the set was distilled with a width-{width} ConvNet; DD-Ranking\'s '
                     'ConvNet has width 128')
    if prep.get('learned') is False:
        notes.append('the export says learned=false: its images are the initial real ones')

    t_metrics = time.time()
    out = metric.compute_metrics(image_tensor=images, hard_labels=labels, syn_lr=lr,
                                 lrs_lambda=a.lrs_lambda)
    seconds = time.time() - t_metrics

    lrs_raw = saved.get('lrs', [])
    n = len(saved.get('hard_label_recovery', []))
    doubled = len(lrs_raw) == 2 * n and lrs_raw[0::2] == lrs_raw[1::2]
    lrs = lrs_raw[0::2] if doubled else lrs_raw
    per_run = []
    for i, r in enumerate(runs):
        by = {t['kind']: t for t in r['trainings']}
        row = {'run': i, 'seed': r['seed'],
               'synthetic_acc': by.get('synthetic', {}).get('acc'),
               'synthetic_lr': by.get('synthetic', {}).get('lr'),
               'random_acc': by.get('random', {}).get('acc'),
               'random_best_lr': by.get('random', {}).get('lr'),
               'random_search': by.get('random', {}).get('search'),
               'full_acc': by.get('full', {}).get('acc'),
               'hard_label_recovery': saved['hard_label_recovery'][i] if i < n else None,
               'improvement_over_random': saved['improvement_over_random'][i] if i < n else None,
               'lrs': lrs[i] if i < len(lrs) else None,
               'seconds': {t['kind']: t['seconds'] for t in r['trainings']}}
        if None not in (row['synthetic_acc'], row['random_acc'], row['full_acc']):
            row['lrs_from_fractions'] = lrs_from_fractions(
                row['synthetic_acc'], row['random_acc'], row['full_acc'], a.lrs_lambda)
        per_run.append(row)

    result = {
        'package': {'ddranking': getattr(ddranking, '__version__', '0.2.0'),
                    'torch': torch.__version__, 'torchvision': torchvision.__version__},
        'scores': {k: _f(v) for k, v in out.items()},
        'scores_units': 'as DD-Ranking returns them: HLR and IOR in accuracy percent; LRS '
                        'computed by it from accuracies in percent',
        'lists': {'hard_label_recovery': saved.get('hard_label_recovery'),
                  'improvement_over_random': saved.get('improvement_over_random'),
                  'lrs': lrs, 'lrs_as_returned': lrs_raw, 'lrs_was_doubled': doubled},
        'per_run': per_run,
        'lrs_from_fractions_mean': _f(np.mean([r['lrs_from_fractions'] for r in per_run]))
        if per_run and all('lrs_from_fractions' in r for r in per_run) else None,
        'settings': {**vars(a), 'step_size': step_size, 'dataset': dataset, 'ipc': ipc,
                     'syn_lr': lr, 'use_zca': zca, 'aug_params': DSA_PARAMS
                     if a.data_aug_func == 'dsa' else {}, 'num_images': len(labels),
                     'torch_threads': torch.get_num_threads(),
                     'cifar_train_images': got.get('train_images'),
                     'cifar_test_images': got.get('test_images')},
        'export': {k: prep.get(k) for k in ('dataset', 'ipc', 'method', 'learned', 'network',
                                            'train_images_per_class', 'space')},
        'normalisation': norm,
        'notes': notes,
        'seconds': {'compute_metrics': round(seconds, 1),
                    'total': round(time.time() - t_start, 1)},
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out_json)), exist_ok=True)
    with open(a.out_json, 'w') as f:
        json.dump(result, f, indent=1)
    print(json.dumps({'scores': result['scores'], 'out_json': a.out_json}))
    if tmp:
        tmp.cleanup()


if __name__ == '__main__':
    main()
