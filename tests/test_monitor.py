"""Progress lines, image grids, plots and TensorBoard events."""

import logging
import os

import numpy as np
import pytest
from absl import logging as absl_logging

from mct_jax import monitor, pictures


def test_image_grid_places_every_image_in_its_class_row():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(6, 8, 8, 3)).astype(np.float32)
    labels = np.array([2, 0, 2, 1, 0, 2])
    grid = pictures.image_grid(images, labels, ['cat', 'dog', 'eel'], tile=16, names=False)
    # 3 classes x up to 3 images, each enlarged 2x to 16 px, 2 px gaps
    assert grid.shape == (3 * 18 + 2, 3 * 18 + 2, 3) and grid.dtype == np.uint8
    for row, cls in enumerate([0, 1, 2]):
        for col, i in enumerate(np.flatnonzero(labels == cls)):
            y, x = 2 + row * 18, 2 + col * 18
            expected = np.round(images[i] * 255).repeat(2, 0).repeat(2, 1)
            np.testing.assert_array_equal(grid[y:y + 16, x:x + 16], expected)
    # the empty cell (class 1 has one image) stays white
    assert (grid[2 + 18:2 + 18 + 16, 2 + 18:2 + 18 + 16] == 255).all()


def test_image_grid_with_names_and_grey_images():
    images = np.zeros((4, 16, 16, 1), np.float32)
    grid = pictures.image_grid(images, np.array([0, 0, 1, 1]), ['zero', 'one'])
    assert grid.shape[2] == 3 and grid.shape[0] == 2 * 34 + 2
    margin = grid.shape[1] - (2 * 34 + 2)
    assert margin > 0 and (grid[:, :margin] < 128).any()   # the names were drawn
    with pytest.raises(ValueError, match='Expected images'):
        pictures.image_grid(np.zeros((2, 8, 8)), np.zeros(2), ['a'])


def test_progress_log_mode_reports_rate_eta_and_numbers(caplog):
    absl_logging.set_verbosity(absl_logging.INFO)
    with caplog.at_level(logging.INFO):
        with monitor.Progress(40, 'distill', initial=20, mode='log') as bar:
            for _ in range(20):
                bar.update(loss=0.5, lr=0.01)
    lines = [r.getMessage() for r in caplog.records if 'distill' in r.getMessage()]
    assert len(lines) == 20   # every 5 % of the 20 remaining steps
    assert lines[-1].startswith('distill 40/40') and 'ETA 0:00' in lines[-1]
    assert 'loss 0.5' in lines[-1] and 'lr 0.01' in lines[-1] and 'it/s' in lines[-1]


def test_progress_none_is_silent(caplog):
    with caplog.at_level(logging.INFO):
        with monitor.Progress(5, 'quiet', mode='none') as bar:
            bar.update()
            bar.write('hidden')
    assert not [r for r in caplog.records if 'quiet' in r.getMessage() or 'hidden' in
                r.getMessage()]


def test_plots_are_written(tmp_path):
    import json
    path = tmp_path / 'metrics.jsonl'
    with open(path, 'w') as f:
        for it in range(5):
            f.write(json.dumps({'iteration': it, 'loss': 1.0 / (it + 1), 'lr': 0.01}) + '\n')
            if it % 2 == 0:
                f.write(json.dumps({'iteration': it, 'eval': {'mean': 10.0 + it, 'std': 1.0},
                                    'lr': 0.01}) + '\n')
    pictures.plot_distillation(str(path), str(tmp_path / 'p.png'), 'title')
    betas = np.linspace(0, 1, 5)[:, None].repeat(3, 1)
    pictures.plot_expert(betas, [0, 4], ['a', 'b', 'c'], [0.1] * 4, [0.1] * 5,
                        str(tmp_path / 'e.png'))
    from PIL import Image
    for name in ('p.png', 'e.png'):
        assert Image.open(tmp_path / name).size[0] > 500
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp.png')]


def test_moving_average_matches_a_loop():
    x = np.arange(12, dtype=float) ** 1.5
    got = pictures._moving_average(x, 4)
    want = [x[max(0, i - 3):i + 1].mean() for i in range(len(x))]
    np.testing.assert_allclose(got, want)
