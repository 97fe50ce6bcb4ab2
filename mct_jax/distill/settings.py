"""The distillation settings in one place: :class:`Settings` (the reference MTT names), what
each one means (:data:`HELP`), the values a choice can take (:data:`CHOICES`) and the checks
of each on its own (:data:`RULES`, a table of :class:`mct_jax.rules.Rule`).

The library reads these, and the command line defines its distillation flags from them
(their defaults, types, choices and help), so a setting is written once.
:func:`mct_jax.distill.check_settings` adds the checks that relate settings to each other, to
the experts and to the data.
"""

from __future__ import annotations

from typing import NamedTuple

from mct_jax import labels as soft_labels
from mct_jax import rollout, rules
from mct_jax.rules import Rule


class Settings(NamedTuple):
    """Distillation hyperparameters (the reference MTT names; :data:`HELP` says what each
    means)."""
    method: str = 'mct'
    ipc: int = 10
    syn_steps: int = 20
    expert_epochs: float = 2.0
    max_start_epoch: float = 10.0
    batch_syn: int = 0
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01
    iterations: int = 200
    eval_every: int = 50
    num_eval: int = 5
    eval_epochs: int = 300
    remat: bool = False
    meta_grad: str = 'forward'
    residual_budget_gb: float = 4.0
    dsa: bool = True
    beta_mode: str = 'steps'
    start_sampling: str = 'continuous'
    max_experts: int | None = None
    on_fault: str = 'skip'
    num_samples: int = 1
    seed: int = 0
    # -- the toolbox around MCT (defaults: MTT's and MCT's reference behaviour)
    labels: str = 'hard'
    label_epoch: float | None = None
    label_expert: int = 0
    label_temperature: float = 1.0
    lr_labels: float = 2.0
    labels_momentum: float = 0.9
    min_start_epoch: float = 0.0
    max_start_epoch_final: float | None = None
    window_iterations: int = 0
    image_optimizer: str = 'sgd'
    lr_img_decay_every: int = 0
    lr_img_decay_rate: float = 0.5
    freeze_lr: bool = False
    image_init: str | None = None


# Settings added after runs were written, with the behaviour those runs had: a run folder
# without them resumes as if it had them.
TOOLBOX_DEFAULTS = {k: Settings._field_defaults[k] for k in Settings._fields
                    if Settings._fields.index(k) > Settings._fields.index('seed')}
IMAGE_INITS = ('real', 'noise', 'correct')
IMAGE_OPTIMIZERS = ('sgd', 'adam')

# The values of each setting that is a choice among names.
CHOICES = {
    'method': ('mct', 'mtt'),
    'meta_grad': rollout.METHODS,
    'beta_mode': ('steps', 'uniform', 'projected'),
    'start_sampling': ('continuous', 'integer'),
    'on_fault': ('skip', 'stop'),
    'labels': soft_labels.KINDS,
    'image_optimizer': IMAGE_OPTIMIZERS,
    'image_init': IMAGE_INITS,
}

