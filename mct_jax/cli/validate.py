"""Checks every flag and file an entry point needs before any data is loaded or compiled.

Each check returns a list of problems, each naming the problem and the fix, so a user sees
all of them at once instead of one per attempt. :func:`raise_if_any` turns them into one
``ValueError`` (printed as ``error: ...`` with exit status 2 by :func:`mct_jax.cli.run`).
"""

from __future__ import annotations

import os
from pathlib import Path

from absl import flags

from mct_jax import checkpoint, data, distill, expert, expert_store, models, rules
from mct_jax.models import flax_module
from mct_jax.cli import flags as cli_flags
from mct_jax.evaluate import ranking

FLAGS = flags.FLAGS


class ValidationError(ValueError):
    """One or more problems with the settings or files, all listed in the message."""


def raise_if_any(problems: list[str], what: str) -> None:
    """Raises one :class:`ValidationError` listing every problem, if there are any."""
    if problems:
        n = len(problems)
        raise ValidationError(f'{n} problem{"s" if n > 1 else ""} with the {what} settings '
                              '(nothing was loaded or changed):\n  - ' + '\n  - '.join(problems))


def writable_problem(path: str, flag: str) -> str | None:
    """None if ``path`` (a folder, existing or to be created) can be written."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        return f'--{flag}={path} is a file, not a folder; choose a folder path.'
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        return (f'--{flag}={path} cannot be written ({probe} is not writable); choose a '
                'folder you can write to.')
    return None


def data_problems() -> list[str]:
    """The data flags: source valid for the dataset, folders and files present."""
    problems = []
    name, source, data_dir = FLAGS.dataset, FLAGS.data_source, FLAGS.data_dir
    try:
        source = data.check_name_source(name, source)
    except data.DataError as e:
        return [str(e)]
    if FLAGS.train_images_per_class is not None and FLAGS.train_images_per_class < 1:
        problems.append(f'--train_images_per_class={FLAGS.train_images_per_class} must be at '
                        'least 1 (or leave it unset for all training images).')
    if FLAGS.val_images_per_class < 0:
        problems.append(f'--val_images_per_class={FLAGS.val_images_per_class} must be >= 0 '
                        '(0: no validation split).')
    if source == 'npz':
        if data_dir is None:
            problems.append("--data_source=npz needs --data_dir: the folder holding train.npz "
                            'and test.npz.')
        elif not os.path.isdir(os.path.expanduser(data_dir)):
            problems.append(f'--data_dir={data_dir} does not exist; it should hold train.npz '
                            'and test.npz.')
        else:
            missing = [f for f in ('train.npz', 'test.npz')
                       if not os.path.isfile(os.path.join(os.path.expanduser(data_dir), f))]
            if missing:
                problems.append(f'--data_dir={data_dir} has no {" or ".join(missing)}; write '
                                'them with np.savez(file, x=images [N, H, W, C], y=labels [N]).')
    elif source in ('folder', 'prepared'):
        try:
            data.check_location(name, source, data_dir)
        except data.DataError as e:
            problems.append(str(e))
    if FLAGS.zca and data.IMAGE_SIZE[name] ** 2 * data.CHANNELS[name] > data.zca.MAX_FEATURES:
        problems.append(f'--zca on {name} ({data.IMAGE_SIZE[name]}x{data.IMAGE_SIZE[name]} '
                        'images) would need a covariance matrix too large to fit; drop --zca '
                        '(the reference whitens only the 32x32 datasets).')
    return problems


def module_problem(path: str, flag: str) -> str | None:
    """Why the Flax module ``path`` (package.module:Name) cannot be a network of
    ``--dataset``'s images, or None: it must import, build, and give one logit per class
    (:func:`mct_jax.models.flax_module.check_outputs`, on shapes)."""
    size, classes = data.IMAGE_SIZE[FLAGS.dataset], data.NUM_CLASSES[FLAGS.dataset]
    shape = (size, size, data.CHANNELS[FLAGS.dataset])
    try:
        flax_module.check_outputs(models.from_module_path(path, shape, classes), shape,
                                  classes, path)
    except Exception as e:   # noqa: BLE001 -- any failure to build is the user's to fix
        return f'{flag}: {e}'
    return None


def model_problems() -> list[str]:
    """The model flags: a Flax module that fits the data, or ConvNet sizes positive and not
    more poolings than the images allow."""
    if FLAGS.model != 'convnet':
        if ':' not in FLAGS.model:
            return [f'--model={FLAGS.model}: give convnet or a Flax module as '
                    'package.module:Name (for the reference architectures, evaluate '
                    '--models).']
        return [p for p in [module_problem(FLAGS.model, '--model')] if p]
    problems = []
    if FLAGS.width < 1:
        problems.append(f'--width={FLAGS.width} must be at least 1.')
    if FLAGS.depth < 1:
        problems.append(f'--depth={FLAGS.depth} must be at least 1.')
    size = data.IMAGE_SIZE[FLAGS.dataset]
    if FLAGS.depth >= 1 and size % (2 ** FLAGS.depth):
        problems.append(f'--depth={FLAGS.depth} halves the {size}x{size} images {FLAGS.depth} '
                        f'times; use at most depth {(size & -size).bit_length() - 1}.')
    return problems


def _flag_config() -> dict:
    """The data and model settings of an expert folder that the flags alone determine."""
    return dict(cli_flags.data_settings(), model=FLAGS.model, width=FLAGS.width,
                depth=FLAGS.depth, norm=FLAGS.norm)


def stored_config_problems(expert_dir: str, keys) -> list[str]:
    """Each of ``keys`` on which the flags contradict the expert folder's config."""
    path = os.path.join(expert_dir, expert_store.CONFIG_FILE)
    if not os.path.isfile(path):
        return []
    try:
        stored = checkpoint.read_json(path)
    except checkpoint.CheckpointError as e:
        return [str(e)]
    mine = dict(_flag_config(), **cli_flags.training_settings())
    return [f'{expert_dir} holds experts with {k}={expert_store.stored_value(stored, k)!r} '
            f'but the flags say {mine[k]!r}; use the same settings or another --expert_dir.'
            for k in keys if (k in stored or k in expert_store.CONFIG_DEFAULTS)
            and expert_store.stored_value(stored, k) != mine[k]]


