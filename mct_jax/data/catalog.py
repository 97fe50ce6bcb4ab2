"""The datasets mct_jax knows: their shapes, classes, standardisation and sources.

Each dataset is one :class:`Spec` in :data:`SPECS`; adding a dataset is one entry here
and, when it comes from a new kind of file, a reader in its own module. The MTT ImageNet
subsets (Cazenavette et al. 2022) are ten ImageNet-1K classes each, in the reference's class
order (``utils.Config`` of the MTT code; class c of the subset is the c-th WordNet id
listed), read at 128x128 with ConvNetD5. ``imagenet64`` is ImageNet-1K downsampled to 64x64,
TESLA's setting (Cui et al. 2023), with ConvNetD4.

Sources (``--data_source``):

=========== =================================================================================
sklearn     scikit-learn's digits, shipped with it (offline).
tfds        TensorFlow Datasets' prepared ArrayRecord files, read without TensorFlow.
npz         ``train.npz`` and ``test.npz`` in ``--data_dir`` (``x`` uint8 NHWC, ``y``).
folder      the official release as a user downloads it (Tiny ImageNet's folder, an ImageNet
            folder in the ILSVRC layout, the downsampled ImageNet's npz batches), decoded
            once into the data cache (:mod:`mct_jax.data.store`).
prepared    a folder written by ``python -m mct_jax.prepare``: memory-mapped uint8 arrays.
=========== =================================================================================
"""

from __future__ import annotations

from typing import NamedTuple

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

SOURCES = ('sklearn', 'tfds', 'npz', 'folder', 'prepared')


class Spec(NamedTuple):
    """One dataset: what a loaded split looks like and where it may come from."""
    num_classes: int
    image_size: int              # H = W of the images as the networks see them
    channels: int
    sources: tuple               # the first is the default
    standardisation: tuple | None   # ((mean per channel), (std per channel)); None: computed
                                    # from the training split (no published constants)
    wnids: tuple | None = None      # ImageNet subsets: WordNet ids, class c = wnids[c]
    class_names: tuple | None = None
    tfds_name: str | None = None    # the TFDS builder, when the source is tfds


def _subset(*classes) -> Spec:
    """An MTT ImageNet subset: ``classes`` are (wnid, name) pairs in the reference's order."""
    return Spec(10, 128, 3, ('folder', 'prepared', 'npz'), IMAGENET_MEAN_STD,
                wnids=tuple(w for w, _ in classes), class_names=tuple(n for _, n in classes))


