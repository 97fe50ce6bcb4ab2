"""Published figures equal their results files: each sentence README.md and docs/ quote
from a command's output is formatted from the committed results file and must appear
verbatim, so a rerun that changes a number fails here until the docs are regenerated."""

import json
import os
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'experiments'))
import quickstart_results  # noqa: E402


def _flat(text):
    """Text with every run of whitespace one space (the README wraps its prose)."""
    return ' '.join(text.split())


def _read(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


@pytest.mark.parametrize('name,doc', [('readme', 'README.md'),
                                      ('reproduction', 'docs/reproduction.md'),
                                      ('usage_devices', 'docs/usage.md')])
def test_quickstart_figures_are_those_of_its_results_file(name, doc):
    results = json.loads(_read('experiments/results/quickstart.json'))
    line = quickstart_results.lines(results)[name]
    assert line in _read(doc), (f'{doc} does not quote the quickstart as '
                                'experiments/results/quickstart.json has it; rerun '
                                f'python experiments/quickstart_results.py --lines and '
                                f'update it:\n{line}')


def test_the_results_file_holds_what_the_sentences_need():
    r = json.loads(_read('experiments/results/quickstart.json'))
    one = r['distill']
    assert one['best']['selected_on'] == 'validation' and one['devices'] == 1
    assert r['distill_two_devices']['devices'] == 2
    assert len(r['random_real']['all']) == 5
    # the best set is the best validation choice among the evaluations, and its test
    # accuracy is the one recorded at that iteration
    assert one['best']['iteration'] <= one['last']['iteration'] == 200


@pytest.mark.parametrize('script,results', [
    ('bench_data_scale', 'bench_data_scale.json'),
    ('bench_passes', 'bench_passes.json'),
    ('bench_ddranking', 'bench_ddranking.json'),
    ('bench_distill', 'bench_distill.json'),
    ('bench_distill', 'bench_distill_devices.json'),
    ('bench_conv', 'bench_conv.json'),
])
def test_benchmark_tables_in_the_docs_are_those_of_their_results(script, results):
    """docs/benchmarks.md holds each table exactly as ``python benchmarks/SCRIPT.py
    --table`` prints it from the committed JSON."""
    sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
    module = __import__(script)
    found = json.loads(_read(os.path.join('benchmarks', 'results', results)))
    if script == 'bench_distill':          # its table is of the result rows
        found = found['rows']
    table = module.table(found)
    doc = _read('docs/benchmarks.md')
    missing = [row for row in table.splitlines() if row.strip() and row not in doc]
    assert not missing, (f'docs/benchmarks.md differs from benchmarks/results/{results}; '
                         f'paste python benchmarks/{script}.py --table:\n' + '\n'.join(missing))


def test_readme_results_are_those_of_the_study_run_files():
    """README.md's results table and claims are formatted from the study's per-run JSON files
    (``experiments/study_cifar10.py``'s :func:`readme_lines`)."""
    study = __import__('study_cifar10')
    runs = study._read_results(os.path.join(REPO, 'experiments', 'results', 'study_cifar10',
                                            'runs'), 'name')
    readme = _read('README.md')
    for name, text in study.readme_lines(runs).items():
        if name != 'table':          # prose may be wrapped anywhere
            text, readme = _flat(text), _flat(readme)
        assert text in readme, (f"README.md's study {name} differs from the run files; paste "
                                f'study_cifar10.readme_lines:\n{text}')


def test_readme_memory_sentence_is_that_of_its_benchmark():
    """README.md's memory sentence is bench_data_scale.readme_sentence of its results."""
    sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
    bench = __import__('bench_data_scale')
    text = bench.readme_sentence(json.loads(_read('benchmarks/results/bench_data_scale.json')))
    assert _flat(text) in _flat(_read('README.md')), (
        'README.md differs from benchmarks/results/bench_data_scale.json; paste '
        f'bench_data_scale.readme_sentence:\n{text}')


def test_readme_distillation_speed_range_is_that_of_its_benchmark():
    """README.md's range of distillation time against PyTorch spans the rows of
    benchmarks/results/bench_distill.json (the forward meta-gradient, one device)."""
    rows = json.loads(_read('benchmarks/results/bench_distill.json'))['rows']
    ratios = [r['forward_over_torch'] for r in rows if r.get('forward_over_torch') is not None]
    text = f'takes {min(ratios):.1f}-{max(ratios):.1f}x the time of a PyTorch implementation'
    assert text in _flat(_read('README.md')), f'README.md should say: {text}'


def _startup(r):
    rows = r['rows']
    return [f'{rows["no cache"]["first_iteration_seconds"]:.1f} s without the compilation cache',
            f'{rows["cold cache"]["first_iteration_seconds"]:.1f} s\nwith an empty one',
            f'**{rows["warm cache"]["first_iteration_seconds"]:.1f} s with a warm one**']


def _expert(r):
    t = {row['width']: row['images_per_second'] for row in r['throughput']}
    s = r['storage']
    return [f'{t[32]:,.0f} images/s at width 32, {t[64]:,.0f} at width 64, {t[128]:,.0f} at '
            'width 128',
            f'MCT {s["mct_bytes"] / 1e6:.2f} MB', f'{s["full_bytes"] / 1e6:.1f} MB for the full',
            f'ratio {s["ratio"]:.4f} (2/(K+1) = {s["expected_ratio"]:.4f})',
            f'{s["num_params"]:,} parameters']


def _eval(rows):
    by = {r['ipc']: r for r in rows}
    one, ten = by[1], by[10]
    return [f'{one["mapped_seconds"]:.2f} s / {ten["mapped_seconds"]:.2f} s at ipc 1 / 10',
            f'five separate calls {one["sequential_seconds"]:.2f} s / '
            f'{ten["sequential_seconds"]:.2f} s',
            f'{one["vmapped_seconds"]:.2f} s / {ten["vmapped_seconds"]:.2f} s '
            f'({one["vmap_speedup"]:.2f}x / {ten["vmap_speedup"]:.2f}x of separate calls']


def _vmap_forms(r):
    lines = []
    for row in r['rows']:
        s = row['seconds']
        cells = [f'{s["map"]:.2f} s'] + [
            f'{s[k]:.2f} s ({s["map"] / s[k]:.2f}x)'
            for k in ('vmap', 'vmap_shared_dsa', 'vmap_im2col', 'vmap_im2col_shared_dsa')]
        lines.append(f'| {row["ipc"]} | ' + ' | '.join(cells) + ' |')
    return lines


@pytest.mark.parametrize('results,expected', [
    ('bench_startup.json', _startup), ('bench_expert.json', _expert),
    ('bench_eval.json', _eval), ('bench_vmap_forms.json', _vmap_forms),
], ids=['startup', 'expert', 'eval', 'vmap_forms'])
def test_benchmark_figures_in_the_prose_are_those_of_their_results(results, expected):
    """The figures docs/benchmarks.md quotes in its sentences are those of the committed
    results, formatted from the JSON here."""
    found = json.loads(_read(os.path.join('benchmarks', 'results', results)))
    doc = _read('docs/benchmarks.md')
    missing = [s for s in expected(found) if s not in doc]
    assert not missing, f'docs/benchmarks.md differs from benchmarks/results/{results}: {missing}'


def test_reproduction_table_is_that_of_its_results_file():
    """docs/reproduction.md's table of the single-seed CIFAR-10 reproduction, row by row from
    experiments/results/reproduce_cifar10.json (best mean +- std at the best evaluation,
    convergence iteration and spread after it)."""
    r = json.loads(_read('experiments/results/reproduce_cifar10.json'))
    doc = _read('docs/reproduction.md')
    for ipc in (1, 10):
        runs = {x['name']: x for x in r['runs'] if x['ipc'] == ipc}
        best = lambda x: f'{x["best"]:.2f} +- {x["std"][x["mean"].index(x["best"])]:.2f}'
        rand = r['baselines'][str(ipc)]
        row = (f'| {ipc} | {best(runs["mtt"])} | {best(runs["mct"])} | '
               f'{best(runs["mct_integer"])} | {rand["mean"]:.2f} +- {rand["std"]:.2f} | '
               f'{runs["mtt"]["converged_at"]} / {runs["mct"]["converged_at"]} | '
               f'{runs["mtt"]["spread_std"]:.2f} / {runs["mct"]["spread_std"]:.2f} |')
        assert row in doc, row


def test_evaluation_results_are_those_of_their_results_files():
    """docs/evaluation_results.md quotes experiments/results/evaluation_results.json and the
    study's cross-architecture file as ``experiments/evaluation_results.py --markdown``
    formats them."""
    import evaluation_results
    with open(evaluation_results.OUT) as f, open(evaluation_results.CROSS) as g:
        expected = evaluation_results.paragraphs(json.load(f), json.load(g))
    doc = _read('docs/evaluation_results.md')
    missing = [p for p in expected if _flat(p) not in _flat(doc)]
    assert not missing, ('docs/evaluation_results.md differs from its results; paste python '
                         'experiments/evaluation_results.py --markdown:\n' + '\n'.join(missing))
