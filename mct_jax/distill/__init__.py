"""Distillation by trajectory matching: MCT (convexified trajectories, continuous starts) and
MTT (full trajectories, integer starts), docs/method.md section 4.

The synthetic set is a pytree ``{'images': [n, H, W, C], 'lr': []}`` updated by SGD with
momentum 0.5 (``lr_img`` and ``lr_lr``). Each iteration of :meth:`Distiller.run`:

1. draws (expert, start) pairs from ``(seed, iteration)`` (:func:`sample_start`) and reads
   the start and target parameters off the trajectories (eqs. 8 and 10);
2. takes the exact meta-gradient of the matching loss through the student rollout
   (:mod:`mct_jax.parallel`, :mod:`mct_jax.rollout`), with the rollout key
   ``fold_in(key(seed), iteration)``;
3. updates the set, unless the loss, the gradient or the new learned lr is broken
   (:func:`make_update`);
4. every ``eval_every`` iterations, evaluates the set and hands it to the run folder
   (:mod:`mct_jax.run_folder`), which saves it and checkpoints the state.

``best.npz`` is the set with the best *validation* accuracy when the dataset holds out a
validation split (``data.load_dataset(val_images_per_class=K)``); the test accuracy is then
only reported. Without one it is chosen on the test set, as the reference code does, and
the run says so.

A resumed run therefore repeats an uninterrupted one exactly. The command
``python -m mct_jax.distill`` is :mod:`mct_jax.distill.__main__`.
"""

from __future__ import annotations

import functools
import math
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mct_jax import checkpoint, data, evaluate, host, keys, monitor, parallel, rollout, rules
from mct_jax import trajectory
from mct_jax import labels as soft_labels
from mct_jax.distill.settings import (CHOICES, HELP, IMAGE_INITS, IMAGE_OPTIMIZERS,  # noqa: F401
                                     RULES, TOOLBOX_DEFAULTS, Settings)
from mct_jax.run_folder import RunFolder


# ----------------------------------------------------------------------------- pieces

def init_synthetic(key, ds: data.Dataset, ipc: int):
    """Real-image initialisation: ``ipc`` random training images per class.

    Returns network inputs [num_classes * ipc, H, W, C] (class-major) and labels
    [num_classes * ipc].
    """
    images, labels = data.random_per_class(key, ds.x_train, ds.y_train, ds.num_classes, ipc)
    return ds.prepare(images), labels


def make_optimizer(lr_img: float, lr_lr: float, image_optimizer: str = 'sgd',
                   decay_every: int = 0, decay_rate: float = 0.5, freeze_lr: bool = False,
                   lr_labels: float | None = None,
                   labels_momentum: float = 0.9) -> optax.GradientTransformation:
    """The synthetic set's optimiser, one transformation per part of the pytree.

    Images: SGD with momentum 0.5 (the reference) or Adam (the MCT release's option), at
    ``lr_img`` times ``decay_rate`` per ``decay_every`` updates when that is set. The learned
    lr: SGD with momentum 0.5 at ``lr_lr``, or nothing (``freeze_lr``). Learned label logits
    (``lr_labels`` set): SGD with ``labels_momentum`` (DATM's).
    """
    lr_img = (optax.exponential_decay(lr_img, decay_every, decay_rate, staircase=True)
              if decay_every else lr_img)
    images = (optax.adam(lr_img) if image_optimizer == 'adam'
              else optax.sgd(lr_img, momentum=0.5))
    parts = {'images': images,
             'lr': optax.set_to_zero() if freeze_lr else optax.sgd(lr_lr, momentum=0.5)}
    if lr_labels is not None:
        parts['label_logits'] = optax.sgd(lr_labels, momentum=labels_momentum)
    return optax.multi_transform(parts, {k: k for k in parts})


def optimizer_of(s: Settings) -> optax.GradientTransformation:
    """:func:`make_optimizer` with the settings' choices."""
    return make_optimizer(s.lr_img, s.lr_lr, s.image_optimizer, s.lr_img_decay_every,
                          s.lr_img_decay_rate, s.freeze_lr,
                          s.lr_labels if s.labels == 'learned' else None, s.labels_momentum)


