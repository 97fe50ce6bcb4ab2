"""Distillation by trajectory matching: MCT (convexified trajectories, continuous starts) and
MTT (full trajectories, integer starts), METHOD.md section 4.

``python -m mct_jax.distill [flags]`` reads experts from ``--expert_dir`` and writes to
``--out_dir``:

    synthetic.npz   latest synthetic set: images, labels, lr, images_display, settings, ...
    best.npz        the best evaluated one (never replaced by a worse or broken set)
    metrics.jsonl   one JSON line per iteration and per evaluation
    checkpoint/     Orbax: the whole state; re-running the same command resumes from it
    tensorboard/    the same metrics and the image grids as TensorBoard events
    synthetic.png   the latest synthetic images (one row per class; images/ keeps every
                    evaluation's grid), progress.png: accuracy, loss and learned lr curves

The synthetic set is a pytree ``{'images': [n, H, W, C], 'lr': []}`` updated by SGD with
momentum 0.5 (``lr_img`` and ``lr_lr``). Iteration t draws its expert and start from
``(seed, t)`` and its rollout key from ``fold_in(key(seed), t)``, so a resumed run repeats
an uninterrupted one exactly.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags, logging

from mct_jax import (checkpoint, cli, data, evaluate, expert, monitor, parallel, rollout,
                     trajectory, validate)
from mct_jax import flags as shared

FLAGS = flags.FLAGS


class Settings(NamedTuple):
    """Distillation hyperparameters (the reference MTT names)."""
    method: str = 'mct'
    ipc: int = 10
    syn_steps: int = 20
    expert_epochs: float = 2.0
    max_start_epoch: float = 10.0
    batch_syn: int = 0            # 0: all synthetic images every step
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01      # the initial learned lr (--lr_syn_init, else --lr_teacher)
    iterations: int = 200
    eval_every: int = 50
    num_eval: int = 5
    eval_epochs: int = 300
    remat: bool = False
    meta_grad: str = 'forward'    # 'forward' (forward-over-reverse) or 'reverse'
    residual_budget_gb: float = 4.0   # forward: residuals stored per device, else recomputed
    dsa: bool = True
    beta_mode: str = 'steps'
    start_sampling: str = 'continuous'
    max_experts: int | None = None
    on_fault: str = 'skip'
    num_samples: int = 1          # (expert, start) pairs per iteration, averaged
    seed: int = 0


# ----------------------------------------------------------------------------- pieces

def init_synthetic(key, x_train, y_train, num_classes: int, ipc: int):
    """Real-image initialisation: ``ipc`` random training images per class.

    Returns images [num_classes * ipc, H, W, C] (class-major) and labels [num_classes * ipc].
    """
    return evaluate.random_real_subset(key, x_train, y_train, num_classes, ipc)


def make_optimizer(lr_img: float, lr_lr: float) -> optax.GradientTransformation:
    """SGD with momentum 0.5 on the images and on the learned lr, as the reference."""
    return optax.multi_transform({'images': optax.sgd(lr_img, momentum=0.5),
                                  'lr': optax.sgd(lr_lr, momentum=0.5)},
                                 {'images': 'images', 'lr': 'lr'})


SETTINGS_FILE = 'settings.json'
# Settings that may differ when a run is resumed: extending it, or evaluating it differently.
# How the meta-gradient is computed (the same derivative either way) may change too.
RESUMABLE_CHANGES = ('iterations', 'meta_grad', 'remat', 'residual_budget_gb')

FAULTS = ('ok', 'non-finite loss', 'non-finite gradient', 'non-positive learned lr')


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
                 continuous: bool, sample: int = 0) -> tuple[int, float]:
    """Expert index and start epoch, a pure function of (seed, iteration, sample).

    MCT: c ~ U[0, max_start] (eq. 10 makes any real c usable); MTT: an integer in
    [0, max_start). ``sample`` numbers the pairs of one iteration (``--num_samples``).
    """
    rng = np.random.default_rng([seed, iteration] + ([sample] if sample else []))
    e = int(rng.integers(num_experts))
    if continuous:
        return e, float(rng.uniform(0.0, max_start))
    return e, float(rng.integers(max(int(max_start), 1)))


def check_settings(s: Settings, num_epochs: int | None, num_images_per_class: list | None,
                   num_devices: int) -> list[str]:
    """Every problem with the settings, each with its fix (an empty list when all is well)."""
    problems = []
    if s.residual_budget_gb < 0:
        problems.append(f'--residual_budget_gb={s.residual_budget_gb} must be >= 0 (0: always '
                        'recompute, as --remat).')
    if s.num_samples < 1:
        problems.append(f'--num_samples={s.num_samples} must be at least 1.')
    if s.ipc < 1:
        problems.append(f'--ipc={s.ipc} must be at least 1.')
    if s.syn_steps < 1:
        problems.append(f'--syn_steps={s.syn_steps} must be at least 1.')
    if s.expert_epochs <= 0:
        problems.append(f'--expert_epochs={s.expert_epochs} must be positive.')
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
    for name in ('lr_img', 'lr_lr', 'lr_teacher'):
        if not getattr(s, name) > 0:
            problems.append(f'--{name}={getattr(s, name)} must be positive.')
    if s.iterations < 0 or s.eval_every < 1 or s.num_eval < 1 or s.eval_epochs < 1:
        problems.append('--iterations must be >= 0 and --eval_every, --num_eval, '
                        '--eval_epochs >= 1.')
    return problems


# ----------------------------------------------------------------------------- the run

class Distiller:
    """Holds the compiled pieces of one distillation run; :meth:`run` does the loop."""

    def __init__(self, s: Settings, model, ds: data.Dataset, trajectories: list,
                 out_dir: str, settings_json: dict, devices=None, progress: str = 'auto',
                 tensorboard: bool = True, pictures: bool = True):
        self.s, self.model, self.ds, self.trajs = s, model, ds, trajectories
        self.out_dir = out_dir
        self.settings_json = settings_json
        self.progress, self.tensorboard, self.pictures = progress, tensorboard, pictures
        self.num_images = s.ipc * ds.num_classes
        self.batch = s.batch_syn or self.num_images
        every = list(devices or jax.devices())   # of all processes
        self.meta_grad = parallel.make_meta_grad(
            model.apply, s.syn_steps, self.batch, s.dsa, s.remat, every, model.loss_grad,
            s.meta_grad, model.stored_hvp, s.residual_budget_gb * 1e9)
        self.tx = make_optimizer(s.lr_img, s.lr_lr)
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
        if not self.primary:
            self.progress, self.tensorboard, self.pictures = 'none', False, False
        self.update = make_update(self.tx, self.devices[0])
        self.point = jax.jit(trajectory.point)
        self.evaluator = evaluate.make_evaluator(model, s.num_eval, s.eval_epochs,
                                                 use_dsa=s.dsa, together='loop')
        self.key = jax.random.key(s.seed)
        self.x_test, self.y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

    def _residual_plan(self, num_devices: int) -> str:
        """Whether the forward method stores each student step's residuals (faster) or
        recomputes the step in the backward pass (memory flat in N), and why."""
        s, model = self.s, self.model
        if s.meta_grad != 'forward' or model.stored_hvp is None:
            return ''
        local = self.batch // num_devices
        # As parallel.make_meta_grad: the S rollouts share the budget.
        store, need = rollout.residual_plan(
            model.stored_hvp, jax.eval_shape(model.init, jax.random.key(0)),
            jax.ShapeDtypeStruct((local,) + tuple(self.ds.x_train.shape[1:]), jnp.float32),
            jax.ShapeDtypeStruct((local,), jnp.int32), s.syn_steps, s.remat,
            s.residual_budget_gb * 1e9 / s.num_samples)
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
        images, labels = init_synthetic(jax.random.fold_in(self.key, 10**9), self.ds.x_train,
                                        self.ds.y_train, self.ds.num_classes, self.s.ipc)
        syn = {'images': jnp.asarray(images), 'lr': jnp.float32(self.s.lr_teacher)}
        return self._place((syn, self.tx.init(syn), jnp.asarray(labels)))

    def _place(self, tree):
        """Commits arrays to the first device with the layout the jitted update returns."""
        return jax.device_put(tree, jax.sharding.SingleDeviceSharding(self.devices[0]))

    def _meta_grad_args(self, syn, labels, iteration: int):
        """The meta-gradient's arguments at ``iteration`` and the (expert, start) samples."""
        s = self.s
        starts, targets, keys, samples = [], [], [], []
        key = jax.random.fold_in(self.key, iteration)
        for j in range(s.num_samples):
            e, c = sample_start(s.seed, iteration, len(self.trajs), s.max_start_epoch,
                                s.start_sampling == 'continuous', j)
            traj = self.trajs[e]
            starts.append(self.point(traj, c))
            targets.append(self.point(traj, min(c + s.expert_epochs, traj.num_epochs)))
            keys.append(key if j == 0 else jax.random.fold_in(key, j))
            samples.append((e, c))
        stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
        return ((syn['images'], syn['lr'], labels, stack(starts), stack(targets),
                 jnp.stack(keys)), samples)

    def compile_ahead(self, syn, labels, iteration: int):
        """Starts compiling the meta-gradient for ``iteration`` on a background thread (the
        first iteration's tracing and compilation then overlap the evaluation before it);
        returns the thread. Errors are left to the real call, which raises them again."""
        def work():
            try:
                self.meta_grad.compile_ahead(*self._meta_grad_args(syn, labels, iteration)[0])
            except Exception as e:   # noqa: BLE001 -- the real call reports it
                logging.debug('compiling ahead failed: %r', e)
        thread = threading.Thread(target=work, name='compile-ahead', daemon=True)
        thread.start()
        return thread

    def step(self, syn, opt_state, labels, iteration: int):
        """One distillation iteration; returns (syn, opt_state, loss, fault, samples)."""
        args, samples = self._meta_grad_args(syn, labels, iteration)
        loss, g_img, g_lr = self.meta_grad(*args)
        syn, opt_state, fault = self.update(syn, opt_state, {'images': g_img, 'lr': g_lr}, loss)
        return syn, opt_state, float(loss), int(fault), samples

    def evaluate(self, syn, labels, iteration: int) -> dict:
        with monitor.Progress(self.s.num_eval, f'evaluate it {iteration}', unit='net',
                              mode=self.progress, leave=False) as bar:
            acc = self.evaluator(jax.random.fold_in(jax.random.fold_in(self.key, 7), iteration),
                                 syn['images'], labels, syn['lr'], self.x_test, self.y_test,
                                 on_network=lambda i, a: (bar.update(acc=100 * a),
                                                          checkpoint.crash_point('evaluate')))
        return evaluate.summarize(acc)

    def _pictures(self, images, labels, iteration, writer):
        """Runs on the background thread (see :meth:`run`), from NumPy copies."""
        grid = monitor.image_grid(self.ds.to_display(images), labels, self.ds.class_names)
        os.makedirs(os.path.join(self.out_dir, 'images'), exist_ok=True)
        monitor.save_png(os.path.join(self.out_dir, 'images', f'iteration_{iteration:06d}.png'),
                         grid)
        monitor.save_png(os.path.join(self.out_dir, 'synthetic.png'), grid)
        if writer:
            writer.image('synthetic_images', iteration, grid)
        monitor.plot_distillation(os.path.join(self.out_dir, 'metrics.jsonl'),
                                  os.path.join(self.out_dir, 'progress.png'),
                                  f'{self.s.method.upper()}, ipc {self.s.ipc}, N {self.s.syn_steps}')

    # -- files

    def _npz(self, path, syn, labels, iteration, summary):
        if not self.primary:
            return
        images = np.asarray(syn['images'])
        checkpoint.write_npz(path, images=images, labels=np.asarray(labels),
                             lr=np.float32(syn['lr']), iteration=np.int64(iteration),
                             accuracy_mean=np.float64(summary['mean']),
                             accuracy_std=np.float64(summary['std']),
                             images_display=self.ds.to_display(images).astype(np.float32),
                             class_names=np.asarray(self.ds.class_names),
                             settings=np.asarray(json.dumps(self.settings_json)))

    def _save_checkpoint(self, syn, opt_state, iteration, best, metrics_lines):
        if not self.primary:
            return
        checkpoint.save_tree(os.path.join(self.out_dir, 'checkpoint'), {
            'syn': syn, 'opt': jax.tree.leaves(opt_state),
            'iteration': np.int64(iteration), 'best': np.float64(best),
            'metrics_lines': np.int64(metrics_lines)}, keep_previous=True)

    def _restore(self, opt_state):
        """The saved state, or None when the run has no checkpoint yet.

        A damaged latest checkpoint falls back to the previous one (a warning says so); the
        best accuracy so far is the larger of the checkpoint's and ``best.npz``'s, so a
        resumed run never replaces ``best.npz`` with a worse set.
        """
        path = os.path.join(self.out_dir, 'checkpoint')
        if not any(os.path.isdir(path + sfx) for sfx in checkpoint.FALLBACKS):
            return None
        try:
            tree, _ = checkpoint.load_tree_or_previous(path)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(
                f'{e} Nothing was overwritten; remove {path}* to restart this run from '
                'scratch.') from e
        treedef = jax.tree.structure(opt_state)
        opt_state = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in tree['opt']])
        syn = jax.tree.map(jnp.asarray, tree['syn'])
        syn, opt_state = self._place((syn, opt_state))
        best = float(tree['best'])
        best_path = os.path.join(self.out_dir, 'best.npz')
        if os.path.isfile(best_path):
            try:
                with np.load(best_path) as z:
                    best = max(best, float(z['accuracy_mean']))
            except Exception as e:  # a damaged best.npz may be replaced by the next best
                logging.warning('Cannot read %s (%s); it will be replaced by the next '
                                'evaluated set.', best_path, e)
        return syn, opt_state, int(tree['iteration']), best, int(tree['metrics_lines'])

    # -- loop

    def _check_out_dir(self):
        """Refuses to resume a run whose settings differ (``--iterations`` may grow)."""
        path = os.path.join(self.out_dir, SETTINGS_FILE)
        if not self.primary:
            return
        if not os.path.isfile(path):
            checkpoint.write_json(path, self.settings_json)
            return
        stored = checkpoint.read_json(path)
        mine = json.loads(json.dumps(self.settings_json))  # tuples -> lists, as stored
        diffs = [f'{k}: folder has {stored.get(k)!r}, this run asks for {mine.get(k)!r}'
                 for k in sorted(set(stored) | set(mine))
                 if k not in RESUMABLE_CHANGES and stored.get(k) != mine.get(k)]
        if diffs:
            raise ValueError(f'{self.out_dir} holds a run with other settings:\n  '
                             + '\n  '.join(diffs) + '\nUse another --out_dir to start a new '
                             'run, or the same settings to resume this one.')

    def run(self) -> dict:
        s = self.s
        if self.primary:
            os.makedirs(self.out_dir, exist_ok=True)
        self._check_out_dir()
        syn, opt_state, labels = self.initial_state()
        if self.primary:
            logging.info('Devices: %s.', self.device_plan)
        if self.residual_plan and self.primary:
            logging.info('Meta-gradient: %s.', self.residual_plan)
        metrics_path = os.path.join(self.out_dir, 'metrics.jsonl')
        first, best, lines = 0, -np.inf, []
        restored = self._restore(opt_state)
        if restored:
            syn, opt_state, first, best, n_lines = restored
            with open(metrics_path) as f:
                lines = f.read().splitlines()[:n_lines]
            logging.info('Resuming from iteration %d (best so far %.2f%%).', first, best)
        if self.primary:
            with open(metrics_path, 'w') as f:
                f.write(''.join(line + '\n' for line in lines))
        metrics = open(metrics_path if self.primary else os.devnull, 'a')
        writer = (monitor.EventWriter(os.path.join(self.out_dir, 'tensorboard'),
                                      purge_step=first if restored else None)
                  if self.tensorboard else None)
        bar = monitor.Progress(s.iterations, 'distill', initial=first, mode=self.progress)
        background = monitor.Background()   # pictures, off the training loop

        def log(record):
            metrics.write(json.dumps(record) + '\n')
            metrics.flush()
            lines.append(None)

        result, last_acc = {}, None
        ahead = (self.compile_ahead(syn, labels, first)
                 if first < s.iterations and not restored else None)
        try:
            for it in range(first, s.iterations + 1):
                if (it % s.eval_every == 0 or it == s.iterations) and not (restored and it == first):
                    summary = self.evaluate(syn, labels, it)
                    last_acc = summary['mean']
                    log({'iteration': it, 'eval': summary, 'lr': float(syn['lr'])})
                    bar.write(f'iteration {it}: accuracy {summary["mean"]:.2f} +- '
                              f'{summary["std"]:.2f} % (lr {float(syn["lr"]):.4g})')
                    self._npz(os.path.join(self.out_dir, 'synthetic.npz'), syn, labels, it,
                              summary)
                    if summary['mean'] > best:
                        best = summary['mean']
                        self._npz(os.path.join(self.out_dir, 'best.npz'), syn, labels, it,
                                  summary)
                    if writer:
                        writer.scalars(it, {'eval/accuracy_mean': summary['mean'],
                                            'eval/accuracy_std': summary['std'],
                                            'eval/best': best})
                        writer.flush()
                    if self.pictures:
                        background.submit(self._pictures, np.asarray(syn['images']),
                                          np.asarray(labels), it, writer)
                    self._save_checkpoint(syn, opt_state, it, best, len(lines))
                    result = {'iteration': it, 'accuracy': summary, 'best': best,
                              'lr': float(syn['lr'])}
                if it == s.iterations:
                    break
                if ahead is not None:
                    ahead.join()
                    ahead = None
                t0 = time.time()
                syn, opt_state, loss, fault, samples = self.step(syn, opt_state, labels, it)
                seconds = time.time() - t0
                checkpoint.crash_point('iteration')
                lr = float(syn['lr'])
                log({'iteration': it, 'loss': loss, 'lr': lr,
                     'expert': [e for e, _ in samples], 'start': [c for _, c in samples],
                     'fault': FAULTS[fault], 'seconds': seconds})
                if writer:
                    writer.scalars(it, {'train/matching_loss': loss, 'train/learned_lr': lr,
                                        'train/seconds_per_iteration': seconds,
                                        'train/fault': fault})
                if fault:
                    msg = (f'iteration {it}: {FAULTS[fault]}; the update was skipped. Usually '
                           '--lr_img or --lr_lr is too large: lower it.')
                    if s.on_fault == 'stop':
                        raise FloatingPointError(msg + ' (stopping because --on_fault=stop)')
                    bar.write('warning: ' + msg)
                stats = {'loss': loss, 'lr': lr}
                if last_acc is not None:
                    stats['acc'] = round(last_acc, 2)
                bar.update(**stats)
        finally:
            if ahead is not None:   # the run stopped before its first iteration
                ahead.join()
            bar.close()
            metrics.flush()
            background.close()   # the pictures read metrics.jsonl
            metrics.close()
            if writer:
                writer.close()
        return result


