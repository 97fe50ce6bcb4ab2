"""Every command-line flag of mct_jax, defined once here, and what the commands build from them.

This module and the rest of :mod:`mct_jax.cli` are the only code that reads ``FLAGS``; the
library takes plain values. All entry points (``python -m mct_jax.expert``,
``mct_jax.distill``, ``mct_jax.evaluate``) import it, so one preset flagfile
(``experiments/*.cfg``) serves every command and a flag means the same thing everywhere. The
distillation flags are the fields of :class:`mct_jax.distill.Settings`, defined from their
type, default, choices and help (:mod:`mct_jax.distill.settings`); they keep the reference
MTT code's names (``--ipc --syn_steps --expert_epochs ...``). ``docs/flags.md`` lists them all.
"""

from __future__ import annotations

import os
import typing

from absl import flags, logging

from mct_jax import data, distill, evaluate, expert_store, models, monitor, trajectory

FLAGS = flags.FLAGS

flags.DEFINE_enum('dataset', 'digits', data.DATASETS,
                  'Dataset. "digits" (scikit-learn 8x8 digits) works offline anywhere; '
                  'imagenette ... imageyellow are MTT\'s 10-class ImageNet subsets at 128 px; '
                  'imagenet64 is ImageNet-1K at 64 px (TESLA).')
flags.DEFINE_enum('data_source', None, data.SOURCES,
                  'Where images come from: tfds (download on first use), npz (train.npz/'
                  'test.npz in --data_dir), folder (the official release: tiny-imagenet-200, '
                  'an ImageNet folder in the ILSVRC layout, the downsampled ImageNet npz '
                  'files), prepared (written by python -m mct_jax.prepare), sklearn. '
                  'Default: tfds for CIFAR, folder for Tiny ImageNet and ImageNet, sklearn '
                  'for digits.')
flags.DEFINE_string('data_dir', None, 'Folder of the data source (TFDS data_dir, npz folder, '
                    'release folder, or prepared folder).')
flags.DEFINE_string('source_path', None, 'python -m mct_jax.prepare: the downloaded files to '
                    'convert (cifar-10-python.tar.gz, cifar-100-python.tar.gz, '
                    'tiny-imagenet-200.zip, an ImageNet folder, the downsampled ImageNet npz '
                    'files, or their extracted folders); --data_dir is the folder it writes.')
flags.DEFINE_string('data_cache', None, 'Where the folder source keeps the images it decodes '
                    '(once, as memory-mapped uint8 arrays). Default ~/.cache/mct_jax/data, or '
                    '$MCT_JAX_DATA_CACHE.')
flags.DEFINE_integer('train_images_per_class', None,
                     'Keep only the first K training images of each class (small runs).')
flags.DEFINE_integer('val_images_per_class', 0,
                     'Hold out the last V training images of each class as a validation split '
                     'before anything else sees them (experts, synthetic initialisation, '
                     'preprocessing); distillation then chooses best.npz by validation '
                     'accuracy and only reports the test accuracy. 0: no split, best.npz is '
                     'chosen on the test set as in the reference code.')
flags.DEFINE_boolean('zca', False, 'ZCA-whiten images (fit on training images, eps 0.1).')
flags.DEFINE_string('model', 'convnet', "The network of the experts and the student: convnet "
                    '(the ConvNet of --width, --depth and --norm) or a Flax module by import '
                    'path, package.module:Name (docs/usage.md). Distill and evaluate take it '
                    'from the experts.')
flags.DEFINE_integer('width', 128, 'ConvNet channels per block.')
flags.DEFINE_integer('depth', 3, 'ConvNet blocks (3 for 32 px, 4 for Tiny ImageNet).')
flags.DEFINE_enum('norm', 'instancenorm', models.NORMS, 'ConvNet normalisation.')
flags.DEFINE_integer('seed', 0, 'Random seed; the same seed gives the same result.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host runs: host:port of process 0 '
                    '(jax.distributed); with --num_processes and --process_id. Unset: one '
                    'process, unless --distributed.')
flags.DEFINE_integer('num_processes', None, 'Multi-host runs: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host runs: this process (0 .. num_processes-1).')
flags.DEFINE_boolean('distributed', False, 'Call jax.distributed.initialize() and let JAX read '
                     'the cluster from its environment (SLURM, Open MPI, ...) instead of the '
                     'three flags above.')
flags.DEFINE_enum('progress', 'auto', ['auto', 'bar', 'log', 'none'],
                 'Progress display: a bar with rate and ETA on a terminal (auto), log lines '
                 'about every 5 percent of the work otherwise; or force one.')