def start_window(s: Settings, iteration: int) -> tuple[float, float]:
    """``(lower, upper)`` bounds of the start epochs at ``iteration``.

    The upper bound grows linearly from ``max_start_epoch`` to ``max_start_epoch_final``
    over ``window_iterations`` iterations, then stays (DATM's difficulty-aligned window;
    integer starts take its floor, as DATM does); without a final bound it is
    ``max_start_epoch`` throughout.
    """
    upper = s.max_start_epoch
    if s.max_start_epoch_final is not None and s.window_iterations > 0:
        grown = min(iteration / s.window_iterations, 1.0)
        upper = s.max_start_epoch + (s.max_start_epoch_final - s.max_start_epoch) * grown
    return s.min_start_epoch, upper


FAULTS = ('ok', 'non-finite loss', 'non-finite gradient', 'non-positive learned lr')
# After this many consecutive updates skipped for a non-positive learned lr, the run says
# plainly that nothing is being learned, and how to change that.
SKIPS_BEFORE_ALERT = 5


def make_update(tx: optax.GradientTransformation, device=None):
    """Jitted ``update(syn, opt_state, grads, loss) -> (syn, opt_state, fault)``.

    ``fault`` indexes :data:`FAULTS`; on a fault the old state is returned unchanged, so
    NaN never enters the synthetic set. The outputs are placed on ``device`` (default: the
    first local device) with a fixed single-device layout, so the state keeps one layout
    from iteration to iteration and nothing recompiles.
    """
    sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])

    @functools.partial(jax.jit, out_shardings=sharding)
    def update(syn, opt_state, grads, loss):
        updates, new_opt = tx.update(grads, opt_state, syn)
        new_syn = optax.apply_updates(syn, updates)
        grads_finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g))
                                          for g in jax.tree.leaves(grads)]))
        fault = jnp.where(~jnp.isfinite(loss), 1,
                          jnp.where(~grads_finite, 2, jnp.where(new_syn['lr'] <= 0, 3, 0)))
        keep = fault > 0
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, b, a), new, old)
        return pick(new_syn, syn), pick(new_opt, opt_state), fault
    return update


def sample_start(seed: int, iteration: int, num_experts: int, max_start: float,
                 continuous: bool, sample: int = 0,
                 min_start: float = 0.0) -> tuple[int, float]:
    """Expert index and start epoch, a pure function of (seed, iteration, sample).

    MCT: c ~ U[min_start, max_start] (eq. 10 makes any real c usable); MTT: an integer in
    [ceil(min_start), floor(max_start)). ``sample`` numbers the pairs of one iteration
    (``--num_samples``).
    """
    rng = np.random.default_rng([seed, iteration] + ([sample] if sample else []))
    e = int(rng.integers(num_experts))
    if continuous:
        return e, float(rng.uniform(min_start, max_start))
    low, high = math.ceil(min_start), max(int(max_start), 1)
    return e, float(rng.integers(low, high) if low else rng.integers(high))


