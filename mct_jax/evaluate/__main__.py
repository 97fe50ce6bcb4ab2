"""``python -m mct_jax.evaluate``: the evaluation protocol on a set (:mod:`mct_jax.evaluate`).

    python -m mct_jax.evaluate --synthetic=OUT_DIR                     # a distilled set
    python -m mct_jax.evaluate --synthetic=OUT_DIR --models=convnet,alexnet,vgg11,resnet18
    python -m mct_jax.evaluate --synthetic=OUT_DIR --report           # + IOR, HLR, LRS
    python -m mct_jax.evaluate --baseline=random --ipc=10 [data flags]  # random real images
    python -m mct_jax.evaluate --baseline=full [data flags]             # all training images

With ``--synthetic`` the dataset, its subset and the model come from the set's settings (and
its experts' config) unless the command line sets them. ``--models`` or ``--report`` write a
Markdown table, JSON and a bar chart to ``--report_dir``. Prints the result as JSON.
"""

import json
import os

import jax
import jax.numpy as jnp
from absl import logging

from mct_jax import data, evaluate, expert_store, interop, models, monitor
from mct_jax.cli import app, validate
from mct_jax.cli import flags as cli_flags
from mct_jax.evaluate import report

FLAGS = cli_flags.FLAGS


def _inherit_from_set(path: str) -> None:
    """Settings the command line leaves open, from the set and from its experts' config."""
    try:
        settings = evaluate.load_synthetic(path)['settings']
        cli_flags.inherit(settings, path)
        experts = settings.get('expert_dir')
        if experts:
            cli_flags.inherit(expert_store.read_config(experts),
                              os.path.join(experts, expert_store.CONFIG_FILE))
    except Exception:   # noqa: BLE001 -- a missing or broken set is reported by validate
        pass


def _one_model(ds, model, images, labels, lr, name, key) -> dict:
    """The protocol on one set with the flags' model: ``num_eval`` networks, their test
    accuracy (and validation accuracy when the data holds out a split)."""
    sets = tuple((jax.device_put(x), jax.device_put(y)) for x, y in ds.eval_splits().values())
    evaluator = evaluate.make_evaluator(model, FLAGS.num_eval, FLAGS.eval_epochs,
                                        use_dsa=FLAGS.dsa)
    with monitor.Progress(FLAGS.num_eval, 'evaluate', unit='net', mode=FLAGS.progress) as bar:
        acc = evaluator(jax.random.fold_in(key, 2), jax.device_put(images), jax.device_put(labels),
                        jnp.float32(lr), sets,
                        on_network=lambda i, a: bar.update(acc=round(100 * a[0], 2)),
                        prep=ds.preprocessing)
    s = evaluate.summarize(acc[:, 0])
    logging.info('%s: %.2f +- %.2f %% over %d networks (%d images, lr %.4g, %d epochs)',
                 name, s['mean'], s['std'], FLAGS.num_eval, len(images), lr, FLAGS.eval_epochs)
    out = dict(s, name=name, images=int(len(images)), lr=lr, epochs=FLAGS.eval_epochs)
    if ds.has_validation:
        out['validation'] = evaluate.summarize(acc[:, 1])
    return out


def _architectures(ds, syn) -> tuple[dict, dict]:
    """``--models`` as {name: Model} and each one's learning rate (``--eval_lr``, else the
    set's learned lr). ``convnet`` is the set's own ConvNet (its width, depth and norm)."""
    names = FLAGS.models or ['convnet']
    built, lrs = {}, {}
    fixed = cli_flags.eval_lrs()
    for raw in names:
        name = models.canonical_name(raw)
        if name == 'convnet':
            built[name] = models.from_config(cli_flags.model_settings(ds))
        else:
            built[name] = models.get(name, ds.image_shape, ds.num_classes, FLAGS.width)
        lrs[name] = fixed.get(name, fixed.get('*', float(syn['lr'])))
    return built, lrs


