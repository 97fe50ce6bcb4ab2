"""PyTorch interop, both ways: the field's expert buffers in, distilled sets out.

**Import.** MTT's ``buffer.py`` (which the MCT, TESLA, FTD and DATM code all read) writes
``replay_buffer_N.pt``: ``torch.save`` of a list of trajectories (10 per file), each a list
of K + 1 per-epoch snapshots (the initialisation first), each a list of the ConvNet's
``parameters()`` in order::

    features.0.weight [width, C, 3, 3], features.0.bias [width],     (block 0: conv)
    features.1.weight [width], features.1.bias [width],              (its instance norm)
    ... one conv (and norm) per block ...
    classifier.weight [classes, width * h * w], classifier.bias [classes]

:func:`read_buffer_file` checks a file's structure, :func:`infer_model` reads the
architecture off its shapes, :func:`snapshot_to_params` maps one snapshot to this library's
parameter pytree (kernels OIHW -> HWIO; the classifier's input columns from PyTorch's
(C, H, W) flattening to ours, (H, W, C)), and :func:`import_buffers` writes mct_jax experts
(anchors and betas computed from the snapshots, the full trajectory when asked).
:func:`read_buffer_folder` reads what ``buffer.py``'s folder names say (the model variant,
the dataset, the ZCA choice) and refuses the variants whose shapes match ours but whose
layers do not; :func:`check_trajectories_move` refuses trajectories that repeat a snapshot.

**Export.** :func:`export_set` writes what PyTorch evaluators load: the images (NCHW, in
the space the set lives in: standardised or ZCA-whitened), the labels (int64 classes, or
float32 probabilities for soft labels) and the learned lr, under our names or the
reference's (:data:`EXPORT_NAMES`), and ``preprocessing.json``, which says how to prepare
the test images identically (mean and std, or the ZCA transform saved beside it as
``zca.pt``, in PyTorch's (C, H, W) flattening) and what an outside scorer needs.

PyTorch is an optional dependency (``pip install -e '.[bench]'``); only these two functions
import it.
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

import numpy as np

from mct_jax import checkpoint, data, expert_store, trajectory
from mct_jax.expert_store import ExpertRun

BUFFER_PATTERN = re.compile(r'replay_buffer_(\d+)\.pt$')


class BufferError(ValueError):
    """A buffer file that cannot be imported; the message names the file, the problem and
    the fix."""


class BufferModel(NamedTuple):
    """The ConvNet a buffer's shapes describe."""
    channels: int
    width: int
    depth: int
    norm: str           # 'instancenorm' (weight and bias per block) or 'none'
    num_classes: int
    image_size: int     # square images, side in pixels


def _torch():
    try:
        import torch
    except ImportError as e:   # an optional dependency
        raise ImportError("Reading or writing PyTorch files needs PyTorch: pip install -e "
                          "'.[bench]' (or any torch).") from e
    return torch


def buffer_files(folder: str) -> list[str]:
    """``replay_buffer_N.pt`` files of ``folder``, by N."""
    if not os.path.isdir(folder):
        raise BufferError(f'--import_buffers={folder} is not a folder; point it at the folder '
                          'of replay_buffer_N.pt files (MTT buffer.py writes them).')
    found = [(int(m.group(1)), f) for f in os.listdir(folder) if (m := BUFFER_PATTERN.match(f))]
    if not found:
        raise BufferError(f'{folder} has no replay_buffer_N.pt file; point --import_buffers at '
                          'the folder MTT buffer.py wrote (e.g. buffers/CIFAR10/ConvNet).')
    return [os.path.join(folder, f) for _, f in sorted(found)]


