"""The notebooks under experiments/ run headless, start to finish, on a tiny offline setting
(``MCT_JAX_NOTEBOOK_SMOKE=1``), so they cannot rot."""

import os

import pytest

from conftest import REPO

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, 'experiments'))
                   if f.endswith('.ipynb'))


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    monkeypatch.setenv('MCT_JAX_NOTEBOOK_SMOKE', '1')
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
    nb = nbformat.read(os.path.join(REPO, 'experiments', name), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name='python3',
                   resources={'metadata': {'path': str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    assert not [o for o in outputs if o.get('output_type') == 'error']
    # every figure cell produced an image
    images = [o for o in outputs if 'image/png' in o.get('data', {})]
    assert len(images) >= 2
