"""Checks of one setting on its own, as a table: each :class:`Rule` names the setting, the
test its value must pass and what the problem message says (the fix included). The library
(:func:`mct_jax.distill.check_settings`) and the command line (:mod:`mct_jax.cli.validate`)
read the same tables, so a setting is checked once, in one words."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Rule(NamedTuple):
    """``ok(value)``, or the problem ``--field=value says.``"""
    field: str
    ok: Callable[[Any], bool]
    says: str


POSITIVE = 'must be positive'
AT_LEAST_1 = 'must be at least 1'


def problems(values, rules) -> list[str]:
    """The problem of each of ``rules`` that ``values`` (a mapping or a NamedTuple of
    settings) fails."""
    get = values.get if isinstance(values, dict) else lambda k: getattr(values, k)
    return [f'--{r.field}={get(r.field)} {r.says}.' for r in rules if not r.ok(get(r.field))]