def import_command_problems() -> list[str]:
    """``python -m mct_jax.expert --import_buffers``."""
    problems = expert_command_problems()
    if FLAGS.val_images_per_class:
        problems.append(f'--val_images_per_class={FLAGS.val_images_per_class}: imported experts '
                        'were trained on every training image, so none can be held out; '
                        'import with --val_images_per_class=0.')
    if FLAGS.model != 'convnet':
        problems.append(f'--model={FLAGS.model}: imported buffers are ConvNets; leave --model '
                        'out.')
    return problems


def expert_command_problems() -> list[str]:
    """``python -m mct_jax.expert``."""
    problems = data_problems() + model_problems()
    problems += rules.problems({r.field: FLAGS[r.field].value for r in expert.RULES},
                               expert.RULES)
    if FLAGS.train_epochs >= 1:
        try:
            cli_flags.anchors()
        except ValueError as e:
            problems.append(str(e))
    expert_dir = cli_flags.expert_dir()
    problems += [p for p in [writable_problem(expert_dir, 'expert_dir')] if p]
    problems += stored_config_problems(
        expert_dir, list(_flag_config()) + list(cli_flags.training_settings()))
    return problems


def distill_command_problems(num_devices: int) -> list[str]:
    """``python -m mct_jax.distill``: settings, experts and output folder."""
    problems = data_problems() + model_problems()
    s = cli_flags.distill_settings()
    expert_dir = cli_flags.expert_dir()
    num_epochs, config = None, None
    cfg_path = os.path.join(expert_dir, expert_store.CONFIG_FILE)
    if not os.path.isdir(expert_dir) or not os.path.isfile(cfg_path):
        problems.append(f'No experts in --expert_dir={expert_dir}: train them first with '
                        f'python -m mct_jax.expert and the same flags (or fix --expert_dir).')
    else:
        try:
            config = checkpoint.read_json(cfg_path)
            num_epochs = int(config['train_epochs'])
        except (checkpoint.CheckpointError, KeyError, TypeError, ValueError) as e:
            problems.append(f'{cfg_path} is unreadable ({e}); retrain the experts or fix '
                            '--expert_dir.')
        if config is not None:
            problems += stored_config_problems(expert_dir, list(_flag_config()))
            if not expert_store.list_experts(expert_dir):
                problems.append(f'{expert_dir} has no complete expert yet; finish '
                                'python -m mct_jax.expert first.')
            if ((s.method == 'mtt' or s.beta_mode == 'projected')
                    and not config.get('save_full_trajectory')):
                problems.append(f'--method={s.method} --beta_mode={s.beta_mode} needs full '
                                f'trajectories, but the experts in {expert_dir} were trained '
                                'without --save_full_trajectory; retrain them with it or use '
                                '--method=mct.')
    tipc = FLAGS.train_images_per_class
    counts = [tipc] * data.NUM_CLASSES[FLAGS.dataset] if tipc else None
    problems += distill.check_settings(s, num_epochs, counts, num_devices)
    if FLAGS.max_experts is not None and FLAGS.max_experts < 1:
        problems.append(f'--max_experts={FLAGS.max_experts} must be at least 1 (or unset).')
    out_dir = cli_flags.out_dir(s.method, s.ipc)
    problems += [p for p in [writable_problem(out_dir, 'out_dir')] if p]
    return problems


