"""Bad input is caught before any data is loaded: one table of cases, each with its message."""

import json
import os
import sys

import pytest
from absl import flags

from conftest import run_command, write_user_nets
from mct_jax.cli import flags as _defines  # noqa: F401  (defines every flag)
from mct_jax.cli import validate

FLAGS = flags.FLAGS

BASE = ['--dataset=digits', '--width=8', '--train_images_per_class=10', '--num_experts=2',
        '--train_epochs=4', '--ipc=1', '--syn_steps=2', '--expert_epochs=1',
        '--max_start_epoch=2', '--batch_syn=0']


@pytest.fixture
def parse(parse_flags):
    """Parses :data:`BASE` and ``args`` into the global FLAGS for one test."""
    return lambda *args: parse_flags(*BASE, *args)


def _experts(folder, complete=True, **overrides):
    """A folder that looks like finished experts (config.json, meta.json) without training."""
    config = {'dataset': 'digits', 'train_images_per_class': 10, 'zca': False, 'width': 8,
              'depth': 3, 'norm': 'instancenorm', 'train_epochs': 4, 'lr_teacher': 0.01,
              'batch_train': 256, 'smooth_anchors': False, 'save_full_trajectory': True,
              'seed': 0, 'anchors': [0, 4]}
    config.update(overrides)
    os.makedirs(os.path.join(folder, 'expert_0000'), exist_ok=True)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(config, f)
    if complete:
        with open(os.path.join(folder, 'expert_0000', 'meta.json'), 'w') as f:
            f.write('{}')
    return folder


