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
from mct_jax.evaluate import ranking, report

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


def _architectures(ds, syn, protocol) -> tuple[dict, dict, dict]:
    """``--models`` as {name: Model}, each one's learning rate (``--eval_lr``, else the set's
    learned lr) and what identifies it in the baseline cache. ``convnet`` is the set's own
    ConvNet (its width, depth and norm; the protocol's width when it fixes one)."""
    names = FLAGS.models or ['convnet']
    built, lrs, keys = {}, {}, {}
    fixed = cli_flags.eval_lrs()
    width = protocol.convnet_width or FLAGS.width
    for raw in names:
        name = models.canonical_name(raw)
        keys[name] = {'name': name}
        if name == 'convnet':
            config = dict(cli_flags.model_settings(ds), width=width)
            built[name] = models.from_config(config)
            keys[name].update({k: config[k] for k in ('width', 'depth', 'norm')})
        else:
            built[name] = models.get(name, ds.image_shape, ds.num_classes, FLAGS.width)
        lrs[name] = fixed.get(name, fixed.get('*', float(syn['lr'])))
    return built, lrs, keys


def _cross_architecture(ds, syn, key) -> dict:
    """``--models`` (and ``--report``): every architecture's networks on the set, written to
    ``--report_dir``."""
    protocol = ranking.PROTOCOLS[FLAGS.protocol if FLAGS.report else 'mct_jax']
    built, lrs, arch_keys = _architectures(ds, syn, protocol)
    soft = syn['labels'].ndim == 2
    recipe = protocol.recipe(report.Recipe(FLAGS.num_eval, FLAGS.eval_epochs,
                                           use_dsa=FLAGS.dsa), soft)
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
        out['protocol'] = protocol.describe()
        subset = (f'the first {FLAGS.train_images_per_class} of each class'
                  if FLAGS.train_images_per_class else 'all of them')
        out['full_data'] = (f'{len(ds.y_train):,} training images ({subset}'
                            + (f', less {FLAGS.val_images_per_class} per class held out'
                               if FLAGS.val_images_per_class else '') + ')')
        _add_scores(out, ds, syn, built, arch_keys, recipe, protocol, key)
    folder = cli_flags.report_dir()
    print(report.write_report(out, folder), end='')
    logging.info('Report written to %s (cross_architecture.md, .json, .png).', folder)
    return out


def _add_scores(out, ds, syn, built, arch_keys, recipe, protocol, key) -> None:
    """Random-real and full-data baselines of every architecture (cached) and the set's
    IOR, HLR and LRS against them (:func:`ranking.score_architectures`)."""
    # Where the images came from matters: TFDS's CIFAR test split is not the python
    # tarball's order, and a validation split changes the training images.
    data_key = dict(cli_flags.data_settings(), image_shape=list(ds.image_shape),
                    data_source=FLAGS.data_source or data.DEFAULT_SOURCE[FLAGS.dataset])
    soft = syn['labels'].ndim == 2
    labeller, labelled = (ranking.set_labeller(syn['settings'],
                                               models.from_config(cli_flags.model_settings(ds)))
                          if soft else (None, 'hard'))
    ipc = int(syn['settings'].get('ipc', len(syn['labels']) // ds.num_classes))
    ranking.score_architectures(
        out['results'], built, syn, ds, recipe, protocol, key,
        ranking.BaselineCache(cli_flags.baseline_cache()), data_key, arch_keys,
        full_lr=FLAGS.lr_teacher, full_epochs=FLAGS.full_data_epochs, ipc=ipc, seed=FLAGS.seed,
        labeller=labeller, labelled=labelled, weight=FLAGS.lrs_weight, progress=FLAGS.progress)
    if soft:
        out['scores_note'] = (
            'soft labels: HLR trains the images once more with their classes, and the random '
            f'real images of IOR are labelled as the set is ({labelled}), as DD-Ranking '
            'defines them')


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