def read_buffer_file(path: str) -> list:
    """The trajectories of one buffer file, checked: a non-empty list of trajectories, each
    a list of at least two snapshots, each a list of 2-D to 4-D float tensors of one
    structure. Memory-mapped where the file allows, so a file is not held in memory twice.

    Raises:
      BufferError: unreadable (truncated, corrupt) or not a buffer at all.
    """
    torch = _torch()
    name = os.path.basename(path)
    try:
        try:
            buf = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except RuntimeError as e:
            if 'mmap' not in str(e):
                raise
            buf = torch.load(path, map_location='cpu', weights_only=True)   # legacy format
    except Exception as e:   # noqa: BLE001 -- torch raises many types for damaged files
        raise BufferError(f'{name} is not a readable PyTorch file ({type(e).__name__}: {e}). '
                          'It may be truncated or corrupt: copy it again.') from e
    if not isinstance(buf, (list, tuple)):
        raise BufferError(f'{name} holds a {type(buf).__name__}, not a buffer: MTT buffers '
                          'are lists of trajectories (lists of snapshots of parameter '
                          'tensors).')
    if not buf:
        raise BufferError(f'{name} holds an empty list of trajectories: nothing to import; '
                          'remove it or write it again with buffer.py.')
    shapes = None
    for i, traj in enumerate(buf):
        if not isinstance(traj, (list, tuple)) or len(traj) < 2:
            raise BufferError(f'{name}: trajectory {i} is not a list of at least two per-epoch '
                              'snapshots; this is not an MTT buffer.')
        for t, snap in enumerate(traj):
            if (not isinstance(snap, (list, tuple)) or not snap
                    or not all(torch.is_tensor(p) and p.is_floating_point() for p in snap)):
                raise BufferError(f'{name}: trajectory {i}, epoch {t} is not a list of float '
                                  'parameter tensors; this is not an MTT buffer.')
            got = [tuple(p.shape) for p in snap]
            if shapes is None:
                shapes = got
            elif got != shapes:
                raise BufferError(f'{name}: trajectory {i}, epoch {t} has parameters of shapes '
                                  f'{got}, unlike {shapes} before it; the file mixes networks.')
    return buf


def infer_model(shapes: list) -> BufferModel:
    """The ConvNet of a snapshot's parameter shapes (``parameters()`` order).

    Raises:
      BufferError: not the trajectory-matching ConvNet (e.g. a ResNet's parameters).
    """
    convs = [i for i, s in enumerate(shapes) if len(s) == 4]
    ok = (len(shapes) >= 4 and convs and convs[0] == 0 and len(shapes[-2]) == 2
          and len(shapes[-1]) == 1)
    if ok:
        width, channels = shapes[0][0], shapes[0][1]
        depth = len(convs)
        per_block = (convs[1] - convs[0]) if depth > 1 else len(shapes) - 2
        norm = {2: 'none', 4: 'instancenorm'}.get(per_block)
        ok = (norm is not None and len(shapes) == depth * per_block + 2
              and all(s[:1] == (width,) for s in shapes[:-2])
              and all(shapes[c][2:] == (3, 3) for c in convs))
        # a conv's bias and an instance norm's scale and shift hold one value per channel;
        # a layer norm's (MTT's ConvNetLN) hold one per channel and pixel
        wide = [s for i, s in enumerate(shapes[:-2]) if i not in convs and s != (width,)]
        if ok and wide:
            raise BufferError(f'The norm parameters have shape {wide[0]}, not ({width},): a '
                              "layer norm's (MTT's ConvNetLN), which normalises over each "
                              'whole feature map. Only the instance-norm and no-norm ConvNets '
                              'can be imported.')
    if not ok:
        raise BufferError(f'The parameters {shapes} are not those of the ConvNet of trajectory '
                          'matching (conv 3x3 [+ norm] per block, then a linear classifier); '
                          'only ConvNet buffers can be imported.')
    num_classes, features = shapes[-2]
    side = (features / width) ** 0.5 * 2 ** depth
    if side != int(side) or features % width:
        raise BufferError(f'The classifier reads {features} features, which no square image '
                          f'gives a width-{width}, depth-{depth} ConvNet.')
    return BufferModel(channels, width, depth, norm, num_classes, int(side))


# MTT's buffer.py writes to <buffer_path>/<Dataset>[_NO_ZCA]/<model> (CIFAR-10/100 without
# --zca get _NO_ZCA), or <buffer_path>/ImageNet/<subset>/<res>/<model>; its dataset names.
_DATASETS = {'CIFAR10': 'cifar10', 'CIFAR100': 'cifar100', 'Tiny': 'tiny_imagenet',
             'ImageNet64': 'imagenet64'}