def _cross_architecture(ds, syn, key) -> dict:
    """``--models`` (and ``--report``): every architecture's networks on the set, written to
    ``--report_dir``."""
    built, lrs = _architectures(ds, syn)
    recipe = report.Recipe(FLAGS.num_eval, FLAGS.eval_epochs, use_dsa=FLAGS.dsa)
    splits = ds.eval_splits()
    total = len(built) * recipe.num_nets
    with monitor.Progress(total, 'architectures', unit='net', mode=FLAGS.progress) as bar:
        results = report.evaluate_models(
            built, syn['images'], syn['labels'], lrs, splits, recipe, jax.random.fold_in(key, 2),
            on_network=lambda name, i, a: bar.update(model=name, acc=round(100 * a['test'], 2)),
            prep=ds.preprocessing)
    for name, r in results.items():
        logging.info('%s: test %.2f +- %.2f %% over %d networks (lr %.4g, %.0f s)', name,
                     r['test']['mean'], r['test']['std'], recipe.num_nets, r['lr'],
                     r['seconds'])
    # A run folder or its best.npz is the set chosen on its selection split; any other
    # file (synthetic.npz: the last evaluated iteration) was not chosen at all.
    chosen = (os.path.isdir(FLAGS.synthetic)
              or os.path.basename(FLAGS.synthetic) == 'best.npz')
    selected = str(syn.get('selected_on', 'test')) if chosen else 'none (the set as saved)'
    out = {'title': f'Cross-architecture evaluation of {FLAGS.synthetic}',
           'set': FLAGS.synthetic, 'selected_on': selected,
           'recipe': dict(recipe._asdict(), lr='learned' if not FLAGS.eval_lr
                          else ','.join(FLAGS.eval_lr)),
           'results': results}
    if chosen and selected == 'test':
        out['note'] = ('the set was selected on the test set (no validation split), so its '
                       'test accuracies are optimistic')
    if FLAGS.report:
        subset = (f'the first {FLAGS.train_images_per_class} of each class'
                  if FLAGS.train_images_per_class else 'all of them')
        out['full_data'] = (f'{len(ds.y_train):,} training images ({subset}'
                            + (f', less {FLAGS.val_images_per_class} per class held out'
                               if FLAGS.val_images_per_class else '') + ')')
        _add_scores(out, ds, syn, built, recipe, key)
    folder = cli_flags.report_dir()
    print(report.write_report(out, folder), end='')
    logging.info('Report written to %s (cross_architecture.md, .json, .png).', folder)
    return out