SPECS = {
    'digits': Spec(10, 16, 1, ('sklearn', 'npz', 'prepared'), None,
                   class_names=tuple(str(c) for c in range(10))),
    'cifar10': Spec(10, 32, 3, ('tfds', 'npz', 'prepared'),
                    ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                    class_names=('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                                 'horse', 'ship', 'truck'), tfds_name='cifar10'),
    'cifar100': Spec(100, 32, 3, ('tfds', 'npz', 'prepared'),
                     ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
                     tfds_name='cifar100'),
    'tiny_imagenet': Spec(200, 64, 3, ('folder', 'npz', 'prepared'), IMAGENET_MEAN_STD),
    # The MTT subsets, as in the reference's utils.Config (ImageNet-1K class indices there,
    # WordNet ids here, so that any folder in the ILSVRC layout can be read).
    'imagenette': _subset(('n01440764', 'tench'), ('n02102040', 'English springer'),
                          ('n02979186', 'cassette player'), ('n03000684', 'chain saw'),
                          ('n03028079', 'church'), ('n03394916', 'French horn'),
                          ('n03417042', 'garbage truck'), ('n03425413', 'gas pump'),
                          ('n03445777', 'golf ball'), ('n03888257', 'parachute')),
    'imagewoof': _subset(('n02096294', 'Australian terrier'), ('n02093754', 'Border terrier'),
                         ('n02111889', 'Samoyed'), ('n02088364', 'beagle'),
                         ('n02086240', 'Shih-Tzu'), ('n02089973', 'English foxhound'),
                         ('n02087394', 'Rhodesian ridgeback'), ('n02115641', 'dingo'),
                         ('n02099601', 'golden retriever'),
                         ('n02105641', 'Old English sheepdog')),
    'imagefruit': _subset(('n07753275', 'pineapple'), ('n07753592', 'banana'),
                          ('n07745940', 'strawberry'), ('n07747607', 'orange'),
                          ('n07749582', 'lemon'), ('n07768694', 'pomegranate'),
                          ('n07753113', 'fig'), ('n07720875', 'bell pepper'),
                          ('n07718472', 'cucumber'), ('n07742313', 'Granny Smith')),
    'imagemeow': _subset(('n02123045', 'tabby'), ('n02123159', 'tiger cat'),
                         ('n02123394', 'Persian cat'), ('n02123597', 'Siamese cat'),
                         ('n02124075', 'Egyptian cat'), ('n02129165', 'lion'),
                         ('n02129604', 'tiger'), ('n02128925', 'jaguar'),
                         ('n02128757', 'snow leopard'), ('n02127052', 'lynx')),
    'imagesquawk': _subset(('n01806143', 'peacock'), ('n02007558', 'flamingo'),
                           ('n01818515', 'macaw'), ('n02051845', 'pelican'),
                           ('n02056570', 'king penguin'), ('n01614925', 'bald eagle'),
                           ('n01843383', 'toucan'), ('n01518878', 'ostrich'),
                           ('n01860187', 'black swan'),
                           ('n01819313', 'sulphur-crested cockatoo')),
    'imageyellow': _subset(('n02206856', 'bee'), ('n12057211', "yellow lady's slipper"),
                           ('n07753592', 'banana'), ('n07749582', 'lemon'),
                           ('n12144580', 'corn'), ('n04146614', 'school bus'),
                           ('n03530642', 'honeycomb'), ('n02129165', 'lion'),
                           ('n01773157', 'black and gold garden spider'),
                           ('n01531178', 'goldfinch')),
    'imagenet64': Spec(1000, 64, 3, ('folder', 'tfds', 'prepared', 'npz'), IMAGENET_MEAN_STD,
                       tfds_name='imagenet_resized/64x64'),
}

DATASETS = tuple(SPECS)
IMAGENET_SUBSETS = tuple(name for name, s in SPECS.items() if s.wnids)
DEFAULT_SOURCE = {name: s.sources[0] for name, s in SPECS.items()}
VALID_SOURCES = {name: s.sources for name, s in SPECS.items()}
NUM_CLASSES = {name: s.num_classes for name, s in SPECS.items()}
CHANNELS = {name: s.channels for name, s in SPECS.items()}
IMAGE_SIZE = {name: s.image_size for name, s in SPECS.items()}
STANDARDISATION = {name: s.standardisation for name, s in SPECS.items() if s.standardisation}


class DataError(ValueError):
    """Bad dataset settings or files; the message names the problem and the fix."""


def check_name_source(name: str, source: str | None) -> str:
    """Validates ``name`` and ``source``; returns the source to use (the default for None)."""
    if name not in SPECS:
        raise DataError(f'unknown dataset {name!r}; choose one of {", ".join(DATASETS)}.')
    if source is None:
        return DEFAULT_SOURCE[name]
    if source not in SOURCES:
        raise DataError(f'unknown source {source!r}; choose one of {", ".join(SOURCES)} '
                        f'(for {name}: {", ".join(VALID_SOURCES[name])}).')
    if source not in VALID_SOURCES[name]:
        raise DataError(f'source {source!r} is not available for dataset {name!r}; use one '
                        f'of {", ".join(VALID_SOURCES[name])}.')
    return source


def default_class_names(name: str) -> tuple:
    """The class names of ``name`` when its files carry none (the class index otherwise)."""
    spec = SPECS[name]
    return spec.class_names or tuple(str(c) for c in range(spec.num_classes))