def check_settings(s: Settings, num_epochs: int | None, num_images_per_class: list | None,
                   num_devices: int, num_experts: int | None = None) -> list[str]:
    """Every problem with the settings, each with its fix (an empty list when all is well).

    ``num_epochs``, ``num_images_per_class`` and ``num_experts`` describe the experts and
    data when known (None skips the checks that need them).
    """
    problems = rules.problems(s, RULES)
    if num_experts is not None and s.label_expert >= num_experts and (
            s.labels == 'teacher' or (s.image_init or '') == 'correct'
            or (s.labels == 'learned' and s.image_init is None)):
        problems.append(f'--label_expert={s.label_expert}, but there are {num_experts} '
                        f'experts; use 0 to {num_experts - 1}.')
    if s.method == 'mtt' and s.expert_epochs != int(s.expert_epochs):
        problems.append(f'--expert_epochs={s.expert_epochs}: MTT needs a whole number of '
                        'epochs (full trajectories are stored per epoch); use --method=mct.')
    if s.max_start_epoch < 0 or (s.start_sampling == 'integer' and s.max_start_epoch < 1):
        problems.append(f'--max_start_epoch={s.max_start_epoch} must be >= 0 (>= 1 for integer '
                        'starts).')
    if num_epochs is not None and s.max_start_epoch + s.expert_epochs > num_epochs:
        problems.append(f'--max_start_epoch={s.max_start_epoch} + --expert_epochs='
                        f'{s.expert_epochs} goes beyond the experts\' {num_epochs} epochs; '
                        'lower them or train longer experts (--train_epochs).')
    problems += _toolbox_problems(s, num_epochs)
    if num_images_per_class is not None:
        small = [(c, n) for c, n in enumerate(num_images_per_class) if n < s.ipc]
        if small:
            problems.append(f'--ipc={s.ipc} is larger than class {small[0][0]} has '
                            f'({small[0][1]} training images); lower --ipc or raise '
                            '--train_images_per_class.')
        total = s.ipc * len(num_images_per_class)
        if s.batch_syn > total:
            problems.append(f'--batch_syn={s.batch_syn} is larger than the synthetic set '
                            f'({total} images); use --batch_syn=0 (all) or a smaller value.')
        batch = s.batch_syn or total
        if batch % num_devices:
            problems.append(f'The student minibatch ({batch} images) must divide among '
                            f'{num_devices} devices; change --batch_syn or --ipc.')
    if s.iterations < 0 or s.eval_every < 1 or s.num_eval < 1 or s.eval_epochs < 1:
        problems.append('--iterations must be >= 0 and --eval_every, --num_eval, '
                        '--eval_epochs >= 1.')
    return problems


def _toolbox_problems(s: Settings, num_epochs: int | None) -> list[str]:
    """The checks of the label epoch and the start window against each other and the
    experts."""
    problems = []
    if s.label_epoch is not None and (s.label_epoch < 0 or (num_epochs is not None
                                                            and s.label_epoch > num_epochs)):
        problems.append(f'--label_epoch={s.label_epoch} must lie in [0, {num_epochs}], the '
                        "experts' epochs.")
    final = s.max_start_epoch_final
    top = max(s.max_start_epoch, final if final is not None else s.max_start_epoch)
    if s.min_start_epoch >= s.max_start_epoch or (
            s.start_sampling == 'integer'
            and math.ceil(s.min_start_epoch) >= max(int(s.max_start_epoch), 1)):
        problems.append(f'--min_start_epoch={s.min_start_epoch} leaves no start below '
                        f'--max_start_epoch={s.max_start_epoch}; lower it.')
    if final is not None:
        if final < s.max_start_epoch:
            problems.append(f'--max_start_epoch_final={final} must be >= --max_start_epoch='
                            f'{s.max_start_epoch} (the window only grows).')
        if s.window_iterations < 1:
            problems.append('--max_start_epoch_final needs --window_iterations >= 1: the '
                            'iterations over which the window grows.')
        if num_epochs is not None and top + s.expert_epochs > num_epochs:
            problems.append(f'--max_start_epoch_final={final} + --expert_epochs='
                            f'{s.expert_epochs} goes beyond the experts\' {num_epochs} epochs; '
                            'lower it or train longer experts.')
    elif s.window_iterations:
        problems.append('--window_iterations needs --max_start_epoch_final, the bound the '
                        'window grows to.')
    return problems


_METHOD_NOTES = {
    'forward': 'exact (forward-over-reverse), with respect to the images, the lr and any '
               'learned labels',
    'reverse': 'exact (reverse through the rollout), with respect to the images, the lr and '
               'any learned labels',
    'tesla': "TESLA's constant-memory approximation (the MCT release's): each step's "
             'cotangent held at the last one, so it is not the exact gradient',
}


# ----------------------------------------------------------------------------- the run