flags.DEFINE_boolean('tensorboard', True, 'Also write TensorBoard event files into the output '
                     'folder (tensorboard --logdir OUT_DIR); metrics.jsonl is always written.')
flags.DEFINE_boolean('pictures', True, 'Write PNGs: synthetic image grids and curves '
                     '(distillation), beta curves and accuracy per epoch (experts).')
flags.DEFINE_boolean('log_prefix', False, "Prefix log lines with absl's level, date, thread and "
                     'source line (default: the time only).')
flags.DEFINE_string('compilation_cache', os.environ.get('MCT_JAX_CACHE', '~/.cache/mct_jax/xla'),
                    'Folder of the persistent XLA compilation cache (a second run of a command '
                    'starts without recompiling); empty to disable. Env: MCT_JAX_CACHE.')
flags.DEFINE_string('expert_dir', None,
                    'Folder where experts are written and read. Default runs/<dataset>/experts.')

# ---- expert training (python -m mct_jax.expert)
flags.DEFINE_integer('num_experts', 2, 'Number of experts to train (the reference uses 100).')
flags.DEFINE_integer('train_epochs', 20, 'Epochs K per expert (the reference uses 50).')
flags.DEFINE_float('lr_teacher', 0.01, 'Expert SGD learning rate; also the initial learned '
                   'student learning rate of distillation.')
flags.DEFINE_integer('batch_train', 256, 'Expert minibatch size.')
flags.DEFINE_list('anchors', None, 'Anchor epochs to store, increasing from 0 to K '
                  '(default 0,K: the plain MCT).')
flags.DEFINE_boolean('smooth_anchors', False, "MCT authors' anchor smoothing (interior anchor "
                     'a -> mean of epochs a-1 and a+1; last -> mean of K-1 and K).')
flags.DEFINE_string('import_buffers', None, "Instead of training, import the field's PyTorch "
                    'expert buffers (MTT buffer.py: a folder of replay_buffer_N.pt) as experts '
                    'in --expert_dir; the ConvNet is read off the tensor shapes and checked '
                    'against the flags. Needs PyTorch.')
flags.DEFINE_boolean('save_full_trajectory', False,
                     "Also store all K+1 snapshots (the MTT baseline's format).")
flags.DEFINE_float('expert_checkpoint_seconds', 600, 'Within an epoch, save the running expert '
                   'this often, so that a killed run resumes mid-epoch (it is always saved '
                   'after each epoch); 0: after every group of 16 batches.')
flags.DEFINE_integer('microbatch', None, 'Images per gradient pass of expert training; the '
                     'batch gradient is the weighted mean of the passes (the same gradient up '
                     'to rounding, a fraction of the memory). 0: the whole batch in one pass. '
                     'Default: 16 on CPU, where it is also faster, the whole batch on other '
                     'backends (docs/benchmarks.md#gradient-passes).')

# ---- distillation (python -m mct_jax.distill): every field of distill.Settings is a flag of
# the same name, with the field's type, default, choices and help (mct_jax.distill.settings).
_SHARED = ('lr_teacher', 'seed')            # defined above, with expert training
_FLAG_DEFAULTS = {'start_sampling': None}   # unset: continuous for mct, integer for mtt
_DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string}


def _define_setting(name: str, hints: dict) -> None:
    default = _FLAG_DEFAULTS.get(name, distill.Settings._field_defaults[name])
    if name in distill.CHOICES:
        flags.DEFINE_enum(name, default, list(distill.CHOICES[name]), distill.HELP[name])
        return
    hint = hints[name]
    kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    _DEFINE[kind](name, default, distill.HELP[name])


_hints = typing.get_type_hints(distill.Settings)
for _name in distill.Settings._fields:
    if _name not in _SHARED:
        _define_setting(_name, _hints)
flags.DEFINE_float('lr_syn_init', None, 'Initial learned student lr (the reference syn_lr '
                   'init); default --lr_teacher. Lets one flagfile train experts at lr_teacher '
                   'and start the learned lr elsewhere.')
flags.DEFINE_string('out_dir', None, 'Results folder. Default runs/<dataset>/<method>_ipc<ipc>.')

# ---- evaluation (python -m mct_jax.evaluate)
flags.DEFINE_string('synthetic', None, 'Folder of a distillation run (or an .npz) to evaluate.')
flags.DEFINE_enum('baseline', None, ['random', 'full'], 'Evaluate a baseline instead: random '
                  'real images (--ipc per class) or the full training set.')