def _add_scores(out, ds, syn, built, recipe, key) -> None:
    """Random-real and full-data baselines of every architecture (from the cache when
    computed before) and the set's IOR, HLR and LRS against them."""
    cache = report.BaselineCache(cli_flags.baseline_cache())
    # Where the images came from matters: TFDS's CIFAR test split is not the python
    # tarball's order, and a validation split changes the training images.
    data_key = dict(cli_flags.data_settings(), image_shape=list(ds.image_shape),
                    data_source=FLAGS.data_source or data.DEFAULT_SOURCE[FLAGS.dataset])
    soft = syn['labels'].ndim == 2
    labeller, labelled = (report.set_labeller(syn['settings'],
                                              models.from_config(cli_flags.model_settings(ds)))
                          if soft else (None, 'hard'))
    ipc = int(json.loads(json.dumps(syn['settings'])).get('ipc', len(syn['labels'])
                                                          // ds.num_classes))
    for name, model in built.items():
        r = out['results'][name]
        arch_key = {'name': name}
        if name == 'convnet':   # the set's own ConvNet
            arch_key.update({k: FLAGS[k].value for k in ('width', 'depth', 'norm')})
        random_key = dict(report.baseline_key('random', data_key, arch_key, recipe, r['lr'],
                                              ipc, FLAGS.seed), labels=labelled)
        full_recipe = recipe._replace(epochs=FLAGS.full_data_epochs or recipe.epochs)
        full_key = report.baseline_key('full', data_key, arch_key, full_recipe,
                                       FLAGS.lr_teacher, None, FLAGS.seed)
        for kind, bkey in (('random', random_key), ('full', full_key)):
            got = cache.get(bkey)
            if got is None:
                logging.info('%s: training the %s baseline (%d networks)...', name, kind,
                             recipe.num_nets)
                got = _baseline(kind, ds, model, r['lr'] if kind == 'random' else
                                FLAGS.lr_teacher, ipc,
                                recipe if kind == 'random' else full_recipe, key,
                                labeller if kind == 'random' else None)
                cache.put(bkey, got)
            else:
                logging.info('%s: %s baseline from %s.', name, kind, cache.path(bkey))
            r[kind] = got
        hard = r['test']
        if soft:   # HLR compares hard labels with hard labels: the set's images once more
            logging.info('%s: training on the set\'s images with hard labels (for HLR)...',
                         name)
            hard = report.evaluate_models(
                {name: model}, syn['images'], syn['classes'], {name: r['lr']},
                {'test': ds.eval_splits()['test']}, recipe, jax.random.fold_in(key, 2),
                prep=ds.preprocessing)[name]['test']
            r['hard_labels'] = hard
        r['scores'] = report.scores_per_run(r['test']['all'], r['random']['all'], hard['all'],
                                            r['full']['all'], FLAGS.lrs_weight)
        sc = r['scores']
        logging.info('%s: IOR %.2f, HLR %.2f, LRS %.2f (points of accuracy; LRS in %%; means '
                     'over %d runs)', name, sc['IOR'], sc['HLR'], sc['LRS'], sc['runs'])
    if soft:
        out['scores_note'] = (
            'soft labels: HLR trains the images once more with their classes, and the random '
            f'real images of IOR are labelled as the set is ({labelled}), as DD-Ranking '
            'defines them')


def _baseline(kind, ds, model, lr, ipc, recipe, key, labeller=None) -> dict:
    """Test accuracy of random real images (a fresh draw of ``ipc`` per class for each
    network, labelled by ``labeller`` when given: :func:`report.set_labeller`) or of the
    whole training set, trained with ``recipe``."""
    one_net = evaluate.make_evaluator(model, 1, recipe.epochs, recipe.batch_size,
                                      recipe.momentum, recipe.weight_decay, recipe.use_dsa)
    test = ((jax.device_put(data.arrays.materialize(ds.x_test)), jax.device_put(ds.y_test)),)
    accs = []
    with monitor.Progress(recipe.num_nets, f'{kind} baseline', unit='net',
                          mode=FLAGS.progress) as bar:
        for i in range(recipe.num_nets):
            k = jax.random.fold_in(jax.random.fold_in(key, 3), i)
            if kind == 'random':
                x, y = data.random_per_class(k, ds.x_train, ds.y_train, ds.num_classes, ipc)
                x = ds.prepare(x)
                if labeller is not None:
                    y = labeller(jnp.asarray(x), y)
            else:
                x, y = data.arrays.materialize(ds.x_train), ds.y_train
            acc = float(one_net(k, jax.device_put(x), jax.device_put(y), jnp.float32(lr), test,
                                prep=ds.preprocessing)[0, 0])
            accs.append(acc)
            bar.update(acc=round(100 * acc, 2))
    return dict(evaluate.summarize(accs), lr=float(lr), ipc=ipc if kind == 'random' else None,
                epochs=recipe.epochs)


def main(argv):
    del argv
    if FLAGS.synthetic:
        _inherit_from_set(FLAGS.synthetic)
    elif FLAGS['expert_dir'].present:
        cli_flags.inherit_from_experts()
    validate.raise_if_any(validate.evaluate_command_problems(), 'evaluation')
    ds = cli_flags.load_data()
    model = models.from_config(cli_flags.model_settings(ds))
    key = jax.random.key(FLAGS.seed)
    if FLAGS.synthetic:
        syn = evaluate.load_synthetic(FLAGS.synthetic)
        for k, v in cli_flags.data_settings().items():
            stored = syn['settings'].get(k, cli_flags.DATA_DEFAULTS.get(k))
            if stored != v:
                raise ValueError(f'The synthetic set was distilled with {k}={stored!r} but this '
                                 f'run has {k}={v!r}; pass the same data flags (or leave '
                                 'them out).')
        if FLAGS.export:
            prep = interop.export_set(syn, ds, FLAGS.export, FLAGS.export_names)
            if not prep['learned']:
                logging.warning('%s never changed from its initial real images (every update '
                                'of its run was skipped); preprocessing.json says '
                                '"learned": false.', FLAGS.synthetic)
            logging.info('Wrote %s: %s, preprocessing.json%s.', FLAGS.export,
                         ', '.join(prep['files'].values()),
                         ', zca.pt' if ds.zca is not None else '')
            print(json.dumps({'export': FLAGS.export, 'images': int(len(syn['images']))}))
            return
        if FLAGS.models or FLAGS.report:
            print(json.dumps(_cross_architecture(ds, syn, key)['results']))
            return
        images, labels, lr, name = syn['images'], syn['labels'], float(syn['lr']), FLAGS.synthetic
    elif FLAGS.baseline == 'random':
        images, labels = data.random_per_class(jax.random.fold_in(key, 1), ds.x_train,
                                               ds.y_train, ds.num_classes, FLAGS.ipc)
        images = ds.prepare(images)
        lr, name = FLAGS.lr_teacher, f'random real, ipc {FLAGS.ipc}'
    else:
        images, labels = data.arrays.materialize(ds.x_train), ds.y_train
        lr, name = FLAGS.lr_teacher, 'full training set'
    print(json.dumps(_one_model(ds, model, images, labels, lr, name, key)))


def run():
    """Console script ``mct-evaluate``."""
    app.run(main)


if __name__ == '__main__':
    run()