def evaluate_command_problems() -> list[str]:
    """``python -m mct_jax.evaluate``."""
    problems = data_problems() + model_problems()
    if (FLAGS.synthetic is None) == (FLAGS.baseline is None):
        problems.append('Give exactly one of --synthetic=OUT_DIR or --baseline=random|full.')
    if FLAGS.synthetic is not None:
        path = FLAGS.synthetic
        if os.path.isdir(path):
            path = os.path.join(path, 'best.npz')
        if not os.path.isfile(path):
            problems.append(f'No synthetic set at {path}: pass --synthetic=OUT_DIR of a '
                            'distillation run (it writes best.npz and synthetic.npz).')
    if FLAGS.baseline == 'random':
        if FLAGS.ipc < 1:
            problems.append(f'--ipc={FLAGS.ipc} must be at least 1.')
        tipc = FLAGS.train_images_per_class
        if tipc and FLAGS.ipc > tipc:
            problems.append(f'--ipc={FLAGS.ipc} is larger than the {tipc} training images per '
                            'class; lower --ipc or raise --train_images_per_class.')
    if FLAGS.num_eval < 1 or FLAGS.eval_epochs < 1:
        problems.append('--num_eval and --eval_epochs must be at least 1.')
    if FLAGS.export and FLAGS.synthetic is None:
        problems.append('--export writes a distilled set: give --synthetic=RUN.')
    if FLAGS.export:
        problems += [p for p in [writable_problem(FLAGS.export, 'export')] if p]
    if (FLAGS.models or FLAGS.report) and FLAGS.synthetic is None:
        problems.append('--models and --report evaluate a distilled set: give --synthetic=RUN '
                        '(for a baseline alone use --baseline).')
    for name in FLAGS.models or []:
        try:
            if ':' in name:     # a Flax module by import path: it must import and fit
                problems += [p for p in [module_problem(name, '--models')] if p]
            else:
                models.canonical_name(name)
        except ValueError as e:
            problems.append(f'--models: {e}')
    try:
        cli_flags.eval_lrs()
    except ValueError as e:
        problems.append(str(e))
    if not 0 <= FLAGS.lrs_weight <= 1:
        problems.append(f'--lrs_weight={FLAGS.lrs_weight} must lie in [0, 1] (DD-Ranking uses '
                        '0.5).')
    if FLAGS.full_data_epochs < 0:
        problems.append(f'--full_data_epochs={FLAGS.full_data_epochs} must be >= 0 (0: '
                        '--eval_epochs).')
    if FLAGS.protocol != 'mct_jax' and not FLAGS.report:
        problems.append(f'--protocol={FLAGS.protocol} chooses how --report scores a set: add '
                        '--report (or leave --protocol out).')
    if FLAGS.protocol == 'ddranking' and FLAGS.report:
        every = ranking.PROTOCOLS['ddranking'].test_every
        short = [f'--{f}={FLAGS[f].value}' for f in ('eval_epochs', 'full_data_epochs')
                 if 0 < FLAGS[f].value < every]
        if short:
            problems.append(f'{", ".join(short)}: the ddranking protocol tests every {every} '
                            f'epochs (every 20 for soft labels), so each network needs at '
                            f'least that many epochs; raise them.')
    return problems