_SUBSETS = ('imagenette', 'imagewoof', 'imagefruit', 'imagemeow', 'imagesquawk', 'imageyellow')
# The ConvNet variants of MTT's get_network that differ from ours in a way the parameter
# shapes cannot show: (what they use, why it cannot be imported).
_UNSUPPORTED = {
    'BN': 'batch norm', 'LN': 'layer norm', 'GN': 'group norm',
    'AS': 'sigmoid activations', 'AL': 'leaky ReLU activations', 'ASwish': 'swish activations',
    'ASwishBN': 'swish activations and batch norm', 'MP': 'max pooling', 'NP': 'no pooling',
}


class BufferFolder(NamedTuple):
    """What the path MTT's buffer.py wrote a buffer to says (None: it does not say)."""
    model: str | None          # the --model of buffer.py, e.g. 'ConvNet', 'ConvNetD4'
    dataset: str | None        # our dataset name
    zca: bool | None
    depth: int | None = None   # from ConvNetD<n>
    width: int | None = None   # from ConvNetW<n>
    norm: str | None = None    # 'none' for ConvNetNN


def read_buffer_folder(folder: str) -> BufferFolder:
    """Reads the model, dataset and ZCA choice off a buffer folder's path in MTT's layout
    (``buffers/CIFAR10_NO_ZCA/ConvNetD4``, ``buffers/ImageNet/imagenette/128/ConvNetD5``).

    Raises:
      BufferError: the folder names a ConvNet variant this library does not have (batch,
        layer or group norm; sigmoid, leaky or swish activations; max or no pooling), whose
        parameters have the instance-norm ConvNet's shapes and would import silently as it.
    """
    parts = os.path.normpath(os.path.abspath(folder)).split(os.sep)
    name = parts[-1]
    suffix = name[len('ConvNet'):] if name.startswith('ConvNet') else None
    bad = suffix is not None and re.fullmatch(r'(D\d+|W\d+)?(%s)' % '|'.join(
        sorted(_UNSUPPORTED, key=len, reverse=True)), suffix)
    if bad:
        raise BufferError(f'{folder} holds {name} buffers ({_UNSUPPORTED[bad.group(2)]}): '
                          'their parameters have the shapes of the instance-norm ReLU ConvNet '
                          'with average pooling, the only ConvNet mct_jax trains, but they '
                          'compute something else, so they cannot be imported. Import ConvNet '
                          'buffers (buffer.py --model=ConvNet, or ConvNetD<n>, ConvNetW<n>, '
                          'ConvNetNN).')
    known = suffix is not None and re.fullmatch(r'D(\d+)|W(\d+)|NN|IN|AR|AP|', suffix)
    if not known:
        return BufferFolder(None, None, None)
    depth = int(known.group(1)) if known.group(1) else None
    width = int(known.group(2)) if known.group(2) else None
    norm = 'none' if suffix == 'NN' else 'instancenorm'   # get_network's default norm
    dataset, zca = None, None
    parent = parts[-2] if len(parts) > 1 else ''
    base = parent[:-len('_NO_ZCA')] if parent.endswith('_NO_ZCA') else parent
    if base in ('CIFAR10', 'CIFAR100'):
        dataset, zca = _DATASETS[base], not parent.endswith('_NO_ZCA')
    elif base in _DATASETS:
        dataset = _DATASETS[base]
    elif len(parts) > 3 and parts[-3] in _SUBSETS and parts[-4] == 'ImageNet':
        dataset = parts[-3]
    return BufferFolder(name, dataset, zca, depth, width, norm)


def check_folder_matches(folder: str, named: BufferFolder, found: BufferModel) -> None:
    """Refuses a folder whose name (``ConvNetD4``, ``ConvNetW64``, ``ConvNetNN``) says
    another network than its buffers' shapes (:func:`infer_model`)."""
    wrong = [k for k in ('width', 'depth', 'norm')
             if getattr(named, k) is not None and getattr(named, k) != getattr(found, k)]
    if wrong:
        raise BufferError(
            f'{folder} is named {named.model}, but its parameters are those of a ConvNet with '
            + ', '.join(f'{k}={getattr(found, k)}' for k in wrong) + '; the folder was '
            'renamed or holds other buffers. Import the buffers from the folder buffer.py '
            'wrote them to.')


