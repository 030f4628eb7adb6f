"""benchmarks/compare_strategies.py's page: its intervals and verdicts equal
a plain NumPy/SciPy computation on the per-seed numbers of results.json."""

import os
import sys

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import compare_strategies as cs  # noqa: E402

from conftest import once  # noqa: E402

pytestmark = once  # conftest.ONCE_BACKEND

DIFFICULTIES = ("easier", "train", "harder")


def _run(name, seed, accuracy, switches=False):
    final = {}
    for d in DIFFICULTIES:
        final[d] = {"accuracy": accuracy}
        if switches:
            final[d].update(switch_rate=0.5, teacher_token_fraction=0.4, switch_positions=[3, 5])
    return {
        "name": name,
        "seed": seed,
        "commit": "abc1234",
        "seconds": 10.0,
        "step_seconds_median": 0.1,
        "teacher_tokens_per_step": 100.0,
        "accuracy_vs_step": [{"step": 1, "eval_accuracy": accuracy}],
        "final": final,
    }


def _results(accuracies):
    runs = [
        _run(name, seed, value, switches=name.startswith("AdaSwitch"))
        for name, values in accuracies.items()
        for seed, value in enumerate(values)
    ]
    return {
        "commands": ["compare_strategies.py --stage main"],
        "backend": "jax",
        "versions": {"keras": "3"},
        "machine": "x86_64, 2 cores",
        "settings": {
            "steps": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "test_size": 8,
            "teacher": "/t/arithmetic-hard-teacher",
            "student": "/s/arithmetic-hard-student",
        },
        "teacher_accuracy": dict.fromkeys(DIFFICULTIES, 0.97),
        "student_accuracy": dict.fromkeys(DIFFICULTIES, 0.40),
        "student_eval_accuracy": 0.40,
        "runs": runs,
    }


def test_interval_is_the_t_interval_of_the_mean():
    values = np.array([0.41, 0.45, 0.39, 0.50, 0.44])
    mean, low, high = cs.interval(values)
    half = stats.t.ppf(0.975, 4) * values.std(ddof=1) / np.sqrt(5)
    np.testing.assert_allclose(
        [mean, low, high], [values.mean(), values.mean() - half, values.mean() + half]
    )
    assert cs.interval([0.3]) == (0.3, None, None)


@pytest.mark.parametrize("shift, want", [(0.05, "higher"), (-0.05, "lower"), (0.0, "within noise")])
def test_paired_differences_and_verdicts(tmp_path, shift, want):
    """AdaSwitch = the baseline + `shift` + seed noise: the page's paired
    difference is the NumPy one and its verdict follows the interval."""
    noise = np.array([0.01, -0.01, 0.005, -0.005, 0.0])
    baseline = np.array([0.40, 0.45, 0.42, 0.38, 0.44])
    adaswitch = baseline + shift + noise
    results = _results({cs.CONTROL: baseline, cs.ADASWITCH: adaswitch})
    (mean, low, high), seeds = cs.paired(
        [r for r in results["runs"] if r["name"] == cs.ADASWITCH],
        [r for r in results["runs"] if r["name"] == cs.CONTROL],
    )
    differences = adaswitch - baseline
    half = stats.t.ppf(0.975, 4) * differences.std(ddof=1) / np.sqrt(5)
    np.testing.assert_allclose(
        [mean, low, high],
        [differences.mean(), differences.mean() - half, differences.mean() + half],
    )
    assert seeds == [0, 1, 2, 3, 4]
    assert cs.verdict(low, high) == want
    output = str(tmp_path / "page")
    os.makedirs(output)
    cs.report(results, output)
    page = open(output + ".md").read()
    row = f"| {cs.CONTROL} | 5 | {cs.show(mean, low, high)} | {want} |"
    assert row in page
    assert os.path.exists(os.path.join(output, "accuracy_vs_step.png"))


def test_the_grid_and_ablation_appear_only_when_complete(tmp_path):
    accuracies = {name: [0.4, 0.5, 0.45] for name in cs.GRID}
    partial = _results({**accuracies, cs.ADASWITCH: [0.4, 0.5, 0.45]})
    partial["runs"] = [r for r in partial["runs"] if r["name"] != "AdaSwitch(L=10, K=3)"]
    output = str(tmp_path / "page")
    os.makedirs(output)
    cs.report(partial, output)
    assert "L \\ K" not in open(output + ".md").read()
    complete = _results({**accuracies, **{name: [0.3, 0.35, 0.32] for name in cs.ABLATION}})
    cs.report(complete, output)
    page = open(output + ".md").read()
    assert "| 10 | 45.0 [" in page  # the grid's last row: mean of 0.4, 0.5, 0.45
    assert "switch on jsd" in page and os.path.exists(os.path.join(output, "grid.png"))
