"""End to end through the real command lines, offline: experts -> distill -> evaluate."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, last_json, run_command, write_user_nets
from mct_jax import data

TINY = ['--dataset=digits', '--train_images_per_class=10', '--width=8', '--depth=3',
        '--num_experts=2', '--train_epochs=3', '--batch_train=32', '--save_full_trajectory',
        '--ipc=2', '--syn_steps=3', '--expert_epochs=1', '--max_start_epoch=2',
        '--lr_img=100', '--iterations=4', '--eval_every=2', '--num_eval=2', '--eval_epochs=5']
DISTILL_ONLY = ['--syn_steps=3', '--expert_epochs=1', '--max_start_epoch=2', '--lr_img=100',
                '--iterations=2', '--eval_every=2', '--num_eval=1', '--eval_epochs=2']
ABSL_PREFIX = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d')


@pytest.fixture(scope='module')
def tiny_experts(tmp_path_factory):
    """Two TINY experts trained by the command line, shared by the tests that only read
    them: (folder, the command's finished process)."""
    experts = str(tmp_path_factory.mktemp('cli') / 'experts')
    return experts, run_command('expert', *TINY, f'--expert_dir={experts}')


@pytest.fixture(scope='module')
def tiny_set(tiny_experts, tmp_path_factory):
    """A 1-image-per-class set distilled from :func:`tiny_experts` with only the
    distillation flags (the rest taken from the experts): (folder, the finished process)."""
    out = str(tmp_path_factory.mktemp('cli') / 'run')
    return out, run_command('distill', f'--expert_dir={tiny_experts[0]}', f'--out_dir={out}',
                            '--ipc=1', *DISTILL_ONLY)


@pytest.mark.slow
def test_pipeline_through_the_command_lines(tmp_path, tiny_experts):
    experts, out = tiny_experts[0], str(tmp_path / 'run')
    assert sorted(os.listdir(experts)) == ['config.json', 'expert_0000', 'expert_0001',
                                           'tensorboard']
    for name in ('expert.png', 'metrics.jsonl', 'meta.json', 'state', 'full'):
        assert os.path.exists(os.path.join(experts, 'expert_0000', name)), name
    assert not os.path.exists(os.path.join(experts, 'expert_0000', 'progress'))
    for method, samples in (('mct', 1), ('mtt', 2)):
        proc = run_command('distill', *TINY, f'--expert_dir={experts}',
                           f'--out_dir={out}_{method}', f'--method={method}',
                           f'--num_samples={samples}')
        result = last_json(proc)
        assert result['iteration'] == 4
        with np.load(os.path.join(f'{out}_{method}', 'best.npz')) as z:
            assert z['images'].shape == (20, 16, 16, 1) and z['labels'].shape == (20,)
            assert np.all(np.isfinite(z['images'])) and float(z['lr']) > 0
            assert json.loads(str(z['settings']))['method'] == method
        assert 'distill 4/4' in proc.stderr   # progress lines (no terminal: log mode)
        _check_run_outputs(f'{out}_{method}')
    proc = run_command('evaluate', *TINY, f'--synthetic={out}_mct')
    summary = last_json(proc)
    assert 0 <= summary['mean'] <= 100 and len(summary['all']) == 2
    # re-running the expert command trains nothing new
    proc = run_command('expert', *TINY, f'--expert_dir={experts}')
    assert 'training []' in proc.stderr


@pytest.mark.slow
def test_distill_and_evaluate_take_the_settings_of_the_experts(tmp_path, tiny_experts,
                                                                 tiny_set):
    """Experts trained with non-default data and model flags (10 images per class, width 8):
    distill needs only --expert_dir, --out_dir and --ipc (plus its own hyperparameters),
    evaluate only --synthetic; both say what they took. A contradicting --width is refused
    with the difference named, and nothing is written."""
    (experts, proc), (out, distilled) = tiny_experts, tiny_set
    lines = proc.stderr.splitlines()   # console lines are about the run
    assert lines and 'experts' in lines[0], lines[:3]
    assert not [l for l in lines if 'tpu' in l.lower() or ABSL_PREFIX.match(l)], lines
    proc = distilled
    assert (f'Using --train_images_per_class=10, --width=8 from '
            f'{os.path.join(experts, "config.json")}.') in proc.stderr, proc.stderr[-2000:]
    assert not [l for l in proc.stderr.splitlines() if ABSL_PREFIX.match(l)]
    with np.load(os.path.join(out, 'best.npz')) as z:
        settings = json.loads(str(z['settings']))
        assert z['images'].shape == (10, 16, 16, 1)
    assert (settings['width'], settings['train_images_per_class']) == (8, 10)
    # where the experts and data are, absolute, for commands run from another folder
    assert settings['expert_dir'] == os.path.abspath(experts) and 'data_source' in settings
    proc = run_command('evaluate', f'--synthetic={out}', '--num_eval=1', '--eval_epochs=2')
    assert f'--width=8 from {out}' in proc.stderr
    assert last_json(proc)['images'] == 10
    wide = str(tmp_path / 'wide')
    proc = run_command('distill', f'--expert_dir={experts}', f'--out_dir={wide}', '--ipc=1',
                       '--width=16', *DISTILL_ONLY, check=False)
    assert proc.returncode == 2
    assert f'{experts} holds experts with width=8 but the flags say 16' in proc.stderr
    assert not os.path.exists(wide)
    # with --log_prefix, absl's own format (the finished run resumes at its end)
    proc = run_command('distill', f'--expert_dir={experts}', f'--out_dir={out}', '--ipc=1',
                       *DISTILL_ONLY, '--log_prefix')
    assert any(ABSL_PREFIX.match(l) for l in proc.stderr.splitlines())


@pytest.mark.slow
def test_cross_architecture_report_through_the_command_line(tmp_path):
    """evaluate --models --report on a distilled set: a row per architecture with its
    validation and test accuracy, baselines trained once and then read from the cache, and
    the table, JSON and chart on disk."""
    experts, out = str(tmp_path / 'experts'), str(tmp_path / 'run')
    tiny = [a for a in TINY if not a.startswith('--train_images_per_class')]
    data = ['--train_images_per_class=10', '--val_images_per_class=5']
    run_command('expert', *tiny, *data, f'--expert_dir={experts}')
    run_command('distill', f'--expert_dir={experts}', f'--out_dir={out}', '--ipc=1', *DISTILL_ONLY)
    args = [f'--synthetic={out}', '--models=convnet,mlp', '--report', '--num_eval=2',
            '--eval_epochs=2', '--full_data_epochs=1', f'--baseline_cache={tmp_path}/cache']
    first = run_command('evaluate', *args)
    md = open(os.path.join(out, 'evaluation', 'cross_architecture.md')).read()
    for arch in ('convnet', 'mlp'):
        assert f'| {arch} |' in md
    assert 'selected on: validation' in md and 'IOR' in md
    results = last_json(first)
    assert set(results) == {'convnet', 'mlp'}
    for r in results.values():
        assert len(r['test']['all']) == 2 and len(r['validation']['all']) == 2
        assert set(r['scores']) >= {'IOR', 'HLR', 'LRS'}
        assert r['scores']['IOR'] == pytest.approx(r['test']['mean'] - r['random']['mean'])
    assert 'training the random baseline' in first.stderr
    assert os.path.isfile(os.path.join(out, 'evaluation', 'cross_architecture.png'))
    second = run_command('evaluate', *args)
    assert 'training the' not in second.stderr and 'baseline from' in second.stderr
    again = last_json(second)
    assert again['mlp']['random'] == results['mlp']['random']


@pytest.mark.slow
def test_a_users_flax_module_through_expert_distill_and_evaluate(tmp_path):
    """--model=package.module:Name: a Flax module defined outside the package is the network
    of the experts and the student (recorded, so distill and evaluate take it from the
    experts), and evaluates the set beside the built-in ConvNet with --models. A path that
    does not import, or a module with the wrong number of outputs, is refused before any
    work, naming it."""
    (tmp_path / 'usernets').mkdir()
    (tmp_path / 'usernets' / '__init__.py').write_text('')
    write_user_nets(tmp_path / 'usernets' / 'nets.py')
    user = dict(PYTHONPATH=str(tmp_path))
    experts, out = str(tmp_path / 'experts'), str(tmp_path / 'run')
    run_command('expert', *TINY, f'--expert_dir={experts}', '--model=usernets.nets:TinyNet',
                **user)
    assert json.load(open(os.path.join(experts, 'config.json')))['model'] == \
        'usernets.nets:TinyNet'
    proc = run_command('distill', f'--expert_dir={experts}', f'--out_dir={out}', '--ipc=1',
                       *DISTILL_ONLY, **user)
    assert '--model=usernets.nets:TinyNet' in proc.stderr
    with np.load(os.path.join(out, 'best.npz')) as z:
        assert json.loads(str(z['settings']))['model'] == 'usernets.nets:TinyNet'
    args = [f'--synthetic={out}', '--num_eval=1', '--eval_epochs=2',
            f'--report_dir={tmp_path}/report']
    proc = run_command('evaluate', *args, '--models=convnet,usernets.nets:TinyNet', **user)
    results = last_json(proc)
    assert set(results) == {'convnet', 'usernets.nets:TinyNet'}
    assert 0 <= results['usernets.nets:TinyNet']['test']['mean'] <= 100
    assert '| usernets.nets:TinyNet |' in open(tmp_path / 'report' / 'cross_architecture.md').read()
    bad = run_command('evaluate', *args, '--models=usernets.nope:TinyNet', check=False, **user)
    assert bad.returncode != 0 and "cannot import 'usernets.nope'" in bad.stderr
    assert 'Traceback' not in bad.stderr
    wrong = run_command('expert', *TINY, f'--expert_dir={tmp_path}/wrong',
                 '--model=usernets.nets:ThreeOutputs', check=False, **user)
    assert wrong.returncode == 2 and 'to (2, 3), not (2, 10)' in wrong.stderr, wrong.stderr
    assert not os.path.exists(tmp_path / 'wrong')
    other = run_command('distill', f'--expert_dir={experts}', f'--out_dir={out}_c', '--ipc=1',
                        '--model=convnet', *DISTILL_ONLY, check=False, **user)
    assert other.returncode == 2 and "model='usernets.nets:TinyNet'" in other.stderr


@pytest.mark.slow
def test_report_under_the_ddranking_protocol(tmp_path, tiny_set):
    """--protocol=ddranking: the random baseline searches the package's five lrs (each run
    keeps its best), the ConvNet is 128 wide, every score names the protocol, and a run too
    short to reach a checkpoint is refused before any work."""
    out = tiny_set[0]
    cache = tmp_path / 'cache'
    common = [f'--synthetic={out}', '--report', '--protocol=ddranking', '--num_eval=1',
              f'--baseline_cache={cache}', f'--report_dir={tmp_path}/report']
    short = run_command('evaluate', *common, '--eval_epochs=2', check=False)
    assert short.returncode != 0 and 'tests every 10 epochs' in short.stderr
    proc = run_command('evaluate', *common, '--eval_epochs=10')
    r = last_json(proc)['convnet']
    assert r['random']['lr'] == [0.001, 0.005, 0.01, 0.05, 0.1]
    assert len(r['random']['best_lr']) == 1 and r['random']['best_lr'][0] in r['random']['lr']
    assert r['scores']['protocol'] == 'ddranking'
    md = open(tmp_path / 'report' / 'cross_architecture.md').read()
    assert 'protocol: ddranking: each network\'s best test accuracy' in md
    keys = [json.load(open(os.path.join(cache, f)))['key']
            for f in os.listdir(cache) if f.endswith('.json')]
    assert {k['architecture']['width'] for k in keys} == {128}
    full = [k for k in keys if k['baseline'] == 'full'][0]
    assert (full['lr'], full['recipe']['lr_step'], full['recipe']['use_dsa']) == (0.01, 100,
                                                                                 False)


@pytest.mark.slow
def test_soft_label_report_takes_hlr_from_hard_labels(tmp_path, tiny_experts):
    """A set with teacher soft labels, scored: HLR compares the full data with the set's
    images trained on their classes (DD-Ranking's definition), IOR uses the set's own labels,
    each averaged over the runs; an unselected synthetic.npz is said to be unselected, the
    full data is named, and the baseline cache key holds the data source."""
    experts, out = tiny_experts[0], str(tmp_path / 'run')
    run_command('distill', f'--expert_dir={experts}', f'--out_dir={out}', '--ipc=1',
                '--labels=teacher', *DISTILL_ONLY)
    cache = tmp_path / 'cache'
    proc = run_command('evaluate', f'--synthetic={out}/synthetic.npz', '--models=convnet',
                       '--report', '--num_eval=2', '--eval_epochs=2', '--full_data_epochs=1',
                       f'--baseline_cache={cache}', f'--report_dir={tmp_path}/report')
    r = last_json(proc)['convnet']
    hard, sc = r['hard_labels'], r['scores']
    assert len(hard['all']) == 2 and sc['runs'] == 2
    assert sc['HLR'] == pytest.approx(r['full']['mean'] - hard['mean'], abs=1e-6)
    assert sc['IOR'] == pytest.approx(r['test']['mean'] - r['random']['mean'], abs=1e-6)
    md = open(tmp_path / 'report' / 'cross_architecture.md').read()
    assert 'selected on: none (the set as saved)' in md and 'optimistic' not in md
    assert 'full data: 100 training images (the first 10 of each class)' in md
    assert 'soft labels: HLR trains the images once more with their classes' in md
    assert 'labelled as the set is (teacher (expert 0, epoch 2, temperature 1))' in md
    keys = [json.load(open(os.path.join(cache, f)))['key']
            for f in os.listdir(cache) if f.endswith('.json')]
    assert keys and all(k['data']['data_source'] == 'sklearn' for k in keys)
    assert [k['labels'] for k in keys if k['baseline'] == 'random'] == [
        'teacher (expert 0, epoch 2, temperature 1)']
    # The random images are labelled as distillation labelled the set: a run whose updates
    # are all skipped keeps its initial images, and re-labelling them gives its labels.
    still = str(tmp_path / 'still')
    run_command('distill', f'--expert_dir={experts}', f'--out_dir={still}', '--ipc=1',
                '--labels=teacher', *DISTILL_ONLY, '--lr_lr=1000')
    from mct_jax import evaluate, models
    from mct_jax.evaluate import ranking
    syn = evaluate.load_synthetic(os.path.join(still, 'best.npz'))
    assert not bool(syn['changed'])
    labeller, _ = ranking.set_labeller(syn['settings'], models.from_config(syn['settings']))
    np.testing.assert_allclose(labeller(syn['images'], syn['classes']), syn['labels'],
                               rtol=1e-5, atol=1e-6)


def _read_events(folder):
    """(tag, step, value) of every scalar in a folder's TensorBoard event files, read with
    the record format (length, CRC, Event proto) rather than with the writer."""
    import struct

    from tensorboardX.proto import event_pb2
    out = []
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), 'rb') as f:
            buf = f.read()
        i = 0
        while i < len(buf):
            (n,) = struct.unpack('<Q', buf[i:i + 8])
            event = event_pb2.Event.FromString(buf[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.append((v.tag, event.step, v.simple_value if v.HasField('simple_value')
                            else 'image'))
    return out


def _check_run_outputs(run):
    """Metrics, TensorBoard events, image grids and plots of a 4-iteration, ipc-2 run."""
    from PIL import Image
    lines = [json.loads(l) for l in open(os.path.join(run, 'metrics.jsonl'))]
    assert [l['iteration'] for l in lines if 'eval' in l] == [0, 2, 4]
    assert len([l for l in lines if 'loss' in l]) == 4
    events = _read_events(os.path.join(run, 'tensorboard'))
    losses = {step: v for tag, step, v in events if tag == 'train/matching_loss'}
    assert losses == pytest.approx({l['iteration']: l['loss'] for l in lines if 'loss' in l})
    assert {step for tag, step, _ in events if tag == 'eval/accuracy_mean'} == {0, 2, 4}
    assert {step for tag, step, v in events if v == 'image'} == {0, 2, 4}
    assert sorted(os.listdir(os.path.join(run, 'images'))) == [
        'iteration_000000.png', 'iteration_000002.png', 'iteration_000004.png']
    grid = np.asarray(Image.open(os.path.join(run, 'synthetic.png')))
    # 10 classes of 2 images, 16 px digits enlarged to 32 px, 2 px gaps
    assert grid.shape[0] == 10 * 34 + 2 and grid.shape[2] == 3
    with np.load(os.path.join(run, 'synthetic.npz')) as z:
        first = np.clip(np.round(z['images_display'][0, :, :, 0] * 255), 0, 255)
    w = grid.shape[1] - (2 * 34 + 2)   # the class-name margin
    np.testing.assert_array_equal(grid[2:34:2, w + 2:w + 34:2, 0], first)
    assert Image.open(os.path.join(run, 'progress.png')).size[0] > 600


@pytest.mark.parametrize('args,message', [
    (['--dataset=imagenet'], 'dataset'),
    (['--dataset=cifar10', '--data_source=npz', '--data_dir=/nonexistent'], 'does not exist'),
    (['--anchors=0,5,3'], 'strictly increasing'),
    (['--anchors=0,2'], 'must start at 0 and end'),
])
def test_expert_command_reports_bad_input(args, message, tmp_path, parse_flags):
    """The expert command's steps, in this process, stop at the bad input with its message
    (an unknown choice already when the flags are parsed) and write nothing."""
    from absl import flags
    from mct_jax.expert import __main__ as expert_command
    with pytest.raises((ValueError, data.DataError, flags.Error), match=message):
        parse_flags(*TINY, f'--expert_dir={tmp_path}/experts', *args)
        expert_command.main(['prog'])
    assert not os.path.exists(tmp_path / 'experts')


def test_the_expert_command_prints_a_data_error_without_a_traceback(tmp_path):
    proc = run_command('expert', *TINY, f'--expert_dir={tmp_path}', '--dataset=cifar10',
                       '--data_source=npz', '--data_dir=/nonexistent', check=False)
    assert proc.returncode == 2 and 'does not exist' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr


def test_distill_without_experts_says_what_to_run(tmp_path):
    proc = run_command('distill', *TINY, f'--expert_dir={tmp_path}/none', check=False)
    assert proc.returncode == 2 and 'python -m mct_jax.expert' in proc.stderr


PRESETS = sorted(f for f in os.listdir(os.path.join(REPO, 'experiments')) if f.endswith('.cfg'))


_PRESET_CHECK = """
import json, sys
from absl import flags
from mct_jax import data, distill
from mct_jax.cli import flags as cli_flags, validate
FLAGS = flags.FLAGS
out = {}
for preset in sys.argv[1:]:
    FLAGS.unparse_flags()
    FLAGS(['x', f'--flagfile=experiments/{preset}', '--iterations=7', '--seed=3'])
    s = cli_flags.distill_settings()
    per_class = FLAGS.train_images_per_class or 500
    problems = distill.check_settings(s, FLAGS.train_epochs,
                                      [per_class] * data.NUM_CLASSES[FLAGS.dataset], 1)
    problems += validate.model_problems()
    out[preset] = {'problems': problems, 'overridden': [s.iterations, s.seed]}
print(json.dumps(out))
"""


@pytest.fixture(scope='module')
def preset_results():
    proc = subprocess.run([sys.executable, '-c', _PRESET_CHECK, *PRESETS], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return last_json(proc)


def test_presets_cover_every_dataset_and_ipc():
    for ds in ('cifar10', 'cifar100', 'tiny'):
        for ipc in (1, 10, 50):
            assert f'{ds}_ipc{ipc}.cfg' in PRESETS
    assert len([p for p in PRESETS if p.endswith('_mct_authors.cfg')]) == 3
    for ds in data.IMAGENET_SUBSETS + ('imagenet64',):   # MTT's subsets, TESLA's ImageNet-1K
        assert f'{ds}_ipc1.cfg' in PRESETS
    for ds in ('cifar10', 'cifar100', 'tiny'):   # the paper's waypoints and DATM's settings
        for ipc in (1, 10, 50):
            assert {f'{ds}_ipc{ipc}_mct_paper.cfg', f'{ds}_ipc{ipc}_datm.cfg'} <= set(PRESETS)


@pytest.mark.parametrize('preset', PRESETS)
def test_presets_parse_and_validate(preset, preset_results):
    """Every flagfile parses with every entry point's flags, takes command-line overrides
    and passes the settings check; its header gives the commands that use it."""
    result = preset_results[preset]
    assert result['problems'] == []
    assert result['overridden'] == [7, 3]
    text = open(os.path.join(REPO, 'experiments', preset)).read()
    assert text.startswith('#') and '\n# Follows: ' in text.split('\n--')[0]
    assert f'python -m mct_jax.distill --flagfile=experiments/{preset}' in text
    if preset.startswith(('cifar10_ipc', 'cifar100', 'tiny', 'image')):
        assert 'Published ConvNet accuracy' in text and 'Needs:' in text


def test_flag_glossary_lists_every_flag():
    """docs/flags.md is the generated glossary of every flag, as the code defines them now."""
    from absl import flags

    from mct_jax.cli import flags as cli_flags
    names = [f.name for f in flags.FLAGS.flags_by_module_dict()['mct_jax.cli.flags']]
    glossary = open(os.path.join(REPO, 'docs', 'flags.md')).read()
    missing = [n for n in names if f'| `--{n}` |' not in glossary]
    assert not missing and len(names) > 40, missing
    assert glossary == cli_flags.glossary(), 'docs/flags.md is stale: regenerate it (see its head)'


def test_commands_start_with_the_xla_flags_this_jaxlib_knows(monkeypatch):
    from mct_jax.cli import app
    emitters = '--xla_cpu_use_fusion_emitters=false'
    assert emitters not in app.xla_flags(jaxlib_version='0.5.3')   # before the flag existed
    for version in ('0.6.0', '0.7.0rc1', '0.10.2'):
        assert emitters in app.xla_flags(jaxlib_version=version)
    assert app.xla_flags(['--own=1'], '0.10.2') == [emitters, '--own=1']
    # The user's own setting of a flag stays; the others are added after the user's.
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2 '
                       '--xla_cpu_use_fusion_emitters=true')
    app.add_xla_flags(app.xla_flags(['--xla_cpu_enable_fast_math=false'], '0.10.2'))
    assert os.environ['XLA_FLAGS'].split() == [
        '--xla_force_host_platform_device_count=2', '--xla_cpu_use_fusion_emitters=true',
        '--xla_cpu_enable_fast_math=false']


def test_the_installed_jaxlib_accepts_every_commands_xla_flags():
    # XLA ends a process whose XLA_FLAGS name a flag it does not know; this one compiles a
    # program with the expert command's flags, the longest list.
    code = ('import os; from mct_jax.cli import app; from mct_jax.expert import __main__ as e; '
            'os.environ["XLA_FLAGS"] = " ".join(app.xla_flags(e.XLA_FLAGS)); '
            'import jax; print(jax.jit(lambda x: x + 1)(1), os.environ["XLA_FLAGS"])')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, XLA_FLAGS=''))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == '2' and 'fusion_emitters=false' in out.stdout
