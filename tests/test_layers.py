"""The package's layering: imports point down (mathematics <- procedures <- commands), with no
cycles, and only the command layer reads flags."""

import ast
import os
import subprocess
import sys

from conftest import REPO

PACKAGE = os.path.join(REPO, 'mct_jax')


def _modules():
    """{module name: parsed tree} of every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith('.py'):
                path = os.path.join(root, f)
                name = os.path.relpath(path[:-3], REPO).replace(os.sep, '.')
                name = name[:-len('.__init__')] if name.endswith('.__init__') else name
                with open(path) as fh:
                    out[name] = ast.parse(fh.read(), path)
    return out


def _is_command(name):
    return name == 'mct_jax.cli' or name.startswith('mct_jax.cli.') or name.endswith('__main__')


def _imports(tree, modules, top_level_only=False):
    """Package modules a tree imports. ``from mct_jax.models import layers`` counts as both
    mct_jax.models.layers and mct_jax.models: Python runs the package's ``__init__`` to
    resolve the name, so a module inside the package that imports its siblings this way
    depends on the package facade (a cycle when the facade imports it)."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def test_no_import_cycles():
    modules = _modules()
    edges = {m: _imports(t, modules) - {m} for m, t in modules.items()}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    cycles = [(a, b) for a in modules for b in edges[a] if a in reach(b)]
    assert not cycles, cycles


def test_library_never_imports_the_command_layer_nor_reads_flags():
    modules = _modules()
    for name, tree in modules.items():
        if _is_command(name):
            continue
        imported = _imports(tree, modules)
        assert not [m for m in imported if _is_command(m)], (name, imported)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == 'absl':
                assert 'flags' not in [a.name for a in node.names], name
            if isinstance(node, ast.Import):
                assert 'absl.flags' not in [a.name for a in node.names], name
            if isinstance(node, ast.Name):
                assert node.id != 'FLAGS', name


def test_package_imports_sit_at_module_level():
    """No function-local import of a package module (one would hide a cycle)."""
    modules = _modules()
    for name, tree in modules.items():
        local = _imports(tree, modules) - _imports(tree, modules, top_level_only=True)
        assert not local, (name, local)


def test_importing_the_library_defines_no_flag():
    code = ('import mct_jax.distill, mct_jax.expert, mct_jax.evaluate\n'
            'from absl import flags\n'
            'print(sorted(flags.FLAGS.flags_by_module_dict()))\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'mct_jax' not in proc.stdout, proc.stdout


def test_named_random_streams_are_distinct():
    """Each named stream folds a different integer into the seed's key, so no two parts of
    a run draw the same numbers through them."""
    import jax

    from mct_jax import keys
    assert len(set(keys.STREAMS.values())) == len(keys.STREAMS)
    k = jax.random.key(0)
    drawn = {name: int(jax.random.randint(keys.stream(k, name), (), 0, 2**30))
             for name in keys.STREAMS}
    assert len(set(drawn.values())) == len(drawn)
