"""The benchmarks' strategy tables name strategies that exist: a renamed or
removed entry fails here, not in CI's smoke runs."""

import os
import sys

import pytest

import adaswitch_keras as ak
from conftest import once

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import compare_strategies  # noqa: E402
import rollout_ab  # noqa: E402
import speed  # noqa: E402

pytestmark = once  # conftest.ONCE_BACKEND


def test_speed_and_rollout_ab_time_strategies_of_speeds_table():
    table = speed.strategies()
    assert set(speed.SMOKE_STRATEGIES) <= set(table)
    assert set(rollout_ab.STRATEGIES) <= set(table)
    for make in table.values():
        assert isinstance(make(), ak.strategies.Strategy)


@pytest.mark.parametrize("stage", sorted(compare_strategies.STAGES))
def test_compare_strategies_tables_build_distiller_arguments(stage):
    table = compare_strategies.STAGES[stage]
    assert compare_strategies.ADASWITCH in table
    for make in table.values():
        assert isinstance(make()["strategy"], ak.strategies.Strategy)
    assert set(compare_strategies.SMOKE) <= set(compare_strategies.MAIN)