# (name, command, make(tmp) -> extra flags, expected message)
CASES = [
    ('no experts', 'distill', lambda t: [f'--expert_dir={t}/none'], 'No experts in'),
    ('experts incomplete', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e", complete=False)}'], 'no complete expert'),
    ('experts of another width', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e", width=32)}'], 'width=32'),
    ('experts with ZCA, run without', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e", zca=True)}'], 'zca=True'),
    ('experts on other images', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e", train_images_per_class=50)}'],
     'train_images_per_class=50'),
    ('MTT without full trajectories', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e", save_full_trajectory=False)}',
                '--method=mtt'], 'without --save_full_trajectory'),
    ('start + M beyond the trajectory', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--max_start_epoch=4'], 'goes beyond'),
    ('ipc larger than a class', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--ipc=11'], 'larger than class'),
    ('batch_syn larger than the set', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--batch_syn=11'],
     'larger than the synthetic set'),
    ('zero lr_img', 'distill', lambda t: [f'--expert_dir={_experts(t + "/e")}', '--lr_img=0'],
     '--lr_img=0.0 must be positive'),
    ('negative lr_lr', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--lr_lr=-1e-5'], '--lr_lr=-1e-05 must'),
    ('zero initial learned lr', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--lr_syn_init=0'], 'must be positive'),
    ('no student steps', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--syn_steps=0'], '--syn_steps=0'),
    ('fractional M for MTT', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--method=mtt', '--expert_epochs=1.5'],
     'whole number of epochs'),
    ('integer starts below 1', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--start_sampling=integer',
                '--max_start_epoch=0.5'], '>= 1 for integer'),
    ('no evaluation networks', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--num_eval=0'], '--num_eval'),
    ('out_dir is a file', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', f'--out_dir={_file(t)}'], 'is a file'),
    ('out_dir below a file', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', f'--out_dir={_file(t)}/run'],
     'cannot be written'),
    ('npz folder missing', 'distill',
     lambda t: ['--data_source=npz', f'--data_dir={t}/nothing'], 'does not exist'),
    ('npz folder without test.npz', 'expert',
     lambda t: ['--data_source=npz', f'--data_dir={_npz_dir(t)}'], 'has no test.npz'),
    ('npz without data_dir', 'expert', lambda t: ['--data_source=npz'], 'needs --data_dir'),
    ('source the dataset has not', 'expert', lambda t: ['--data_source=folder'],
     'folder'),
    ('Tiny ImageNet folder without wnids.txt', 'expert',
     lambda t: ['--dataset=tiny_imagenet', '--data_source=folder', f'--data_dir={t}'],
     'wnids.txt not found'),
    ('network too deep for the images', 'expert', lambda t: ['--depth=5'], 'halves'),
    ('anchors out of order', 'expert', lambda t: ['--anchors=0,3,2,4'], 'increasing'),
    ('anchors not ending at K', 'expert', lambda t: ['--anchors=0,2'], 'must start at 0 and end'),
    ('no experts asked for', 'expert', lambda t: ['--num_experts=0'], '--num_experts=0'),
    ('expert folder with other epochs', 'expert',
     lambda t: [f'--expert_dir={_experts(t + "/e", train_epochs=9)}'], 'train_epochs=9'),
    ('expert_dir is a file', 'expert', lambda t: [f'--expert_dir={_file(t)}'], 'is a file'),
    ('zero training images per class', 'expert', lambda t: ['--train_images_per_class=0'],
     'at least 1'),
    ('evaluate: nothing to evaluate', 'evaluate', lambda t: [], 'exactly one of'),
    ('evaluate: no synthetic set there', 'evaluate', lambda t: [f'--synthetic={t}'],
     'No synthetic set'),
    ('negative validation split', 'expert', lambda t: ['--val_images_per_class=-1'],
     '--val_images_per_class=-1 must be >= 0'),
    ('experts with another validation split', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e", val_images_per_class=5)}'],
     'val_images_per_class=5'),
    ('evaluate: unknown architecture', 'evaluate',
     lambda t: [f'--synthetic={t}', '--models=convnet,densenet'], 'Unknown architecture'),
    ('evaluate: architectures without a set', 'evaluate',
     lambda t: ['--baseline=full', '--models=alexnet'], 'give --synthetic=RUN'),
    ('evaluate: an lr that is not a number', 'evaluate',
     lambda t: ['--baseline=full', '--eval_lr=alexnet=fast'], 'neither a number'),
    ('evaluate: LRS weight outside [0, 1]', 'evaluate',
     lambda t: ['--baseline=full', '--lrs_weight=2'], 'must lie in [0, 1]'),
    ('learned labels with no lr', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--labels=learned', '--lr_labels=0'],
     '--lr_labels=0.0 must be positive'),
    ('labels momentum of 1', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--labels_momentum=1'],
     '--labels_momentum=1.0 must lie in [0, 1)'),
    ('zero label temperature', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--label_temperature=0'],
     '--label_temperature=0.0 must be positive'),
    ('label epoch beyond the experts', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--labels=teacher', '--label_epoch=9'],
     '--label_epoch=9.0 must lie in [0, 4]'),
    ('negative label expert', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--label_expert=-1'],
     '--label_expert=-1 must be >= 0'),
    ('window lower bound above the upper', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--min_start_epoch=2'],
     'leaves no start below'),
    ('window shrinking', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--max_start_epoch_final=1',
                '--window_iterations=10'], 'the window only grows'),
    ('window bound beyond the experts', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--max_start_epoch_final=4',
                '--window_iterations=10'], 'goes beyond the experts'),
    ('growing window without its length', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--max_start_epoch_final=3'],
     'needs --window_iterations'),
    ('window length without a final bound', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--window_iterations=10'],
     'needs --max_start_epoch_final'),
    ('negative lr decay period', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--lr_img_decay_every=-1'],
     '--lr_img_decay_every=-1 must be >= 0'),
    ('lr decay rate of zero', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', '--lr_img_decay_rate=0'],
     '--lr_img_decay_rate=0.0 must lie in (0, 1]'),
    ('evaluate: random ipc above the class size', 'evaluate',
     lambda t: ['--baseline=random', '--ipc=20'], 'larger than the 10 training images'),
    ('a model that is neither convnet nor a path', 'expert', lambda t: ['--model=resnet18'],
     'give convnet or a Flax module as package.module:Name'),
    ('a model path that does not import', 'expert',
     lambda t: ['--model=no_such_package.nets:Net'], "cannot import 'no_such_package.nets'"),
    ('a model with the wrong outputs', 'expert',
     lambda t: [f'--model={_user_module(t)}:ThreeOutputs'], 'to (2, 3), not (2, 10)'),
    ('a model that is not a Flax module', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e")}', f'--model={_user_module(t)}:NOT_A_MODULE'],
     'not a flax.linen.Module'),
    ('experts of another model', 'distill',
     lambda t: [f'--expert_dir={_experts(t + "/e", model=_user_module(t) + ":Plain")}'],
     "model='mct_test_nets:Plain' but the flags say 'convnet'"),
    ('evaluate: an architecture with the wrong outputs', 'evaluate',
     lambda t: [f'--synthetic={t}', f'--models=convnet,{_user_module(t)}:ThreeOutputs'],
     '--models: mct_test_nets:ThreeOutputs maps a batch of 2'),
    ('imported buffers with a module', 'import',
     lambda t: [f'--model={_user_module(t)}:Plain', f'--import_buffers={t}'],
     'imported buffers are ConvNets'),
]


def _user_module(t):
    """A user's module of Flax networks, importable as ``mct_test_nets``."""
    write_user_nets(os.path.join(t, 'mct_test_nets.py'))
    if t not in sys.path:
        sys.path.insert(0, t)
    return 'mct_test_nets'


def _file(t):
    path = os.path.join(t, 'a_file')
    open(path, 'w').close()
    return path


def _npz_dir(t):
    os.makedirs(os.path.join(t, 'npz'), exist_ok=True)
    open(os.path.join(t, 'npz', 'train.npz'), 'w').close()
    return os.path.join(t, 'npz')


def _problems(command):
    if command == 'distill':
        return validate.distill_command_problems(num_devices=1)
    if command == 'expert':
        return validate.expert_command_problems()
    if command == 'import':
        return validate.import_command_problems()
    return validate.evaluate_command_problems()


@pytest.mark.parametrize('name,command,make,message', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_reported(name, command, make, message, parse, tmp_path):
    parse(*make(str(tmp_path)))
    problems = _problems(command)
    assert any(message in p for p in problems), (name, problems)
    with pytest.raises(validate.ValidationError, match='nothing was loaded or changed'):
        validate.raise_if_any(problems, command)


def test_good_settings_have_no_problems(parse, tmp_path):
    parse(f'--expert_dir={_experts(str(tmp_path / "e"))}', f'--out_dir={tmp_path}/run',
          '--save_full_trajectory')
    assert validate.distill_command_problems(num_devices=1) == []
    assert validate.expert_command_problems() == []


def test_every_problem_is_reported_at_once(parse, tmp_path):
    parse(f'--expert_dir={tmp_path}/none', '--lr_img=0', '--ipc=0', '--syn_steps=0',
          f'--out_dir={_file(str(tmp_path))}')
    problems = validate.distill_command_problems(num_devices=1)
    for message in ('No experts in', '--lr_img=0.0', '--ipc=0', '--syn_steps=0', 'is a file'):
        assert any(message in p for p in problems), (message, problems)


def test_devices_must_divide_the_student_batch(parse, tmp_path):
    parse(f'--expert_dir={_experts(str(tmp_path / "e"))}')   # ipc 1: 10 images
    assert validate.distill_command_problems(num_devices=2) == []
    assert any('divide among 3 devices' in p
               for p in validate.distill_command_problems(num_devices=3))


def _cli(module, *args):
    return run_command(module, *args, check=False, timeout=300)


def test_command_line_lists_problems_before_loading(tmp_path):
    proc = _cli('distill', *BASE, f'--expert_dir={tmp_path}/none', '--lr_img=0')
    assert proc.returncode == 2
    assert '2 problems with the distillation settings' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr and 'Loading' not in proc.stderr


CHOICES = [('--labels=soft', 'hard|teacher|learned'), ('--image_optimizer=rmsprop', 'sgd|adam'),
           ('--image_init=zeros', 'real|noise|correct'),
           ('--meta_grad=approx', 'forward|reverse|tesla')]


@pytest.mark.parametrize('flag,choices', CHOICES)
def test_a_choice_outside_its_list_is_named_with_the_list(flag, choices, parse_flags):
    with pytest.raises(flags.IllegalFlagValueError) as error:
        parse_flags('--dataset=digits', flag)
    assert flag.split('=')[0] in str(error.value) and choices in str(error.value)


def test_the_command_names_a_choice_outside_its_list():
    flag, choices = CHOICES[0]
    proc = _cli('distill', '--dataset=digits', flag)
    assert proc.returncode != 0 and flag.split('=')[0] in proc.stderr
    assert choices in proc.stderr, proc.stderr[-1000:]


def test_a_label_expert_beyond_the_experts_is_refused():
    from mct_jax import distill
    s = distill.Settings(labels='teacher', label_expert=3, max_start_epoch=2, expert_epochs=1)
    assert any('--label_expert=3, but there are 2 experts' in p
               for p in distill.check_settings(s, 4, None, 1, num_experts=2))


def test_unknown_key_in_a_flagfile_is_named(tmp_path):
    cfg = tmp_path / 'typo.cfg'
    cfg.write_text('--dataset=digits\n--lr_imgg=100\n')
    proc = _cli('distill', f'--flagfile={cfg}')
    assert proc.returncode != 0 and 'lr_imgg' in proc.stderr and 'lr_img' in proc.stderr


def test_rule_tables_name_real_settings_and_refuse_nan():
    """Every rule of the distillation and expert tables names a setting that exists, and a
    NaN learning rate is refused with its name (NaN passes no comparison)."""
    from mct_jax import distill, expert, rules
    assert {r.field for r in distill.RULES} <= set(distill.Settings._fields)
    assert {r.field for r in expert.RULES} <= set(FLAGS)
    s = distill.Settings(lr_img=float('nan'), labels='soft')
    got = rules.problems(s, distill.RULES)
    assert got == ['--lr_img=nan must be positive.',
                   '--labels=soft is not one of hard, teacher, learned.']
    assert rules.problems({'lr_teacher': float('nan'), 'num_experts': 1, 'train_epochs': 1,
                           'batch_train': 1, 'microbatch': None}, expert.RULES) == [
        '--lr_teacher=nan must be positive.']


def test_every_distillation_setting_is_a_flag_with_its_default_and_choices():
    """The command line defines its distillation flags from distill.Settings, so the two
    cannot drift apart: same names, defaults (start_sampling aside: chosen from --method when
    unset), choices and help."""
    from mct_jax import distill
    for name in distill.Settings._fields:
        flag = FLAGS[name]
        if name not in ('lr_teacher', 'seed', 'start_sampling'):
            assert flag.default == distill.Settings._field_defaults[name], name
            assert flag.help.endswith(distill.HELP[name]), name   # enums: '<a|b>: ' first
        if name in distill.CHOICES:
            assert list(flag.parser.enum_values) == list(distill.CHOICES[name]), name
    assert FLAGS['start_sampling'].default is None


def test_a_library_setting_outside_its_choices_is_named_with_the_list():
    from mct_jax import distill, rules
    assert rules.problems(distill.Settings(method='mttt', image_init=None), distill.RULES) == [
        '--method=mttt is not one of mct, mtt.']
    assert rules.problems(distill.Settings(image_init='zeros'), distill.RULES) == [
        '--image_init=zeros is not one of real, noise, correct.']