flags.DEFINE_string('export', None, 'Instead of evaluating --synthetic, write it for PyTorch '
                    'evaluators into this folder: images.pt (NCHW, in its space), labels.pt, '
                    'lr.pt, preprocessing.json (and zca.pt). Needs PyTorch.')
flags.DEFINE_enum('export_names', 'mct_jax', ['mct_jax', 'reference'], 'File names of '
                  '--export: mct_jax (images.pt, labels.pt, lr.pt) or reference (the MTT '
                  "family's images_best.pt, labels_best.pt, and DATM's lr_best.pt).")
flags.DEFINE_list('models', None, 'Cross-architecture evaluation of --synthetic: these '
                  "architectures (convnet = the set's own ConvNet, "
                  + ', '.join(models.ARCHITECTURES[1:]) + ', or a Flax module as '
                  'package.module:Name), --num_eval networks each; writes a table, JSON and '
                  'a bar chart to --report_dir.')
flags.DEFINE_list('eval_lr', None, 'Learning rate of the evaluation networks: unset = the '
                  "set's learned lr (the reference); one number for every architecture; or "
                  'name=lr pairs (e.g. alexnet=0.01,vgg11=0.01), the others learned.')
flags.DEFINE_boolean('report', False, "Also train the baselines of each architecture (random "
                     "real images at the set's ipc and the full training set, same recipe; "
                     'cached in --baseline_cache) and report the IOR, HLR and LRS scores '
                     '(DD-Ranking).')
flags.DEFINE_float('lrs_weight', 0.5, 'w in LRS: a = w IOR - (1 - w) HLR (DD-Ranking: 0.5).')
flags.DEFINE_integer('full_data_epochs', 0, 'Epochs of the full-training-set baseline of '
                     '--report (0: --eval_epochs); its lr is --lr_teacher.')
flags.DEFINE_enum('protocol', 'mct_jax', ['mct_jax', 'ddranking'],
                  'How --report takes the accuracies behind its scores. mct_jax: each '
                  "network's last epoch, random real images at the set's lr, full data at "
                  '--lr_teacher with the same recipe. ddranking: the ddranking package\'s '
                  'choices (best test accuracy every 10 epochs, or 20 for soft labels; the '
                  'random baseline\'s lr searched over 0.001-0.1 on the test set; full data at '
                  'lr 0.01 x0.1 every 100 epochs without augmentation; ConvNet width 128).')
flags.DEFINE_string('report_dir', None, 'Where --models / --report write '
                    'cross_architecture.{md,json,png}. Default: SYNTHETIC/evaluation.')
flags.DEFINE_string('baseline_cache', None, 'Folder of cached baseline accuracies (keyed by '
                    'dataset, data source, subset, architecture, recipe, ipc, seed). Default: '
                    '~/.cache/mct_jax/baselines/<dataset> (env MCT_JAX_BASELINES for the '
                    'root).')

ACT = 'relu'
POOL = 'avgpool'
# What distillation and evaluation take from the experts' (or the synthetic set's) settings
# when the command line does not give it.
INHERITED = ('dataset', 'data_source', 'data_dir', 'train_images_per_class',
             'val_images_per_class', 'zca', 'model', 'width', 'depth', 'norm')
# Data settings added after some folders and sets were written, with their value then.
DATA_DEFAULTS = expert_store.CONFIG_DEFAULTS


def expert_dir() -> str:
    """``--expert_dir``, or its default ``runs/<dataset>/experts``."""
    return FLAGS.expert_dir or os.path.join('runs', FLAGS.dataset, 'experts')


def out_dir(method: str, ipc: int) -> str:
    """``--out_dir``, or its default ``runs/<dataset>/<method>_ipc<ipc>``."""
    return FLAGS.out_dir or os.path.join('runs', FLAGS.dataset, f'{method}_ipc{ipc}')


def load_data() -> data.Dataset:
    """Loads the dataset the shared flags describe."""
    return data.load_dataset(FLAGS.dataset, FLAGS.data_source, FLAGS.data_dir,
                             FLAGS.train_images_per_class, FLAGS.zca,
                             val_images_per_class=FLAGS.val_images_per_class,
                             cache_dir=FLAGS.data_cache)


def model_settings(ds: data.Dataset) -> dict:
    """The architecture as a JSON-able dict (stored with experts and synthetic sets;
    :func:`mct_jax.models.from_config` builds it)."""
    return {'image_shape': list(ds.image_shape), 'num_classes': ds.num_classes,
            'model': FLAGS.model, 'width': FLAGS.width, 'depth': FLAGS.depth,
            'norm': FLAGS.norm, 'act': ACT, 'pool': POOL}


