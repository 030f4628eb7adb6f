"""benchmarks/evidence.py: the rules that choose the protocol and the window
(fixed before the runs), the schedule, and a page whose paired differences
equal SciPy's t-interval on the per-seed numbers."""

import json
import os
import sys

import keras
import numpy as np
import pytest
from keras import ops
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import evidence  # noqa: E402

from conftest import once  # noqa: E402

pytestmark = once  # conftest.ONCE_BACKEND

DIFFICULTIES = ("easier", "train", "harder")
START = 0.60


def _run(name, seed, accuracy, rates=None, positions=(6, 10)):
    final = {d: {"accuracy": accuracy} for d in DIFFICULTIES}
    for d, rate in (rates or {}).items():
        final[d].update(
            switch_rate=rate,
            teacher_token_fraction=0.3,
            switch_positions=list(positions) if rate else [],
        )
    return {
        "name": name,
        "seed": seed,
        "commit": "abc1234",
        "accuracy_vs_step": [{"step": 50, "eval_accuracy": accuracy}],
        "final": final,
    }


def _results(runs, protocol=None, **settings):
    return {
        "commands": ["evidence.py"],
        "backend": "jax",
        "versions": {"keras": "3"},
        "machine": "x86_64, 2 cores",
        "settings": {
            "steps": 300,
            "batch_size": 32,
            "max_new_tokens": 64,
            "test_size": 2000,
            "eval_limit": 200,
            "final_split": "validation",
            "teacher": "t/arithmetic-hard-teacher",
            "student": "s/plateau",
            "protocol": protocol,
            **settings,
        },
        "teacher_accuracy": dict.fromkeys(DIFFICULTIES, 0.95),
        "student_accuracy": dict.fromkeys(DIFFICULTIES, START),
        "student_eval_accuracy": START,
        "runs": runs,
    }


def _calibration(changes):
    """Two seeds per protocol, moving the student by `changes[name]` on average."""
    return _results(
        [
            _run(name, seed, START + change + (0.002 if seed else -0.002))
            for name, change in changes.items()
            for seed in (0, 1)
        ]
    )


def test_the_harmless_protocol_with_the_highest_peak_is_chosen():
    constant, medium, gentle = evidence.PROTOCOLS
    chosen = evidence.choose_protocol(_calibration({constant: -0.07, medium: 0.004, gentle: 0.0}))
    assert chosen == medium
    # A protocol that raises the student by more than a point is not harmless either:
    # the student was not at its plateau under it.
    chosen = evidence.choose_protocol(_calibration({constant: -0.07, medium: 0.015, gentle: 0.0}))
    assert chosen == gentle
    assert evidence.choose_protocol(_calibration({constant: -0.07, medium: -0.02})) is None


def test_harmless_is_a_change_under_one_point_either_way():
    (name,) = list(evidence.PROTOCOLS)[:1]
    for change in (-0.0101, 0.0101):
        calibration = _results([_run(name, s, START + change) for s in (0, 1)])
        assert evidence.choose_protocol(calibration) is None
    calibration = _results([_run(name, s, START - 0.0099) for s in (0, 1)])
    assert evidence.choose_protocol(calibration) == name


def _grid(cells):
    """cells: {(L, K): (accuracy, {difficulty: switch rate}, positions)} on two seeds."""
    return _results(
        [
            _run(evidence.adaswitch_name(w, k), seed, accuracy, rates, positions)
            for (w, k), (accuracy, rates, positions) in cells.items()
            for seed in (0, 1)
        ]
    )


def test_the_window_is_the_most_accurate_cell_that_selects():
    every = dict.fromkeys(DIFFICULTIES, 1.0)
    rising = {"easier": 0.5, "train": 0.7, "harder": 0.9}
    falling = {"easier": 0.9, "train": 0.7, "harder": 0.5}
    grid = _grid(
        {
            (5, 2.0): (0.80, every, (8, 8)),  # switches on every sequence
            # the most accurate, rising, but every train-difficulty sequence switches
            (10, 2.0): (0.85, {"easier": 0.9, "train": 1.0, "harder": 1.0}, (8, 9)),
            (10, 20.0): (0.70, rising, (20, 25)),
            (20, 20.0): (0.72, rising, (26, 29)),
            (20, 5.0): (0.79, falling, (12, 14)),  # below 100%, but not rising with difficulty
        }
    )
    assert evidence.choose_window(grid) == ((20, 20.0), 28)  # mean of 26, 29, 26, 29 = 27.5
    flat = {"easier": 0.7, "train": 0.7, "harder": 0.7}  # equal rates do not rise
    assert evidence.choose_window(_grid({(10, 5.0): (0.7, flat, (5, 6))})) is None


def test_the_schedule_warms_up_then_decays_to_the_final_rate():
    protocol = evidence.PROTOCOLS["warm-up 30 to 1e-4, cosine to 1e-5, weight decay 0.01"]
    schedule = evidence.optimizer(protocol, 300)._learning_rate
    rate = lambda step: float(ops.convert_to_numpy(schedule(step)))  # noqa: E731
    assert rate(0) == 0.0
    assert rate(15) == pytest.approx(0.5e-4)
    assert rate(30) == pytest.approx(1e-4)
    assert rate(300) == pytest.approx(1e-5)
    assert 1e-5 < rate(165) < 1e-4
    assert evidence.optimizer(protocol, 300).weight_decay == 0.01
    constant = evidence.optimizer(evidence.PROTOCOLS["constant 3e-4, weight decay 0.004"], 300)
    assert isinstance(constant, keras.optimizers.AdamW)
    assert [float(ops.convert_to_numpy(constant._learning_rate(s))) for s in (0, 150, 300)] == (
        pytest.approx([3e-4] * 3)
    )


def test_the_page_shows_paired_differences_and_the_control_against_the_start(tmp_path):
    output = str(tmp_path / "evidence")
    method = evidence.adaswitch_name(20, 20.0)
    arms = {
        evidence.CONTROL: [0.601, 0.598, 0.605, 0.596, 0.600],
        method: [0.630, 0.610, 0.640, 0.620, 0.615],
        "OnPolicy": [0.610, 0.612, 0.600, 0.630, 0.601],
    }
    protocol = {"name": "p", **evidence.PROTOCOLS["constant 3e-4, weight decay 0.004"]}
    rates = dict.fromkeys(DIFFICULTIES, 0.7)
    main = _results(
        [
            _run(name, seed, value, rates if name == method else None)
            for name, values in arms.items()
            for seed, value in enumerate(values)
        ],
        protocol=protocol,
        final_split="fresh_test",
        adaswitch=method,
    )
    os.makedirs(os.path.join(output, "main"))
    with open(os.path.join(output, "main", "results.json"), "w") as f:
        json.dump(main, f)
    evidence.report(output)
    with open(output + ".md") as f:
        page = f.read()
    for name in (evidence.CONTROL, "OnPolicy"):
        differences = np.array(arms[method]) - np.array(arms[name])
        want = stats.t.interval(
            0.95, len(differences) - 1, differences.mean(), stats.sem(differences)
        )
        shown = evidence.show(differences.mean(), *want)
        assert f"| {name} | 5 | {shown} | {evidence.verdict(*want)} |" in page
    control = np.array(arms[evidence.CONTROL]) - START
    want = stats.t.interval(0.95, 4, control.mean(), stats.sem(control))
    assert f"{evidence.show(control.mean(), *want)} points (within noise)" in page
    assert "not corrected for the 2 made" in page