class Distiller:
    """Holds the compiled pieces of one distillation run; :meth:`run` does the loop.

    Args:
      s: the hyperparameters.
      model: the student network (the experts' architecture).
      ds: the dataset (its training images initialise the set, its test images evaluate).
      trajectories: the experts, as :class:`mct_jax.trajectory.Trajectory`.
      out_dir: the run folder (:class:`mct_jax.run_folder.RunFolder`).
      settings_json: every setting, stored with the run and each saved set.
      devices: where the meta-gradient runs (default: every device of every process).
      outputs: the progress display and the optional TensorBoard events and pictures.
    """

    def __init__(self, s: Settings, model, ds: data.Dataset, trajectories: list,
                 out_dir: str, settings_json: dict, devices=None,
                 outputs: monitor.Outputs = monitor.Outputs()):
        self.s, self.model, self.ds, self.trajs = s, model, ds, trajectories
        self.num_images = s.ipc * ds.num_classes
        self.batch = s.batch_syn or self.num_images
        every = list(devices or jax.devices())   # of all processes
        self.options = rollout.RolloutOptions(
            num_steps=s.syn_steps, batch_size=self.batch, use_dsa=s.dsa, method=s.meta_grad,
            remat=s.remat, residual_budget=s.residual_budget_gb * 1e9)
        self.meta_grad = parallel.make_meta_grad(model, self.options, every)
        self.tx = optimizer_of(s)
        self.residual_plan = self._residual_plan(len(every))
        per = self.batch // len(every)
        self.device_plan = (f'{len(every)} {every[0].platform.upper()} '
                            f'device{"s" if len(every) > 1 else ""}'
                            + (f' in {jax.process_count()} processes'
                               if jax.process_count() > 1 else '')
                            + f', {per} of each step\'s {self.batch} synthetic images on each')
        self.devices = [d for d in every
                        if d.process_index == jax.process_index()]   # this process's
        # Multi-process runs: every process runs the same loop on the same state; process 0
        # alone writes files (the output folder must be shared for resuming).
        self.primary = jax.process_index() == 0
        self.windowed = s.min_start_epoch > 0 or s.max_start_epoch_final is not None
        self.progress = outputs.progress if self.primary else 'none'
        self.folder = RunFolder(out_dir, settings_json, ds.to_display, ds.class_names,
                                f'{s.method.upper()}, ipc {s.ipc}, N {s.syn_steps}',
                                self.primary, outputs,
                                selected_on='validation' if ds.has_validation else 'test',
                                added_defaults=dict(TOOLBOX_DEFAULTS, val_images_per_class=0))
        self.update = make_update(self.tx, self.devices[0])
        self.point = jax.jit(trajectory.point)
        self.evaluator = evaluate.make_evaluator(model, s.num_eval, s.eval_epochs,
                                                 use_dsa=s.dsa)
        self.key = jax.random.key(s.seed)
        # The splits each evaluated set is tested on; the first one chooses best.npz.
        splits = ds.eval_splits(validation_first=True)
        self.selected_on = next(iter(splits))
        # device_put, not jnp.asarray: the latter keeps a second host copy of the images.
        self.eval_sets = {k: (jax.device_put(x), jax.device_put(y)) for k, (x, y) in splits.items()}

    def _residual_plan(self, num_devices: int) -> str:
        """Whether the forward method stores each student step's residuals (faster) or
        recomputes the step in the backward pass (memory flat in N), and why."""
        s, model = self.s, self.model
        if s.meta_grad != 'forward' or model.stored_hvp is None:
            return ''
        local = self.batch // num_devices
        # As parallel.make_meta_grad: the S rollouts share the budget.
        store, need = rollout.residual_plan(
            model, jax.eval_shape(model.init, jax.random.key(0)),
            jax.ShapeDtypeStruct((local,) + tuple(self.ds.image_shape), jnp.float32),
            jax.ShapeDtypeStruct((local,), jnp.int32),
            self.options._replace(residual_budget=self.options.residual_budget
                                  / s.num_samples))
        need = need * s.num_samples / 1e9
        size = f'{need:.2f} GB' if need >= 1 else f'{need * 1e3:.1f} MB'
        if s.remat:
            return (f'recomputing each student step (--remat); storing its residuals would '
                    f'take {size} per device')
        if store:
            return (f'storing each student step\'s residuals: {size} per device '
                    f'(--residual_budget_gb={s.residual_budget_gb:g})')
        return (f'recomputing each student step: its residuals would take {size} per '
                f'device > --residual_budget_gb={s.residual_budget_gb:g}; raise it to run '
                'faster if the memory is there')

    # -- state

    def initial_state(self):
        """``(syn, opt_state, labels)``: the initial images (``image_init``), the initial
        learned lr, and the labels: [n] classes (hard, and the classes of learned labels,
        whose logits are ``syn['label_logits']``) or [n, K] teacher probabilities."""
        s, ds = self.s, self.ds
        key = keys.stream(self.key, 'distill/initial_images')
        init = s.image_init or ('correct' if s.labels == 'learned' else 'real')
        if init == 'real':
            images, labels = init_synthetic(key, ds, s.ipc)
        elif init == 'noise':   # the MCT release's pix_init=noise: N(0, 1) pixels
            labels = np.repeat(np.arange(ds.num_classes, dtype=np.int32), s.ipc)
            images = jax.random.normal(key, (len(labels),) + tuple(ds.image_shape))
        else:
            images, labels = soft_labels.correct_subset(
                key, self.model.apply, self._label_params()[s.label_expert], ds.x_train,
                ds.y_train, ds.num_classes, s.ipc, ds.preprocessing)
        syn = {'images': jnp.asarray(images, jnp.float32), 'lr': jnp.float32(s.lr_teacher)}
        self.classes = np.asarray(labels)   # the class each image was drawn for (pictures)
        if s.labels == 'teacher':
            labels = soft_labels.teacher(self.model.apply, self._label_params()[s.label_expert],
                                         syn['images'], s.label_temperature)
        elif s.labels == 'learned':
            syn['label_logits'] = soft_labels.learned_init(
                self.model.apply, self._label_params(), syn['images'], labels)
        return self._place((syn, self.tx.init(syn), jnp.asarray(labels)))

    def _label_params(self) -> list:
        """Every expert's parameters at the labelling epoch (``label_epoch``; default the
        start window's upper bound for teacher labels, as the MCT release, and the last
        epoch for learned ones, as DATM)."""
        s = self.s
        epoch = s.label_epoch
        if epoch is None:
            epoch = s.max_start_epoch if s.labels == 'teacher' else None
        return [self.point(t, t.num_epochs if epoch is None else min(epoch, t.num_epochs))
                for t in self.trajs]

    def _place(self, tree):
        """Commits arrays to the first device with the layout the jitted update returns."""
        return jax.device_put(tree, jax.sharding.SingleDeviceSharding(self.devices[0]))

    # -- the steps of an iteration

    def _meta_grad_args(self, syn, labels, iteration: int):
        """The meta-gradient's arguments at ``iteration`` and the (expert, start) samples."""
        s = self.s
        starts, targets, rollout_keys, samples = [], [], [], []
        key = jax.random.fold_in(self.key, iteration)
        for j in range(s.num_samples):
            low, high = start_window(s, iteration)
            e, c = sample_start(s.seed, iteration, len(self.trajs), high,
                                s.start_sampling == 'continuous', j, low)
            traj = self.trajs[e]
            starts.append(self.point(traj, c))
            targets.append(self.point(traj, min(c + s.expert_epochs, traj.num_epochs)))
            rollout_keys.append(key if j == 0 else jax.random.fold_in(key, j))
            samples.append((e, c))
        stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
        return (syn, labels, stack(starts), stack(targets), jnp.stack(rollout_keys)), samples

    def trace_ahead(self, syn, labels, iteration: int):
        """Traces the meta-gradient for ``iteration`` on a background thread, so that the
        first iteration's tracing overlaps the evaluation before it; returns the thread. It
        does not compile: two compilations at once would double the peak memory of
        compiling. Errors are left to the real call, which raises them again."""
        def work():
            try:
                self.meta_grad.trace_ahead(*self._meta_grad_args(syn, labels, iteration)[0])
            except Exception as e:   # noqa: BLE001 -- the real call reports it
                logging.debug('tracing ahead failed: %r', e)
        thread = threading.Thread(target=work, name='trace-ahead', daemon=True)
        thread.start()
        return thread

    def step(self, syn, opt_state, labels, iteration: int):
        """One distillation iteration; returns (syn, opt_state, loss, fault, samples)."""
        args, samples = self._meta_grad_args(syn, labels, iteration)
        loss, grads = self.meta_grad(*args)
        self._lr_grad = grads['lr']   # for the advice when the lr keeps crossing zero
        syn, opt_state, fault = self.update(syn, opt_state, grads, loss)
        return syn, opt_state, float(loss), int(fault), samples

    def evaluate(self, syn, labels, iteration: int) -> dict:
        """Trains ``num_eval`` networks on the set: ``{split: summary}`` of their accuracy
        on each evaluation split (test, and validation when there is one)."""
        names = list(self.eval_sets)
        with monitor.Progress(self.s.num_eval, f'evaluate it {iteration}', unit='net',
                              mode=self.progress, leave=False) as bar:
            acc = self.evaluator(jax.random.fold_in(keys.stream(self.key, 'distill/evaluation'),
                                                    iteration),
                                 syn['images'], soft_labels.targets(syn, labels), syn['lr'],
                                 tuple(self.eval_sets.values()),
                                 on_network=lambda i, a: (bar.update(acc=100 * a[0]),
                                                          checkpoint.crash_point('evaluate')),
                                 prep=self.ds.preprocessing)
        host.release_freed_memory()   # the evaluation's buffers, before distilling resumes
        return {name: evaluate.summarize(acc[:, j]) for j, name in enumerate(names)}

    def _evaluates_at(self, iteration: int) -> bool:
        return iteration % self.s.eval_every == 0 or iteration == self.s.iterations

    # -- the loop

    def run(self) -> dict:
        """Distils (or resumes distilling) to ``s.iterations``; returns the last evaluation."""
        s, folder = self.s, self.folder
        folder.check_settings()
        syn, opt_state, labels = self.initial_state()
        initial = np.asarray(syn['images']), float(syn['lr'])
        changed = lambda syn: bool(float(syn['lr']) != initial[1] or not np.array_equal(
            np.asarray(syn['images']), initial[0]))
        self._lr_skips = 0
        if self.primary:
            logging.info('Devices: %s.', self.device_plan)
            if self.residual_plan:
                logging.info('Meta-gradient: %s.', self.residual_plan)
            if self.windowed:
                low, high = start_window(s, 0)
                logging.info('Start window: [%g, %g]%s.', low, high,
                             f', its upper bound growing to {s.max_start_epoch_final:g} by '
                             f'iteration {s.window_iterations}'
                             if s.max_start_epoch_final is not None else '')
            if s.labels != 'hard' or s.meta_grad == 'tesla':
                logging.info('Labels: %s; meta-gradient: %s.', s.labels,
                             _METHOD_NOTES[s.meta_grad])
            if self.selected_on == 'test':
                logging.warning('No validation split (--val_images_per_class=0): best.npz is '
                                'chosen by test accuracy, as the reference code does, so its '
                                'test accuracy is optimistic. Hold out training images with '
                                '--val_images_per_class=K to choose on them instead.')
        first, restored = 0, folder.restore(opt_state, self._place)
        if restored:
            syn, opt_state, first = restored
            logging.info('Resuming from iteration %d (best so far %.2f%%).', first,
                         folder.best)
        folder.open(first if restored else None)
        bar = monitor.Progress(s.iterations, 'distill', initial=first, mode=self.progress)
        # The meta-gradient is traced beside the first evaluation and compiled after it
        # (docs/benchmarks.md, start-up).
        ahead = (self.trace_ahead(syn, labels, first)
                 if first < s.iterations and not restored else None)
        result, last_acc = {}, None
        try:
            for it in range(first, s.iterations + 1):
                if self._evaluates_at(it) and not (restored and it == first):
                    summaries = self.evaluate(syn, labels, it)
                    last_acc = summaries[self.selected_on]['mean']
                    lr = float(syn['lr'])
                    bar.write(f'iteration {it}: ' + ', '.join(
                        f'{name} {v["mean"]:.2f} +- {v["std"]:.2f} %'
                        for name, v in summaries.items()) + f' (lr {lr:.4g})')
                    folder.record_evaluation(it, syn, soft_labels.targets(syn, labels), summaries,
                                             opt_state, classes=self.classes,
                                             changed=changed(syn))
                    result = {'iteration': it, 'accuracy': summaries['test'],
                              **({'validation': summaries['validation']}
                                 if 'validation' in summaries else {}),
                              'best': folder.best, 'best_iteration': folder.best_iteration,
                              'selected_on': self.selected_on, 'lr': lr}
                if it == s.iterations:
                    break
                if ahead is not None:
                    ahead.join()
                    ahead = None
                t0 = time.time()
                syn, opt_state, loss, fault, samples = self.step(syn, opt_state, labels, it)
                seconds = time.time() - t0
                if it == first:
                    host.release_freed_memory()   # what compiling the meta-gradient left
                checkpoint.crash_point('iteration')
                lr = float(syn['lr'])
                record = {'iteration': it, 'loss': loss, 'lr': lr,
                          'expert': [e for e, _ in samples], 'start': [c for _, c in samples],
                          'fault': FAULTS[fault], 'seconds': seconds}
                if self.windowed:
                    record['window'] = list(start_window(s, it))
                folder.record_iteration(record, fault)
                if fault:
                    self._on_fault(it, fault, bar, lr)
                else:
                    self._lr_skips = 0
                stats = {'loss': loss, 'lr': lr}
                if last_acc is not None:
                    stats['acc'] = round(last_acc, 2)
                bar.update(**stats)
        finally:
            if ahead is not None:   # the run stopped before its first iteration
                ahead.join()
            bar.close()
            folder.close()
        if self.primary and not changed(syn):
            logging.warning('The set never changed: every update was skipped, so the saved '
                            'sets are the initial real images (their files say changed=False); '
                            'see the warnings above for the fix.')
        return result

    def _on_fault(self, iteration: int, fault: int, bar, lr: float) -> None:
        msg = (f'iteration {iteration}: {FAULTS[fault]}; the update was skipped. Usually '
               '--lr_img or --lr_lr is too large: lower it.')
        if self.s.on_fault == 'stop':
            raise FloatingPointError(msg + ' (stopping because --on_fault=stop)')
        bar.write('warning: ' + msg)
        self._lr_skips = self._lr_skips + 1 if FAULTS[fault] == 'non-positive learned lr' else 0
        if self._lr_skips == SKIPS_BEFORE_ALERT:
            bar.write('warning: ' + self.lr_advice(lr, float(jnp.abs(self._lr_grad))))

    def lr_advice(self, lr: float, lr_grad: float) -> str:
        """What to say when the learned lr keeps crossing zero: nothing is learned, why, and
        the ``--lr_lr`` that would keep a step of the lr well inside it."""
        most = lr / max(lr_grad, 1e-30) / 10
        return (f'nothing is being learned: the last {SKIPS_BEFORE_ALERT} updates were all '
                f'skipped because each would have made the learned lr ({lr:.3g}) negative. '
                f'Its gradient is about {lr_grad:.3g}, so one step of --lr_lr={self.s.lr_lr:g} '
                'moves it by more than its value. This happens with experts that take few SGD '
                'steps per epoch (few training images): the matched segment is short and the '
                "lr's gradient large, while --lr_lr=1e-5 (MTT's default) suits experts of "
                'about 200 steps per epoch (CIFAR-10 in batches of 256). Use '
                f'--lr_lr={most:.1g} or lower, so that a step moves the lr by at most a tenth '
                'of it, or --freeze_lr to keep it fixed.')
