"""benchmarks/compare_strategies.py's page: its intervals and verdicts equal
a plain NumPy/SciPy computation on the per-seed numbers of results.json."""

import json
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
            "eval_limit": 8,
            "max_new_tokens": 64,
            "teacher": "/t/arithmetic-hard-teacher",
            "student": "/s/arithmetic-hard-student",
        },
        "teacher_accuracy": dict.fromkeys(DIFFICULTIES, 0.97),
        "student_accuracy": dict.fromkeys(DIFFICULTIES, 0.40),
        "student_eval_accuracy": 0.40,
        "difficulties": cs.DIFFICULTIES,
        "runs": runs,
    }


def test_interval_is_the_t_interval_of_the_mean():
    values = np.array([0.41, 0.45, 0.39, 0.50, 0.44])
    mean, low, high = cs.interval(values)
    want = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    np.testing.assert_allclose([mean, low, high], [values.mean(), want.low, want.high])
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
    reference = stats.ttest_rel(adaswitch, baseline).confidence_interval(0.95)
    np.testing.assert_allclose(
        [mean, low, high], [(adaswitch - baseline).mean(), reference.low, reference.high]
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
    """Each grid cell has its own accuracies, so a transposed or misordered
    grid shows; the ablation is AdaSwitch minus each variant."""
    cells = {name: [0.1 * i, 0.1 * i + 0.02, 0.1 * i + 0.01] for i, name in enumerate(cs.GRID)}
    partial = _results(cells)
    partial["runs"] = [r for r in partial["runs"] if r["name"] != list(cs.GRID)[-1]]
    output = str(tmp_path / "page")
    os.makedirs(output)
    cs.report(partial, output)
    assert "L \\ K" not in open(output + ".md").read()
    variants = {name: [0.2, 0.25, 0.22] for name in cs.ABLATION if name != cs.ADASWITCH}
    cs.report(_results({**cells, **variants}), output)
    page = open(output + ".md").read()
    for i, window in enumerate(cs.WINDOWS):  # row L = window, columns K in order
        row = [cs.show(*cs.interval(cells[name])) for name in list(cs.GRID)[3 * i : 3 * i + 3]]
        assert f"| {window} | " + " | ".join(row) + " |" in page
    adaswitch = np.array(cells[cs.ADASWITCH])
    want = stats.ttest_rel(adaswitch, [0.2, 0.25, 0.22]).confidence_interval(0.95)
    difference = cs.show((adaswitch - [0.2, 0.25, 0.22]).mean(), want.low, want.high)
    assert f"| {difference}: {cs.verdict(want.low, want.high)} |" in page
    assert os.path.exists(os.path.join(output, "grid.png"))


def test_the_report_stage_reads_results_json_alone(tmp_path):
    """`--stage report` needs no models and no presets; unequal curves (a
    run stopped early) still plot."""
    results = _results({cs.CONTROL: [0.4, 0.45], cs.ADASWITCH: [0.5, 0.52]})
    results["runs"][0]["accuracy_vs_step"].append({"step": 2, "eval_accuracy": 0.5})
    output = tmp_path / "strategies"
    output.mkdir()
    (output / "results.json").write_text(json.dumps(results))
    cs.main(["--stage", "report", "--output", str(output)])
    page = (tmp_path / "strategies.md").read_text()
    assert "| AdaSwitch(L=5, K=2) | 2 | " in page
    with pytest.raises(SystemExit):
        cs.main(["--stage", "report", "--output", str(tmp_path / "nothing")])


def test_the_reading_says_whether_the_control_flattened(tmp_path):
    """The control's second-half trend is the NumPy least-squares slope of
    each seed's evaluations from half the steps on, t-interval over seeds;
    AdaSwitch's hand-over sentence averages its final rollouts."""
    results = _results({cs.CONTROL: [0.4, 0.45, 0.42], cs.ADASWITCH: [0.5, 0.52, 0.49]})
    late = {cs.CONTROL: [[0.41, 0.47, 0.40], [0.43, 0.44, 0.46]]}
    for r in results["runs"]:
        middle = r["accuracy_vs_step"][0]["eval_accuracy"]
        curve = [middle] + [values[r["seed"]] for values in late.get(r["name"], [[middle] * 3] * 2)]
        r["accuracy_vs_step"] = [
            {"step": step, "eval_accuracy": value}
            for step, value in zip((50, 100, 150, 200), [0.3, *curve])
        ]
    output = str(tmp_path / "page")
    os.makedirs(output)
    cs.report(results, output)
    page = open(output + ".md").read()
    curves = np.array([[0.4, 0.41, 0.43], [0.45, 0.47, 0.44], [0.42, 0.40, 0.46]])
    slopes = np.array([100 * np.polyfit([100, 150, 200], c, 1)[0] for c in curves])
    want = stats.ttest_1samp(slopes, 0.0).confidence_interval(0.95)
    slope = cs.show(slopes.mean(), want.low, want.high)
    assert (
        f"from step 100 to step 200, per seed, is {slope} points per 100 steps: "
        "no detectable trend" in page
    )
    assert "switched on 50% of sequences, at response token 4.0 on average" in page
    assert "the teacher wrote 40% of the response tokens" in page
    assert f"{cs.CONTROL} trains on cross-entropy alone" in page
    # Both were below the start (0.40) at their first evaluation (0.3 at step 50).
    # The control's mean at its last evaluation (step 200): (0.43 + 0.44 + 0.46) / 3.
    assert "below the start at the first evaluation: at step 50, the mean accuracy" in page
    assert "was already 30.0-30.0%, against the start's 40.0% on them" in page
    assert "the control's too (30.0%, then 44.3% at step 200)" in page
    # Final minus start (0.40): AdaSwitch's interval lies above zero, the control's spans it.
    assert (
        "the 2 strategies ended (final minus start, 95% interval over seeds): 1 higher; "
        "1 within noise." in page
    )


def test_equal_values_and_values_near_zero_are_not_overstated():
    """Seeds that agree exactly give no interval and no verdict; a bound
    near zero keeps its sign."""
    mean, low, high = cs.interval([0.002, 0.002, 0.002])
    assert cs.verdict(low, high) == "the same on every seed: no interval"
    assert cs.show(mean, low, high) == "0.2 (every seed)"
    assert cs.percent(-0.0003) == "-0.03" and cs.percent(0.0) == "0.0"
    assert cs.show_rate([0.0, 0.0, 0.06]) == cs.show(0.02, 0.0, cs.interval([0, 0, 0.06])[2])


def test_the_grid_uses_the_seeds_every_cell_has(tmp_path):
    """The (5, 2) cell is the main comparison's AdaSwitch, with 5 seeds:
    the grid shows it on the 3 seeds the other cells have."""
    cells = {name: [0.1 * i, 0.1 * i + 0.02, 0.1 * i + 0.01] for i, name in enumerate(cs.GRID)}
    cells[cs.ADASWITCH] = cells[cs.ADASWITCH] + [0.9, 0.9]
    output = str(tmp_path / "page")
    os.makedirs(output)
    cs.report(_results(cells), output)
    page = open(output + ".md").read()
    assert "Every cell on seeds 0, 1, 2" in page
    row = [cs.show(*cs.interval(cells[name][:3])) for name in list(cs.GRID)[:3]]
    assert f"| {cs.WINDOWS[0]} | " + " | ".join(row) + " |" in page


def test_the_ablation_uses_the_seeds_every_score_has(tmp_path):
    """The forward-KL reference (main's AdaSwitch, 5 seeds) is shown and
    paired on the 3 seeds the other switching scores have."""
    scores = {name: [0.6, 0.62, 0.61] for name in cs.ABLATION}
    scores[cs.ADASWITCH] = [0.5, 0.6, 0.7, 0.95, 0.95]
    output = str(tmp_path / "page")
    os.makedirs(output)
    cs.report(_results(scores), output)
    page = open(output + ".md").read()
    assert "Every switching score on seeds 0, 1, 2 (the seeds all" in page
    reference = cs.show(*cs.interval([0.5, 0.6, 0.7]))
    assert f"| {cs.ADASWITCH} | 3 | {reference} |" in page
    other = next(name for name in cs.ABLATION if name != cs.ADASWITCH)
    difference = cs.show(*cs.interval([0.5 - 0.6, 0.6 - 0.62, 0.7 - 0.61]))
    assert f"| {other} | 3 | " in page and f"| {difference}: within noise |" in page


def test_the_page_says_whether_it_is_complete(tmp_path):
    """Partial until every main strategy has 5 seeds and every ablation
    variant and grid cell 3."""
    output = str(tmp_path / "page")
    os.makedirs(output)
    names = {**cs.MAIN, **cs.ABLATION, **cs.GRID}
    full = {name: [0.5] * (5 if name in cs.MAIN else 3) for name in names}
    cs.report(_results(full), output)
    assert "Complete: every main strategy" in open(output + ".md").read()
    full["SeqKD"] = [0.5] * 4
    cs.report(_results(full), output)
    assert (
        "**Partial**: seeds that every strategy of a stage has so far: main 4 of 5, "
        "ablation 3 of 3, grid 3 of 3" in open(output + ".md").read()
    )
    full["SeqKD"] = [0.5] * 5
    full[next(n for n in cs.ABLATION if n != cs.ADASWITCH)] = [0.5] * 2
    cs.report(_results(full), output)
    assert "main 5 of 5, ablation 2 of 3, grid 3 of 3" in open(output + ".md").read()


def test_merge_adds_the_runs_of_a_stage_run_side_by_side(tmp_path):
    """`--stage report --merge DIR` writes the union of both results.json;
    it refuses other settings, or a run of the same name and seed that is
    not the same run."""
    main, grid, other = (tmp_path / name for name in ("main", "grid", "other"))
    for folder in (main, grid, other):
        folder.mkdir()
    (main / "results.json").write_text(json.dumps(_results({cs.CONTROL: [0.4, 0.45]})))
    cells = _results({"AdaSwitch(L=10, K=2)": [0.5, 0.52]})
    cells["commands"] = ["compare_strategies.py --stage grid --output grid"]
    (grid / "results.json").write_text(json.dumps(cells))
    cs.main(["--stage", "report", "--output", str(main), "--merge", str(grid)])
    merged = json.loads((main / "results.json").read_text())
    assert [(r["name"], r["seed"]) for r in merged["runs"]] == [
        (cs.CONTROL, 0),
        (cs.CONTROL, 1),
        ("AdaSwitch(L=10, K=2)", 0),
        ("AdaSwitch(L=10, K=2)", 1),
    ]
    assert merged["commands"][-1] == "compare_strategies.py --stage grid --output grid"
    cs.main(["--stage", "report", "--output", str(main), "--merge", str(grid)])  # again: no-op
    assert json.loads((main / "results.json").read_text()) == merged
    cells["runs"][0]["final"]["train"]["accuracy"] = 0.9  # another run of the same name and seed
    (grid / "results.json").write_text(json.dumps(cells))
    with pytest.raises(SystemExit):
        cs.main(["--stage", "report", "--output", str(main), "--merge", str(grid)])
    different = _results({"SeqKD": [0.3]})
    different["settings"]["steps"] = 3
    (other / "results.json").write_text(json.dumps(different))
    with pytest.raises(SystemExit):
        cs.main(["--stage", "report", "--output", str(main), "--merge", str(other)])


def test_one_seed_makes_no_claim(tmp_path):
    """With one seed per strategy (the smoke run) every sentence that needs
    an interval says there is none."""
    results = _results({cs.CONTROL: [0.4], cs.ADASWITCH: [0.5]})
    for r in results["runs"]:
        r["accuracy_vs_step"] = [{"step": s, "eval_accuracy": 0.4} for s in (1, 2, 3, 4)]
    output = str(tmp_path / "page")
    os.makedirs(output)
    cs.report(results, output)
    page = open(output + ".md").read()
    assert "AdaSwitch against SFT-continued: one seed, no claim." in page
    assert "points per 100 steps: one seed: no interval." in page
    assert "below the start at the first evaluation" not in page  # at the start's 0.40, not below


def test_the_switch_rate_against_difficulty_is_paired_by_seed(tmp_path):
    """The hardest minus the easiest test set's switch rate, per seed, is
    the NumPy t-interval; a strategy that always switches says so."""
    results = _results({cs.CONTROL: [0.4, 0.4, 0.4], cs.ADASWITCH: [0.5, 0.5, 0.5]})
    rates = {"easier": [0.2, 0.3, 0.25], "train": [0.4, 0.4, 0.4], "harder": [0.6, 0.8, 0.65]}
    skd = [_run("SKD(top_k=25)", seed, 0.5, switches=True) for seed in range(3)]
    for run in skd:
        for d in DIFFICULTIES:
            run["final"][d]["switch_rate"] = rates[d][run["seed"]]
    for run in results["runs"]:
        if run["name"] == cs.ADASWITCH:
            for d in DIFFICULTIES:
                run["final"][d]["switch_rate"] = 1.0
    results["runs"] += skd
    output = str(tmp_path / "page")
    os.makedirs(output)
    cs.report(results, output)
    page = open(output + ".md").read()
    change = np.array(rates["harder"]) - rates["easier"]
    want = stats.ttest_1samp(change, 0.0).confidence_interval(0.95)
    shown = cs.show(change.mean(), want.low, want.high)
    assert f"- SKD(top_k=25): {shown}: rises with difficulty." in page
    assert (
        f"- {cs.ADASWITCH}: 0.0 (every seed): every sequence switches at every difficulty" in page
    )