def outputs() -> monitor.Outputs:
    """``--progress``, ``--tensorboard`` and ``--pictures``."""
    return monitor.Outputs(FLAGS.progress, FLAGS.tensorboard, FLAGS.pictures)


def data_settings() -> dict:
    """The data choices that change what a network is trained on."""
    return {'dataset': FLAGS.dataset, 'train_images_per_class': FLAGS.train_images_per_class,
            'zca': FLAGS.zca, 'val_images_per_class': FLAGS.val_images_per_class}


def data_location() -> dict:
    """Where the data was read from (stored, never compared: see
    :data:`mct_jax.expert_store.LOCATION_KEYS`)."""
    data_dir = FLAGS.data_dir and os.path.abspath(os.path.expanduser(FLAGS.data_dir))
    return {'data_source': FLAGS.data_source, 'data_dir': data_dir}


def inherit(stored: dict, where: str) -> list[str]:
    """Takes each of :data:`INHERITED` from ``stored`` settings when the command line (or a
    flagfile) does not set it, and logs what it took. A flag that is set keeps its value, so
    a contradiction is still reported by the checks that compare them. Returns the names
    taken."""
    taken = []
    for name in INHERITED:
        if name in stored and not FLAGS[name].present and FLAGS[name].value != stored[name]:
            FLAGS[name].value = stored[name]
            taken.append(name)
    if taken:
        logging.info('Using %s from %s.',
                     ', '.join(f'--{n}={FLAGS[n].value}' for n in taken), where)
    return taken


def inherit_from_set(path: str) -> None:
    """Settings the command line leaves open, from a distilled set at ``path`` and from its
    experts' config (a missing or broken set is left to the validation to report)."""
    try:
        settings = evaluate.load_synthetic(path)['settings']
        inherit(settings, path)
        experts = settings.get('expert_dir')
        if experts:
            inherit(expert_store.read_config(experts),
                    os.path.join(experts, expert_store.CONFIG_FILE))
    except Exception:   # noqa: BLE001 -- reported by cli.validate with its fix
        pass


def inherit_from_buffers(folder: str, setup) -> list[str]:
    """Takes the network, the epochs, the dataset and the ZCA choice of the buffers in
    ``folder`` (:func:`mct_jax.interop.read_setup`) where the command line leaves them open,
    and says what it took or assumed. Returns the problems: a flag that contradicts what the
    folder's name says."""
    read = {'width': setup.model.width, 'depth': setup.model.depth,
            'norm': setup.model.norm, 'train_epochs': setup.epochs}
    told = {k: v for k, v in (('dataset', setup.named.dataset), ('zca', setup.named.zca))
            if v is not None}
    problems = [f'--{k}={FLAGS[k].value}, but {folder} holds buffers of {v!r} (buffer.py '
                f'writes <dataset>[_NO_ZCA]/<model>); use --{k}={v} or the buffers of '
                f'that setting.' for k, v in told.items()
                if FLAGS[k].present and FLAGS[k].value != v]
    if problems:
        return problems
    read.update(told)
    taken = [name for name in read if not FLAGS[name].present]
    for name in taken:
        FLAGS[name].value = read[name]
    if taken:
        logging.info('Read from %s: %s.', folder if setup.named.model else setup.files[0],
                     ', '.join(f'--{n}={FLAGS[n].value}' for n in taken))
    if setup.named.model is None:
        logging.info('%s is not named as buffer.py names its folders (<dataset>[_NO_ZCA]/'
                     'ConvNet...): assumed the instance-norm ReLU ConvNet with average pooling '
                     'that the shapes describe, and the data of --dataset=%s with --zca=%s.',
                     folder, FLAGS.dataset, FLAGS.zca)
    if FLAGS.train_images_per_class is not None:
        logging.warning('--train_images_per_class=%d: recorded as what the experts were '
                        'trained on; buffer.py trains on every training image.',
                        FLAGS.train_images_per_class)
    return []


def inherit_from_experts() -> list[str]:
    """:func:`inherit` from ``--expert_dir``'s ``config.json``, if it has one (an unreadable
    one is left to the checks, which report it)."""
    folder = expert_dir()
    try:
        stored = expert_store.read_config(folder)
    except Exception:   # noqa: BLE001 -- reported by validate with its fix
        return []
    return inherit(stored, os.path.join(folder, expert_store.CONFIG_FILE))


# ---- expert training