class BufferSetup(NamedTuple):
    """What a buffer folder holds, read off its name and its first file."""
    files: list             # replay_buffer_N.pt, by N
    named: BufferFolder     # what the folder's name says
    model: BufferModel      # what the first snapshot's shapes say
    epochs: int             # snapshots per trajectory, less the initial one


def read_setup(folder: str) -> BufferSetup:
    """The buffers of ``folder``, described: refuses a ConvNet variant that cannot be
    imported, a file that is not a buffer, and a folder name that contradicts the shapes."""
    files = buffer_files(folder)
    named = read_buffer_folder(folder)
    first = read_buffer_file(files[0])
    model = infer_model([tuple(p.shape) for p in first[0][0]])
    epochs = len(first[0]) - 1
    del first
    check_folder_matches(folder, named, model)
    return BufferSetup(files, named, model, epochs)


def check_trajectories_move(buf, name: str) -> None:
    """Refuses a buffer whose trajectory repeats a snapshot: an expert that did not move in
    some epoch gives the trajectory-matching loss a zero denominator (``loss inf``)."""
    torch = _torch()
    for i, traj in enumerate(buf):
        still = [t for t in range(1, len(traj))
                 if all(torch.equal(a, b) for a, b in zip(traj[t - 1], traj[t]))]
        if len(still) == len(traj) - 1:
            raise BufferError(
                f'{name}: every snapshot of trajectory {i} is the same network, so there is '
                'no trajectory to match. This is what MTT\'s buffer.py writes on a CPU: there '
                '`p.detach().cpu()` returns the live parameter itself, so each stored snapshot '
                'is the final network. Write the buffers again with '
                '`[p.detach().cpu().clone() for p in teacher_net.parameters()]` (or on a GPU), '
                'or train the experts here: python -m mct_jax.expert.')
        if still:
            raise BufferError(
                f'{name}: trajectory {i} does not move in epoch {still[0]} (snapshots '
                f'{still[0] - 1} and {still[0]} are equal); matching a segment that ends there '
                'divides by zero. Check how the buffer was written (a learning rate of 0, a '
                'snapshot saved twice), or train the experts here: python -m mct_jax.expert.')


def snapshot_to_params(snapshot, model: BufferModel) -> dict:
    """One snapshot (PyTorch tensors in ``parameters()`` order) as this library's ConvNet
    parameter pytree (NumPy, the tensors' dtype)."""
    arrays = [np.asarray(p.detach().cpu().numpy()) for p in snapshot]
    params, k = {}, 0
    for i in range(model.depth):
        params[f'conv{i}'] = {'w': arrays[k].transpose(2, 3, 1, 0), 'b': arrays[k + 1]}
        k += 2
        if model.norm == 'instancenorm':
            params[f'norm{i}'] = {'scale': arrays[k], 'bias': arrays[k + 1]}
            k += 2
    side = model.image_size // 2 ** model.depth
    w = arrays[k].reshape(model.num_classes, model.width, side, side)   # [out, C, H, W]
    params['dense'] = {'w': np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(
        -1, model.num_classes)), 'b': arrays[k + 1]}
    return params


def trajectory_run(snapshots: list, anchor_epochs, smooth_anchors: bool,
                   keep_snapshots: bool) -> ExpertRun:
    """An :class:`~mct_jax.expert_store.ExpertRun` from an expert's K + 1 snapshots (our
    parameter pytrees): per-leaf step norms (eq. 9's d_l(t)), the anchors (smoothed as the
    MCT authors do when asked) and, with ``keep_snapshots``, the full trajectory."""
    k = len(snapshots) - 1
    epochs = trajectory.check_anchor_epochs(anchor_epochs, k)
    anchors = []
    for a in epochs:
        sources = trajectory.smoothing_sources(a, k) if smooth_anchors else None
        anchors.append(trajectory.tree_mean(*(snapshots[e] for e in sources)) if sources
                       else snapshots[a])
    return ExpertRun(anchors, epochs, trajectory.step_norms(snapshots),
                     list(snapshots) if keep_snapshots else None, [], [])


