"""The built-in architectures, one module each; importing this package registers their
names (:mod:`mct_jax.models.registry`).

Adding an architecture is one module here (a ``flax.linen`` module built from
:mod:`mct_jax.models.modules`, and a ``registry.register`` call) plus its parameter count and
PyTorch parity test (``tests/test_reference_models.py``, ``tests/test_reference_parity.py``).
The ConvNet comes first; the others follow in file-name order.
"""

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != 'convnet', m.name)):
    importlib.import_module(f'{__name__}.{_module.name}')