def anchors() -> tuple[int, ...]:
    """``--anchors`` checked against ``--train_epochs`` (default ``0,K``)."""
    k = FLAGS.train_epochs
    raw = FLAGS.anchors or ['0', str(k)]
    try:
        epochs = [int(a) for a in raw]
    except ValueError:
        raise ValueError(f'--anchors={",".join(raw)} must be integers, e.g. --anchors=0,{k}.')
    return trajectory.check_anchor_epochs(epochs, k)


def training_settings() -> dict:
    """The expert-training flags stored in an expert folder's config (anchors aside)."""
    return dict(train_epochs=FLAGS.train_epochs, lr_teacher=FLAGS.lr_teacher,
                batch_train=FLAGS.batch_train, smooth_anchors=FLAGS.smooth_anchors,
                save_full_trajectory=FLAGS.save_full_trajectory, seed=FLAGS.seed)


def expert_config(ds: data.Dataset) -> dict:
    """Everything that must agree between runs writing into one expert folder, and where
    the data came from."""
    return dict(model_settings(ds), **data_settings(), **training_settings(),
                anchors=list(anchors()), **data_location())


# ---- distillation

def distill_settings() -> distill.Settings:
    """The distillation hyperparameters from the flags."""
    sampling = FLAGS.start_sampling or ('continuous' if FLAGS.method == 'mct' else 'integer')
    fields = {f: getattr(FLAGS, f) for f in distill.Settings._fields if f != 'start_sampling'}
    if FLAGS.lr_syn_init is not None:
        fields['lr_teacher'] = FLAGS.lr_syn_init
    return distill.Settings(**fields, start_sampling=sampling)


# ---- evaluation

def eval_lrs() -> dict:
    """``--eval_lr`` as {architecture: lr}, '*' for every architecture; {} means the learned
    lr. Raises ``ValueError`` naming the entry that does not parse."""
    out = {}
    for item in FLAGS.eval_lr or []:
        name, _, value = item.rpartition('=')
        try:
            lr = float(value)
        except ValueError:
            raise ValueError(f'--eval_lr: {item!r} is neither a number nor name=number '
                             '(e.g. --eval_lr=0.01 or --eval_lr=alexnet=0.01).') from None
        if not lr > 0:
            raise ValueError(f'--eval_lr: {item!r} must be positive.')
        out[models.canonical_name(name) if name else '*'] = lr
    return out


def report_dir() -> str:
    """``--report_dir``, or ``evaluation/`` in the run folder of ``--synthetic``."""
    if FLAGS.report_dir:
        return FLAGS.report_dir
    run = FLAGS.synthetic if os.path.isdir(FLAGS.synthetic) else os.path.dirname(FLAGS.synthetic)
    return os.path.join(run, 'evaluation')


def baseline_cache() -> str:
    """``--baseline_cache``, or ``<MCT_JAX_BASELINES or ~/.cache/mct_jax/baselines>/
    <dataset>``: outside the working directory, shared by every run of the user."""
    root = os.environ.get('MCT_JAX_BASELINES', '~/.cache/mct_jax/baselines')
    return FLAGS.baseline_cache or os.path.join(os.path.expanduser(root), FLAGS.dataset)


# ---- documentation

_SECTIONS = {'dataset': 'shared', 'num_experts': 'expert training (python -m mct_jax.expert)',
             'method': 'distillation (python -m mct_jax.distill)',
             'synthetic': 'evaluation (python -m mct_jax.evaluate)'}


def glossary() -> str:
    """``docs/flags.md``: every flag of this module with its default and help, in order of
    definition (``tests/test_cli.py`` checks that the file equals this)."""
    lines = ['# Flags', '',
             'Every command accepts every flag (defined once, in `mct_jax/cli/flags.py`; the '
             'distillation flags from `mct_jax/distill/settings.py`); a flag '
             'a command does not use is ignored by it. `python -m mct_jax.distill --helpfull` '
             'prints the same. This page is generated: `python -c "from mct_jax.cli import '
             'flags; print(flags.glossary(), end=\'\')" > docs/flags.md`.', '',
             '| flag | default | meaning |', '|---|---|---|']
    for f in FLAGS.flags_by_module_dict()[__name__]:
        if f.name in _SECTIONS:
            lines.append(f'| **{_SECTIONS[f.name]}** | | |')
        default = f.default
        if isinstance(default, (list, tuple)):
            default = ','.join(map(str, default))
        default = '' if default is None else default
        lines.append(f'| `--{f.name}` | {default} | {f.help.replace("|", "/")} |')
    return '\n'.join(lines) + '\n'