def import_buffers(folder: str, expert_dir: str, config: dict, expected: BufferModel,
                   log=print) -> list[int]:
    """Turns every ``replay_buffer_N.pt`` of ``folder`` into mct_jax experts in
    ``expert_dir`` (expert i = the i-th trajectory over the files in order of N).

    Every file is checked first (structure, one architecture throughout, and ``expected``:
    the model and data the flags describe), so a bad file writes nothing. Then the files are
    read one at a time and their trajectories converted one at a time; complete experts are
    skipped, so a re-run only does what is missing. ``config`` is the expert folder's
    config (its ``anchors``, ``smooth_anchors``, ``save_full_trajectory`` are honoured;
    ``train_epochs`` must be the buffers' K). Returns the indices written.
    """
    files = buffer_files(folder)
    counts, model, epochs = [], None, None
    for path in files:
        buf = read_buffer_file(path)
        got = infer_model([tuple(p.shape) for p in buf[0][0]])
        k = len(buf[0]) - 1
        if model is None:
            model, epochs = got, k
        if got != model or k != epochs or any(len(t) - 1 != k for t in buf):
            raise BufferError(f'{os.path.basename(path)} holds {got} with {k} epochs, unlike '
                              f'{os.path.basename(files[0])} ({model}, {epochs} epochs); '
                              'import each kind of buffer into its own --expert_dir.')
        check_trajectories_move(buf, os.path.basename(path))
        counts.append(len(buf))
        del buf
    diffs = [f'{name}={getattr(model, name)} in the buffers but {getattr(expected, name)} in '
             f'the flags' for name in BufferModel._fields
             if getattr(expected, name) is not None and getattr(model, name) !=
             getattr(expected, name)]
    if diffs:
        raise BufferError(f'The buffers in {folder} do not match the settings: '
                          + '; '.join(diffs) + '. Use the flags of the dataset and network '
                          'they were trained on (--dataset, --width, --depth, --norm).')
    if config['train_epochs'] != epochs:
        raise BufferError(f'The buffers hold {epochs} epochs per expert but --train_epochs='
                          f'{config["train_epochs"]}; pass --train_epochs={epochs}.')
    expert_store.check_config(expert_dir, config)
    os.makedirs(expert_dir, exist_ok=True)
    if not os.path.isfile(os.path.join(expert_dir, expert_store.CONFIG_FILE)):
        checkpoint.write_json(os.path.join(expert_dir, expert_store.CONFIG_FILE), config)
    written, index = [], 0
    for path, count in zip(files, counts):
        todo = [i for i in range(count)
                if not expert_store.is_complete(expert_store.expert_path(expert_dir, index + i))]
        if todo:
            buf = read_buffer_file(path)
            for i in todo:
                snaps = [snapshot_to_params(s, model) for s in buf[i]]
                buf[i] = None    # free the trajectory as soon as it is converted
                run = trajectory_run(snaps, config['anchors'], config['smooth_anchors'],
                                     config['save_full_trajectory'])
                expert_store.save_expert(expert_store.expert_path(expert_dir, index + i), run,
                                         {'index': index + i, 'imported_from': path,
                                          'trajectory': i})
                written.append(index + i)
                log(f'expert {index + i}: trajectory {i} of {os.path.basename(path)}')
            del buf
        index += count
    return written


# ----------------------------------------------------------------------------- export

# The files an export writes, by naming: ours, or the names the MTT family's distill.py
# writes and its evaluation scripts read (images_best.pt, labels_best.pt; DATM adds
# lr_best.pt for the learned lr, which MTT's evaluate_synset takes as args.lr_net).
EXPORT_NAMES = {
    'mct_jax': {'images': 'images.pt', 'labels': 'labels.pt', 'lr': 'lr.pt'},
    'reference': {'images': 'images_best.pt', 'labels': 'labels_best.pt', 'lr': 'lr_best.pt'},
}