# ----------------------------------------------------------------------------- command line

def settings_from_flags() -> Settings:
    sampling = FLAGS.start_sampling or ('continuous' if FLAGS.method == 'mct' else 'integer')
    fields = {f: getattr(FLAGS, f) for f in Settings._fields if f != 'start_sampling'}
    if FLAGS.lr_syn_init is not None:
        fields['lr_teacher'] = FLAGS.lr_syn_init
    return Settings(**fields, start_sampling=sampling)


def load_experts(expert_dir: str, method: str, beta_mode: str, max_experts: int | None,
                 expected: dict) -> list:
    """Loads the complete experts of a folder as trajectories, after checking their settings."""
    if not os.path.isfile(os.path.join(expert_dir, expert.CONFIG_FILE)):
        raise FileNotFoundError(f'No experts in {expert_dir}: train them first with '
                                f'python -m mct_jax.expert --expert_dir={expert_dir} '
                                '(and the same data and model flags).')
    expert.check_config(expert_dir, expected, keys=list(expected))
    folders = expert.list_experts(expert_dir)[:max_experts]
    if not folders:
        raise FileNotFoundError(f'{expert_dir} has no complete expert yet; run '
                                'python -m mct_jax.expert first.')
    kind = 'full' if method == 'mtt' else 'mct'
    trajs = []
    for f in folders:
        try:
            trajs.append(expert.load_trajectory(f, kind, beta_mode))
        except checkpoint.CheckpointError as e:
            if 'no full trajectory' in str(e):
                raise
            logging.warning('Skipping expert %s: %s', f, e)
    if not trajs:
        raise FileNotFoundError(f'No readable expert in {expert_dir}.')
    return trajs