# What each setting means; also the help of the command-line flag of the same name.
HELP = {
    'method': (
        'mct: continuous starts on convexified trajectories; mtt: integer starts on full '
        'trajectories.'),
    'ipc': 'Synthetic images per class.',
    'syn_steps': 'N: student SGD steps per iteration.',
    'expert_epochs': 'M: target = expert at start + M epochs (MCT allows fractions).',
    'max_start_epoch': (
        'Starts are drawn from [0, max_start_epoch] (MCT, real) or [0, max_start_epoch) (MTT, '
        'integer).'),
    'batch_syn': 'Synthetic images per student step (0: all of them).',
    'lr_img': 'Learning rate of the synthetic images (SGD, momentum 0.5).',
    'lr_lr': 'Learning rate of the learned student lr (SGD, momentum 0.5).',
    'iterations': 'Distillation iterations.',
    'eval_every': 'Evaluate, save and checkpoint every this many iterations.',
    'num_eval': 'Networks trained per evaluation.',
    'eval_epochs': 'Epochs per evaluation network (the reference uses 1000).',
    'remat': (
        'Recompute each student step in the backward pass: the same gradient with memory flat '
        'in N. Reverse: instead of keeping its activations; forward: instead of storing its '
        'residuals (see --residual_budget_gb).'),
    'meta_grad': (
        "How the meta-gradient is computed. forward = the exact gradient, each step's "
        'Hessian-vector products in forward mode through a custom VJP, memory bounded by '
        '--residual_budget_gb (fastest); reverse = the same gradient by jax.grad through the '
        'scan, as the reference; tesla = the constant-memory approximation of TESLA and the MCT '
        'release (not the exact gradient).'),
    'residual_budget_gb': (
        "Forward method: store each student step's residuals (the backward pass's cotangents, "
        'about a third of a first-block feature map per image), which is faster, while those of '
        'the N steps take at most this many GB per device; else recompute each step. 0: always '
        'recompute.'),
    'dsa': 'DSA augmentation in the student steps and evaluation.',
    'beta_mode': 'MCT betas: steps (eq. 9), uniform (t/K) or projected (one global beta).',
    'start_sampling': 'Start epochs: default continuous for mct, integer for mtt.',
    'max_experts': 'Use only the first this many experts.',
    'on_fault': (
        'On a non-finite loss or gradient, or a non-positive learned lr: skip that update, or '
        'stop the run.'),
    'num_samples': (
        '(expert, start) pairs per iteration, their rollouts run in parallel (vmap) and their '
        'losses averaged; 1 is the reference.'),
    'labels': (
        'Labels of the synthetic set: hard classes (MTT, MCT); teacher = fixed soft labels from '
        "an expert's logits (the MCT release, TESLA); learned = logits learned with the images, "
        'initialised from the experts, images drawn among those an expert classifies correctly '
        '(DATM).'),
    'label_epoch': (
        'Expert epoch whose parameters label (and choose correctly classified images). Default: '
        '--max_start_epoch for teacher labels (the MCT release), the last epoch for learned '
        'ones (DATM).'),
    'label_expert': (
        'The expert of teacher labels and of --image_init=correct (learned labels average every '
        'expert).'),
    'label_temperature': 'Teacher labels: softmax(logits / T).',
    'lr_labels': (
        "Learned labels: SGD learning rate of the label logits (DATM's lr_y: 2 for CIFAR-10 ipc "
        '10 and 50, 5 at ipc 1, 10 elsewhere).'),
    'labels_momentum': 'Learned labels: SGD momentum (DATM: 0.9).',
    'min_start_epoch': (
        "Starts are drawn at or above this epoch (DATM's difficulty-aligned window)."),
    'max_start_epoch_final': (
        "Grow the starts' upper bound linearly from --max_start_epoch to this over "
        '--window_iterations iterations (DATM); unset: a fixed window.'),
    'window_iterations': (
        "Iterations over which the upper bound grows to --max_start_epoch_final (DATM's "
        'expansion_end_epoch).'),
    'image_optimizer': (
        'Optimiser of the images: SGD with momentum 0.5 (the reference) or Adam (the MCT '
        "release's option)."),
    'lr_img_decay_every': (
        "Multiply --lr_img by --lr_img_decay_rate every this many updates (the MCT release's "
        '--lr_decay: 2000); 0: never.'),
    'lr_img_decay_rate': 'Factor of each --lr_img_decay_every step.',
    'freeze_lr': (
        "Keep the student lr at its initial value instead of learning it (the MCT release's "
        '--mute_syn_lr).'),
    'image_init': (
        "Initial images: random real ones of each class, N(0, 1) noise (the MCT release's "
        'pix_init=noise), or real ones the labelling expert classifies correctly. Default: '
        'correct with --labels=learned, else real.'),
    'lr_teacher': 'The initial learned student lr.',
    'seed': 'Random seed; the same seed gives the same result.',
}

# Every check of a distillation setting on its own; those that relate settings to each
# other, to the experts or to the data are in check_settings.
RULES = (
    Rule('ipc', lambda v: v >= 1, rules.AT_LEAST_1),
    Rule('syn_steps', lambda v: v >= 1, rules.AT_LEAST_1),
    Rule('num_samples', lambda v: v >= 1, rules.AT_LEAST_1),
    Rule('expert_epochs', lambda v: v > 0, rules.POSITIVE),
    Rule('residual_budget_gb', lambda v: v >= 0,
         'must be >= 0 (0: always recompute, as --remat)'),
    Rule('lr_img', lambda v: v > 0, rules.POSITIVE),
    Rule('lr_lr', lambda v: v > 0, rules.POSITIVE),
    Rule('lr_teacher', lambda v: v > 0, rules.POSITIVE),
    Rule('label_temperature', lambda v: v > 0, rules.POSITIVE),
    Rule('lr_labels', lambda v: v > 0, rules.POSITIVE),
    Rule('labels_momentum', lambda v: 0 <= v < 1, 'must lie in [0, 1)'),
    Rule('label_expert', lambda v: v >= 0, 'must be >= 0'),
    Rule('min_start_epoch', lambda v: v >= 0, 'must be >= 0'),
    Rule('lr_img_decay_every', lambda v: v >= 0, 'must be >= 0 (0: no decay)'),
    Rule('lr_img_decay_rate', lambda v: 0 < v <= 1, 'must lie in (0, 1]'),
    # a value outside its list (None where the default is None: chosen later)
    *(Rule(name, lambda v, c=c, d=Settings._field_defaults[name]: v in c or v is d is None,
           f'is not one of {", ".join(c)}') for name, c in CHOICES.items()),
)