def export_set(synthetic: dict, ds: data.Dataset, folder: str, names: str = 'mct_jax') -> dict:
    """Writes a distilled set for PyTorch evaluators (see the module docstring).

    Args:
      synthetic: a saved set (:func:`mct_jax.evaluate.load_synthetic`).
      ds: the dataset it was distilled from (its preprocessing is described).
      folder: where the images, labels and lr files (:data:`EXPORT_NAMES`),
        ``preprocessing.json`` (and ``zca.pt``) go.
      names: ``'mct_jax'`` (``images.pt``, ``labels.pt``, ``lr.pt``) or ``'reference'``
        (``images_best.pt``, ``labels_best.pt``, ``lr_best.pt``).
    Returns:
      The description written as ``preprocessing.json``.
    """
    torch = _torch()
    files = EXPORT_NAMES[names]
    os.makedirs(folder, exist_ok=True)
    images = np.ascontiguousarray(
        np.asarray(synthetic['images'], np.float32).transpose(0, 3, 1, 2))
    labels = np.asarray(synthetic['labels'])
    soft = bool(labels.ndim == 2)
    torch.save(torch.from_numpy(images), os.path.join(folder, files['images']))
    torch.save(torch.from_numpy(labels.astype(np.float32 if soft else np.int64)),
               os.path.join(folder, files['labels']))
    torch.save(torch.tensor(float(synthetic['lr'])), os.path.join(folder, files['lr']))
    h, w, c = ds.image_shape
    settings = synthetic['settings']
    prep: dict[str, Any] = {
        'dataset': settings.get('dataset'),
        'files': files,
        'layout': f"{files['images']}: NCHW float32; {files['labels']}: int64 classes [n], or "
                  f"float32 probabilities [n, classes] for soft labels; {files['lr']}: the "
                  'learned student learning rate (a 0-d tensor: .item() gives the float '
                  "MTT's evaluate_synset takes as args.lr_net)",
        'class_names': list(ds.class_names),
        'pixels': 'x = uint8 image / 255, NCHW',
        'soft_labels': soft,
        'evaluators': ('soft labels: evaluate with a soft-label cross-entropy (DATM, '
                       "DD-Ranking); MTT's evaluate_synset casts labels with .long() and "
                       'fails on probabilities') if soft else
                      "hard labels: any evaluator, MTT's evaluate_synset included",
        'ipc': settings.get('ipc'),
        'network': {k: settings.get(k) for k in ('width', 'depth', 'norm', 'act', 'pool')},
        'train_images_per_class': settings.get('train_images_per_class'),
        'method': settings.get('method'),
        'learned': bool(synthetic.get('changed', True)),
    }
    if ds.zca is None:
        prep.update(space='standardised', mean=[float(v) for v in ds.mean],
                    std=[float(v) for v in ds.std],
                    prepare_test='x = (x - mean[None, :, None, None]) / std[None, :, None, None]',
                    torchvision='transforms.Compose([transforms.ToTensor(), '
                                'transforms.Normalize(mean, std)])')
    else:
        # Our ZCA flattens (H, W, C); PyTorch's reshape flattens (C, H, W): permute both.
        order = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()
        zca = {'mean': torch.from_numpy(ds.zca.mean[order].copy()),
               'transform': torch.from_numpy(ds.zca.transform[np.ix_(order, order)].copy()),
               'inverse': torch.from_numpy(ds.zca.inverse[np.ix_(order, order)].copy())}
        torch.save(zca, os.path.join(folder, 'zca.pt'))
        prep.update(space='zca', zca_file='zca.pt', eps=0.1,
                    prepare_test="z = torch.load('zca.pt'); x = ((x.reshape(n, -1) - z['mean']) "
                                 "@ z['transform']).reshape(n, C, H, W)",
                    note='fitted on the training images the experts saw (kornia '
                         'ZCAWhitening(eps=0.1) computes the same transform)')
    checkpoint.write_json(os.path.join(folder, 'preprocessing.json'), prep)
    return prep