def main(argv):
    del argv
    s = settings_from_flags()
    validate.raise_if_any(validate.distill_command_problems(jax.device_count()),
                          'distillation')
    ds = shared.load_data()
    m_settings = shared.model_settings(ds)
    expected = dict(m_settings, **shared.data_settings())
    trajs = load_experts(shared.expert_dir(), s.method, s.beta_mode, s.max_experts, expected)
    counts = np.bincount(ds.y_train, minlength=ds.num_classes).tolist()
    validate.raise_if_any(check_settings(s, trajs[0].num_epochs, counts, jax.device_count()),
                          'distillation')
    out_dir = FLAGS.out_dir or os.path.join('runs', FLAGS.dataset, f'{s.method}_ipc{s.ipc}')
    settings_json = dict(s._asdict(), **expected, expert_dir=shared.expert_dir(),
                         num_experts_used=len(trajs))
    logging.info('Distilling %s, %d experts, %s -> %s', FLAGS.dataset, len(trajs), s, out_dir)
    result = Distiller(s, shared.model_from_settings(m_settings), ds, trajs, out_dir,
                       settings_json, progress=FLAGS.progress, tensorboard=FLAGS.tensorboard,
                       pictures=FLAGS.pictures).run()
    print(json.dumps(result))


if __name__ == '__main__':
    cli.run(main)
