"""Every strategy from the SFT plateau, on identical code: the paper's regime at CPU scale.

    KERAS_BACKEND=jax python benchmarks/compare_strategies.py --stage main --seeds 0 1 2
    KERAS_BACKEND=jax python benchmarks/compare_strategies.py --stage main --seeds 3 4 --resume
    KERAS_BACKEND=jax python benchmarks/compare_strategies.py --stage ablation --seeds 0 1 2 --resume
    KERAS_BACKEND=jax python benchmarks/compare_strategies.py --stage grid --seeds 0 1 2 --resume
    KERAS_BACKEND=jax python benchmarks/compare_strategies.py --smoke --output /tmp/smoke

The pair is the shipped `arithmetic-hard-teacher` and `arithmetic-hard-student`,
a student trained with SFT until its test accuracy stopped improving, well
below its teacher (docs/presets.md). Every run distils a fresh copy of that
student for the same steps, batch, learning rate and rollout length, once per
seed (data order and rollout sampling). `SFT-continued`, the same steps of
cross-entropy on ground truth, is the control: what more training alone does.

Stages, each a separate invocation (none needs more than 2.5 hours here: a
main seed took 48 minutes at b769289, an AdaSwitch run 5), all writing into
one `results.json`, which `--resume` extends:
- `main`: the strategies of `MAIN` on `--seeds` (5 seeds for the page);
- `ablation`: AdaSwitch's switching divergence (`ABLATION`), `--seeds`;
- `grid`: AdaSwitch's window L x multiplier K (`GRID`), `--seeds`;
- `report`: only the page, from `results.json` (every stage ends with it);
  `--merge DIR ...` first adds the runs of stages that ran side by side,
  each from a copy of `results.json` with `--resume` into its own folder
  (the ablation and the grid report no step times, so they may share the
  CPU; the main stage should run alone).

Each run records the test accuracy (greedy exact match) every `--eval-every`
steps, the final accuracy on three difficulties, and, for strategies where
both models write, the final student's switch rate and switch position on
each difficulty. The page (`<output>.md`, beside the `<output>/` folder) is
generated from `results.json`: means with 95% t-intervals over seeds, and
AdaSwitch's paired difference (same seeds) against every other strategy.
"""

import argparse
import inspect
import json
import os
import sys
import time

import keras
import keras_hub
import numpy as np
from provenance import environment
from provenance import git_commit  # benchmarks/provenance.py

import adaswitch_keras as ak
from adaswitch_keras import presets
from adaswitch_keras.callbacks import StepTimer
from adaswitch_keras.callbacks import TaskEvaluation
from adaswitch_keras.plotting import subplots

ADASWITCH = "AdaSwitch(L=5, K=2)"  # the method; the paper's defaults
CONTROL = "SFT-continued"


def _skd_reference_samplers():
    """SKD with the SKD reference's samplers: the student proposes at
    temperature 0.5 / top-p 0.5, the teacher samples at 0.2 / top-p 0.5."""
    return dict(
        strategy=ak.SKD(top_k=25),
        student_sampler=keras_hub.samplers.TopPSampler(p=0.5, temperature=0.5),
        teacher_sampler=keras_hub.samplers.TopPSampler(p=0.5, temperature=0.2),
    )


# Name -> the Distiller's keyword arguments (strategy and samplers). Kim and
# Rush's SeqKD (cross-entropy on teacher samples) is the SeqKD baseline;
# SeqKD-divergence is TRL's `seq_kd=True` (the token divergence on them).
MAIN = {
    CONTROL: lambda: dict(strategy=ak.SFT()),
    "SupervisedKD": lambda: dict(strategy=ak.SupervisedKD()),
    "SeqKD": lambda: dict(strategy=ak.SeqKD()),
    "SeqKD-divergence": lambda: dict(strategy=ak.SeqKDDivergence()),
    "OnPolicy": lambda: dict(strategy=ak.OnPolicy()),
    "GKD(lmbda=0.5)": lambda: dict(strategy=ak.GKD(lmbda=0.5)),
    "SKD(top_k=25)": lambda: dict(strategy=ak.SKD(top_k=25)),
    "SKD(top_k=25, reference samplers)": _skd_reference_samplers,
    "Switch(tau0=0.2, decay=0.05)": lambda: dict(strategy=ak.Switch(tau0=0.2, decay=0.05)),
    ADASWITCH: lambda: dict(strategy=ak.AdaSwitch(window=5, k=2.0)),
}
# The switching score's divergence (forward KL is the main run's AdaSwitch).
ABLATION = {
    ADASWITCH: MAIN[ADASWITCH],
    **{
        f"AdaSwitch(L=5, K=2, switch on {kind})": (
            lambda kind=kind: dict(strategy=ak.AdaSwitch(window=5, k=2.0, divergence=kind))
        )
        for kind in ("reverse_kl", "jsd")
    },
}
# On the hard pair, K from 1.5 to 20 with L=5 all switch at the first token
# that needs a computation (about the 9th): the copied tokens before it have
# near-zero divergence. Longer windows and larger K move the switch (CHANGELOG).
WINDOWS, MULTIPLIERS = (5, 10, 20), (2.0, 5.0, 20.0)
GRID = {
    (ADASWITCH if (w, k) == (5, 2.0) else f"AdaSwitch(L={w}, K={k:g})"): (
        lambda w=w, k=k: dict(strategy=ak.AdaSwitch(window=w, k=k))
    )
    for w in WINDOWS
    for k in MULTIPLIERS
}
STAGES = {"main": MAIN, "ablation": ABLATION, "grid": GRID}
# --smoke (CI): one strategy of each kind of rollout (none, the student's, both models').
SMOKE = (CONTROL, "OnPolicy", ADASWITCH)
# Test sets of increasing difficulty: the operand range around the training task's.
DIFFICULTIES = {
    "easier": {**presets.HARD_TASK, "max_operand": 20},
    "train": dict(presets.HARD_TASK),
    "harder": {**presets.HARD_TASK, "max_operand": 99},
}
# Settings that must be equal for runs to be compared (and resumed).
COMPARED = (
    "teacher",
    "student",
    "steps",
    "batch_size",
    "learning_rate",
    "eval_every",
    "eval_limit",
    "test_size",
    "rollout_limit",
    "max_new_tokens",
)


def handover(distiller, rows, batch_size):
    """Switch rate, teacher-token fraction and switch positions (tokens
    into the response) of the final student's rollouts on `rows`."""
    out = distiller.predict(rows, batch_size, verbose=0)
    response, teacher = out["response_mask"].astype(bool), out["teacher_token_mask"].astype(bool)
    switched = teacher.any(axis=1)
    prompt_length = out["padding_mask"].sum(1) - response.sum(1)
    return {
        "switch_rate": float(switched.mean()),
        "teacher_token_fraction": float((teacher.sum(1) / np.maximum(response.sum(1), 1)).mean()),
        "switch_positions": (out["switch_index"] - prompt_length)[switched].tolist(),
    }


def accuracy(model, rows, batch_size):
    return ak.evaluate(model, "arithmetic", examples=rows, batch_size=batch_size, verbose=0)[
        "accuracy"
    ]


def run(name, make, seed, teacher, train, tests, args, curve_rows=None, optimizer=None):
    """Distil a fresh copy of the SFT student with `make()`'s settings: the
    curve on `curve_rows` (the first `eval_limit` train-difficulty `tests`
    by default), the optimizer from `optimizer()` (AdamW at the constant
    `learning_rate` by default), the final scores on every one of `tests`."""
    keras.utils.set_random_seed(seed)
    student = keras_hub.models.CausalLM.from_preset(args.student)
    distiller = ak.Distiller(
        teacher, student, max_new_tokens=args.max_new_tokens, seed=seed, **make()
    )
    distiller.compile(
        optimizer=optimizer() if optimizer else keras.optimizers.AdamW(args.learning_rate)
    )
    clock = StepTimer()
    evaluation = TaskEvaluation(
        "arithmetic",
        tests["train"][: args.eval_limit] if curve_rows is None else curve_rows,
        every_n_steps=args.eval_every,
        batch_size=args.eval_batch_size,
    )
    start = time.perf_counter()
    history = distiller.fit(
        train,
        batch_size=args.batch_size,
        epochs=args.steps // args.eval_every,
        steps_per_epoch=args.eval_every,
        callbacks=[clock, evaluation],
        verbose=0,
    ).history
    result = {
        "name": name,
        "config": repr(distiller.strategy),
        "seed": seed,
        "commit": args.commit,
        "seconds": time.perf_counter() - start,
        "step_seconds_median": clock.median(),
        "teacher_tokens_per_step": teacher_tokens(history),
        "history": history,
        "accuracy_vs_step": evaluation.history,
        "final": {},
    }
    for difficulty, rows in tests.items():
        final = {"accuracy": accuracy(student, rows, args.eval_batch_size)}
        if distiller.strategy.decoders == ("student", "teacher"):
            final.update(handover(distiller, rows[: args.rollout_limit], args.eval_batch_size))
        result["final"][difficulty] = final
    print(
        f"{name:<40} seed {seed}: accuracy {result['final']['train']['accuracy']:.3f}, "
        f"{result['step_seconds_median'] * 1000:.0f} ms/step, {result['seconds']:.0f} s",
        flush=True,
    )
    return result


def teacher_tokens(history):
    """The teacher's tokens per step (prefilled + scored + decoded, as the
    Distiller logs them), averaged over the run's epochs."""
    parts = [
        history.get(key, []) for key in ("teacher_prefilled", "teacher_scored", "teacher_decoded")
    ]
    return float(np.mean([sum(step) for step in zip(*parts)])) if all(parts) else 0.0


# -- statistics ---------------------------------------------------------------
def interval(values, confidence=0.95):
    """Mean and the t-interval of the mean over seeds: (mean, low, high); a
    single value has no interval (low = high = None)."""
    from scipy import stats  # a dependency of JAX

    values = np.asarray(values, float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1)
    half /= np.sqrt(len(values))
    return mean, mean - half, mean + half


def paired(runs_a, runs_b, difficulty="train"):
    """A's accuracy minus B's on the seeds both have: (interval, seeds)."""
    a = {r["seed"]: r["final"][difficulty]["accuracy"] for r in runs_a}
    b = {r["seed"]: r["final"][difficulty]["accuracy"] for r in runs_b}
    seeds = sorted(set(a) & set(b))
    return interval([a[s] - b[s] for s in seeds]) if seeds else (None, None, None), seeds


def verdict(low, high):
    if low is None:
        return "one seed: no interval"
    if low == high:  # every seed gave the same value: a t-interval says nothing
        return "the same on every seed: no interval"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "within noise"


def percent(fraction):
    """One decimal, two where one would print a value near zero as 0.0
    (an interval's bound then shows on which side of zero it lies)."""
    value = 100 * fraction
    return f"{value:.2f}" if value and abs(value) < 0.05 else f"{value:.1f}"


def show(mean, low, high):
    """A fraction as percent, with its interval when there is one."""
    if mean is None:
        return "-"
    if low is None:
        return percent(mean)
    if low == high:
        return f"{percent(mean)} (every seed)"
    return f"{percent(mean)} [{percent(low)}, {percent(high)}]"


def show_rate(values):
    """A rate over seeds, its interval clipped to [0, 1]."""
    mean, low, high = interval(values)
    if low is None or low == high:
        return show(mean, low, high)
    return show(mean, max(low, 0.0), min(high, 1.0))


def binomial_half_width(accuracy, problems, confidence=0.95):
    """Half the normal-approximation interval of one accuracy measured on
    `problems` test problems: the test set's own sampling error."""
    from scipy import stats

    z = stats.norm.ppf((1 + confidence) / 2)
    return float(z * np.sqrt(accuracy * (1 - accuracy) / problems))


# -- the page -------------------------------------------------------------------
def losses_and_samplers():
    """The settings line's losses and samplers, read from `MAIN` itself."""
    made = {name: make() for name, make in MAIN.items()}
    parameters = inspect.signature(ak.Distiller).parameters
    cross_entropy = [n for n, kwargs in made.items() if kwargs["strategy"].loss == "cross_entropy"]
    others = [
        f"{name}: student {sampler_text(kwargs['student_sampler'])}, "
        f"teacher {sampler_text(kwargs['teacher_sampler'])}"
        for name, kwargs in made.items()
        if "student_sampler" in kwargs
    ]
    return (
        f"loss: `{parameters['divergence'].default}` to the teacher"
        + (f" ({', '.join(cross_entropy)}: cross-entropy)" if cross_entropy else "")
        + f"; both models sample with KerasHub's `{parameters['student_sampler'].default}` "
        "sampler at temperature 1" + (f" ({'; '.join(others)})" if others else "")
    )


def sampler_text(sampler):
    config = sampler.get_config()
    return (
        f"{type(sampler).__name__}("
        + ", ".join(
            f"{key}={config[key]:g}"
            for key in ("k", "p", "temperature")
            if config.get(key) is not None
        )
        + ")"
    )


def by_name(results):
    runs = {}
    for r in results["runs"]:
        runs.setdefault(r["name"], []).append(r)
    return runs


def report(results, output):
    """`<output>.md` and its plots, from `results.json` alone."""
    runs = by_name(results)
    main_runs = {n: runs[n] for n in MAIN if n in runs}
    if CONTROL in runs:  # main tables: the main stage's seeds (grid or ablation may add others)
        seeds = {r["seed"] for r in runs[CONTROL]}
        main_runs = {n: [r for r in group if r["seed"] in seeds] for n, group in main_runs.items()}
        main_runs = {n: group for n, group in main_runs.items() if group}
    folder = os.path.basename(output.rstrip("/"))
    settings = results["settings"]
    commits = sorted({r["commit"] for r in results["runs"]})
    lines = [
        "# Strategies compared from the SFT plateau",
        "",
        "Generated by `benchmarks/compare_strategies.py` from "
        f"[results.json]({folder}/results.json); do not edit by hand.",
        "",
        "**Superseded, kept as a record.** This comparison cannot say whether AdaSwitch "
        "helps: its fresh AdamW at a constant 3e-4 lowered every arm, the SFT-continued "
        "control too; the start was the best of five evaluations on the same test "
        "problems every final is scored on; the student was still improving, not at a "
        "plateau; and with L = 5 the window held only tokens copied from the prompt, so "
        "AdaSwitch(5, 2) switched on every sequence. `benchmarks/evidence.py` redoes it "
        "(a plateau student, a calibrated continuation, fresh splits, a FixedSwitch "
        "control) and writes its own page, `docs/results/strategies_evidence.md`.",
        "",
        f"- Commit(s) of the runs: {', '.join(f'`{c}`' for c in commits) or '-'}"
        + (" (**more than one: runs made at different commits**)" if len(commits) > 1 else ""),
        f"- Commands: {'; '.join(f'`{c}`' for c in results['commands'])}",
        f"- Backend {results['backend']}, {results['machine']}; versions "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        f"- Settings: {settings['steps']} steps, batch {settings['batch_size']}, AdamW "
        f"{settings['learning_rate']:g}, `max_new_tokens={settings['max_new_tokens']}`; "
        f"{losses_and_samplers()}; accuracy = greedy exact match, in percent; "
        f"{settings['test_size']} test problems per difficulty.",
        "- Intervals are 95% t-intervals over seeds, on the same test problems for every "
        "run: they leave out those problems' own sampling error (binomial, about "
        f"±{100 * binomial_half_width(results['student_accuracy']['train'], settings['test_size']):.1f}"
        f" points for one accuracy near the start's {100 * results['student_accuracy']['train']:.1f}%"
        "), which matters against the teacher and start rows (no intervals).",
        f"- Teacher `{os.path.basename(settings['teacher'])}`, student "
        f"`{os.path.basename(settings['student'])}` (docs/presets.md).",
        f"- Wall time of the runs, added up: {sum(r['seconds'] for r in results['runs']) / 3600:.1f} h "
        "(an upper bound on their compute: it counts the time runs shared the CPU with "
        "one another or were paused while other measurements ran).",
        f"- {completeness(runs)}",
        "",
        "## Main comparison",
        "",
        "| strategy | seeds | accuracy (train difficulty) | easier | harder | "
        "teacher tokens / step | step time (ms, median) |",
        "|---|---|---|---|---|---|---|",
        "| teacher | | "
        + " | ".join(
            f"{100 * results['teacher_accuracy'][d]:.1f}" for d in ("train", "easier", "harder")
        )
        + " | | |",
        "| SFT student (start) | | "
        + " | ".join(
            f"{100 * results['student_accuracy'][d]:.1f}" for d in ("train", "easier", "harder")
        )
        + " | | |",
    ]
    for name in list(main_runs):
        group = main_runs[name]
        cells = [
            show(*interval([r["final"][d]["accuracy"] for r in group]))
            for d in ("train", "easier", "harder")
        ]
        tokens = np.mean([r["teacher_tokens_per_step"] for r in group])
        step = np.median([r["step_seconds_median"] for r in group]) * 1000
        lines.append(
            f"| {name} | {len(group)} | " + " | ".join(cells) + f" | {tokens:,.0f} | {step:.0f} |"
        )
    reading = []
    if ADASWITCH in main_runs:
        rows = []
        for name in [n for n in MAIN if n in main_runs and n != ADASWITCH]:
            (mean, low, high), seeds = paired(main_runs[ADASWITCH], main_runs[name])
            if not seeds:
                continue
            rows.append(
                f"| {name} | {len(seeds)} | {show(mean, low, high)} | {verdict(low, high)} |"
            )
            reading.append((name, verdict(low, high)))
        lines += [
            "",
            f"## {ADASWITCH} minus each strategy (paired by seed, train difficulty)",
            "",
            "Each interval is for its own comparison, not corrected for the "
            f"{len(rows)} comparisons made.",
            "",
            "| baseline | seeds | difference (points) | AdaSwitch is |",
            "|---|---|---|---|",
            *rows,
        ]
    lines += ["", "## Reading", ""] + reading_lines(reading, main_runs, results)
    lines += difficulty_section(main_runs, results["difficulties"])
    lines += ablation_section(runs)
    lines += grid_section(runs)
    plot(results, main_runs, runs, output)
    lines += [
        "",
        "## Plots",
        "",
        f"![accuracy vs step]({folder}/accuracy_vs_step.png)",
        "",
        f"![AdaSwitch grid]({folder}/grid.png)" if grid_complete(runs) else "",
    ]
    with open(output.rstrip("/") + ".md", "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")


def shared_seeds(runs, names):
    """The seeds every one of `names` has a run on (none if one has no run)."""
    return set.intersection(*({r["seed"] for r in runs.get(name, [])} for name in names))


def completeness(runs):
    """What the page has against what the issue asks: 5 seeds of every main
    strategy; the ablation and the 3 x 3 grid on 3 seeds each (the issue
    shortens these two first when the compute runs over its plan, as it did:
    the main stage alone took about 5 of the planned 6 hours)."""
    wanted = {"main": (MAIN, 5), "ablation": (ABLATION, 3), "grid": (GRID, 3)}
    have = {stage: len(shared_seeds(runs, names)) for stage, (names, _) in wanted.items()}
    if all(have[stage] >= seeds for stage, (_, seeds) in wanted.items()):
        return (
            "Complete: every main strategy on 5 seeds or more, the ablation and the grid "
            "on 3 or more."
        )
    return "**Partial**: seeds that every strategy of a stage has so far: " + ", ".join(
        f"{stage} {have[stage]} of {seeds}" for stage, (_, seeds) in wanted.items()
    )


def reading_lines(reading, runs, results):
    """Sentences the intervals support, and nothing more."""
    if not reading:
        return ["Not enough runs yet for a comparison."]
    uncorrected = f"; not corrected for the {len(reading)} comparisons"
    phrases = {
        "higher": "AdaSwitch is more accurate than {} (the paired 95% interval is above zero"
        + uncorrected
        + ").",
        "lower": "AdaSwitch is less accurate than {} (the paired 95% interval is below zero"
        + uncorrected
        + ").",
        "within noise": "AdaSwitch and {} are within noise (the paired 95% interval contains zero).",
        "one seed: no interval": "AdaSwitch against {}: one seed, no claim.",
        "the same on every seed: no interval": "AdaSwitch against {}: the same difference on "
        "every seed, no interval, no claim.",
    }
    out = []
    for kind, phrase in phrases.items():
        names = [n for n, v in reading if v == kind]
        if names:
            out.append("- " + phrase.format("; ".join(names)))
    if CONTROL in runs:
        (mean, low, high) = interval(
            [
                r["final"]["train"]["accuracy"] - results["student_accuracy"]["train"]
                for r in runs[CONTROL]
            ]
        )
        effects = {
            "higher": "more training alone raised it, so compare strategies with the "
            "control, not with the start.",
            "lower": "more training alone lowered it, so compare strategies with the "
            "control, not with the start.",
            "within noise": "no detectable change.",
        }
        moved = verdict(low, high)
        out.append(
            f"- The control ({CONTROL}) moved the student by {show(mean, low, high)} points "
            f"from its start: {effects.get(moved, moved + '.')}"
        )
        out.append("- " + against_the_start(runs, results["student_accuracy"]["train"]))
        out += first_evaluation_lines(runs, results)
        slope = second_half_slope(runs[CONTROL])
        if slope:
            (mean, low, high), (first, last) = slope
            trend = verdict(low, high)
            if trend == "within noise":
                trend = (
                    "no detectable trend (not proof of a plateau: a slope of "
                    f"{percent(high)} points per 100 steps is inside the interval)"
                )
            trend = {"higher": "still rising", "lower": "still falling"}.get(trend, trend)
            out.append(
                "- Has the control flattened? The least-squares slope of its accuracy on the "
                f"{results['settings']['eval_limit']} evaluation problems from step {first} to "
                f"step {last}, per seed, is {show(mean, low, high)} points per 100 steps: "
                f"{trend}."
            )
    if ADASWITCH in runs and "switch_rate" in runs[ADASWITCH][0]["final"]["train"]:
        finals = [r["final"]["train"] for r in runs[ADASWITCH]]
        positions = sum((f["switch_positions"] for f in finals), [])
        out.append(
            f"- Where {ADASWITCH} hands over: the final students' rollouts on the train-difficulty"
            f" test prompts switched on {100 * np.mean([f['switch_rate'] for f in finals]):.0f}% of"
            " sequences, "
            + (f"at response token {np.mean(positions):.1f} on average; " if positions else "")
            + f"the teacher wrote {100 * np.mean([f['teacher_token_fraction'] for f in finals]):.0f}%"
            " of the response tokens."
        )
    unused = [n for n in runs if n in MAIN and MAIN[n]()["strategy"].loss == "cross_entropy"]
    if unused:
        out.append(
            f"- {' and '.join(unused)} {'train' if len(unused) > 1 else 'trains'} on"
            " cross-entropy alone: the teacher forward over"
            " their sequences (counted in their teacher tokens and step time) only feeds the"
            " logged divergence."
        )
    return out


def evaluations(group):
    """Each run's {step: accuracy} during training, and the steps every run
    reached (one stopped early by a non-finite loss has fewer)."""
    curves = [{p["step"]: p["eval_accuracy"] for p in r["accuracy_vs_step"]} for r in group]
    return curves, sorted(set.intersection(*(set(c) for c in curves)))


def second_half_slope(group):
    """Each run's least-squares slope of its evaluations from half the steps
    on (accuracy per 100 steps; every evaluation counts, not only two of
    them), over seeds: ((mean, low, high), (first step, last step)), or None
    when the runs share fewer than two evaluations there."""
    curves, steps = evaluations(group)
    if not steps:
        return None
    late = [s for s in steps if s >= steps[-1] / 2]
    if len(late) < 2:
        return None
    slopes = [100 * np.polyfit(late, [c[s] for s in late], 1)[0] for c in curves]
    return interval(slopes), (late[0], late[-1])


def first_evaluation_lines(runs, results):
    """Whether every strategy, the control included, was below the start
    already at the first evaluation (then the drop is not a strategy's)."""
    firsts = {}
    for name, group in runs.items():
        curves, steps = evaluations(group)
        if not steps:
            return []
        firsts[name] = (steps[0], float(np.mean([c[steps[0]] for c in curves])))
        if name == CONTROL:
            last_step, last = steps[-1], float(np.mean([c[steps[-1]] for c in curves]))
    start = results["student_eval_accuracy"]
    if len({step for step, _ in firsts.values()}) != 1 or not all(
        value < start for _, value in firsts.values()
    ):
        return []
    step = next(iter(firsts.values()))[0]
    values = [value for _, value in firsts.values()]
    return [
        f"- Every strategy was below the start at the first evaluation: at step {step}, "
        f"the mean accuracy on the {results['settings']['eval_limit']} evaluation problems "
        f"was already {percent(min(values))}-{percent(max(values))}%, against the start's "
        f"{percent(start)}% on them, the control's too ({percent(firsts[CONTROL][1])}%, "
        f"then {percent(last)}% at step {last_step}), so no strategy's data causes the drop. "
        "Restarting training with a fresh optimizer at this comparison's learning rate is "
        "one explanation; these runs do not test it."
    ]


def against_the_start(runs, start):
    """How many strategies ended above, below or within noise of the
    start's accuracy (each one's t-interval of final minus start)."""
    kinds = {}
    for name, group in runs.items():
        moved = verdict(*interval([r["final"]["train"]["accuracy"] - start for r in group])[1:])
        kinds.setdefault(moved, []).append(name)
    counts = "; ".join(f"{len(names)} {moved}" for moved, names in sorted(kinds.items()))
    return (
        f"Against the SFT student's start ({percent(start)}%), the {len(runs)} strategies "
        f"ended (final minus start, 95% interval over seeds): {counts}."
    )


def difficulty_section(runs, difficulties):
    switching = [n for n in MAIN if n in runs and "switch_rate" in runs[n][0]["final"]["train"]]
    if not switching:
        return []
    lines = [
        "",
        "## Hand-over by difficulty (final students' rollouts)",
        "",
        "Does the switch rate follow difficulty? Difficulties vary the operand range: "
        + ", ".join(f"{d} `max_operand={o['max_operand']}`" for d, o in difficulties.items())
        + ".",
        "",
        "| strategy | "
        + " | ".join(f"switch rate ({d})" for d in difficulties)
        + " | "
        + " | ".join(f"mean switch position ({d})" for d in difficulties)
        + " |",
        "|---|" + "---|" * (2 * len(difficulties)),
    ]
    for name in switching:
        rates = [
            show_rate([r["final"][d]["switch_rate"] for r in runs[name]]) for d in difficulties
        ]
        positions = []
        for d in difficulties:
            values = sum((r["final"][d]["switch_positions"] for r in runs[name]), [])
            positions.append(f"{np.mean(values):.1f}" if values else "-")
        lines.append(f"| {name} | " + " | ".join(rates + positions) + " |")
    lines.append("")
    lines.append(
        "(switch rates in percent of sequences, intervals clipped to 0-100; positions in "
        "tokens into the response)"
    )
    easiest, *_, hardest = difficulties
    lines += ["", f"Switch rate, {hardest} minus {easiest} (paired by seed, points):", ""]
    follows = {
        "higher": "rises with difficulty",
        "lower": "falls with difficulty",
        "within noise": "no detectable change with difficulty",
    }
    for name in switching:
        change = interval(
            [
                r["final"][hardest]["switch_rate"] - r["final"][easiest]["switch_rate"]
                for r in runs[name]
            ]
        )
        moved = follows.get(verdict(*change[1:]), "the same change on every seed, no interval")
        if all(r["final"][d]["switch_rate"] == 1.0 for r in runs[name] for d in difficulties):
            moved = "every sequence switches at every difficulty, on every seed"
        lines.append(f"- {name}: {show(*change)}: {moved}.")
    return lines


def ablation_section(runs):
    """The switching scores on the seeds every one has (the forward-KL
    reference is the main comparison's AdaSwitch, which has more seeds)."""
    names = [n for n in ABLATION if n in runs]
    if len(names) < 2:
        return []
    seeds = shared_seeds(runs, names)
    if not seeds:
        return []
    lines = [
        "",
        "## Ablation: AdaSwitch's switching divergence",
        "",
        f"Every switching score on seeds {', '.join(map(str, sorted(seeds)))} (the seeds all "
        "of them have; the main table has the forward-KL reference on all of its seeds).",
        "",
        "| switching score | seeds | accuracy (train) | switch rate (train) | "
        f"{ADASWITCH} (forward KL) minus it (paired, points): AdaSwitch is |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        group = [r for r in runs[name] if r["seed"] in seeds]
        acc = show(*interval([r["final"]["train"]["accuracy"] for r in group]))
        rate = show_rate([r["final"]["train"]["switch_rate"] for r in group])
        if name == ADASWITCH:
            difference = "(reference)"
        else:
            (mean, low, high), _ = paired(runs[ADASWITCH], group)
            difference = f"{show(mean, low, high)}: {verdict(low, high)}"
        lines.append(f"| {name} | {len(group)} | {acc} | {rate} | {difference} |")
    return lines


def grid_runs(runs):
    """The grid's cells on the seeds every cell has (its (5, 2) cell is the
    main comparison's AdaSwitch, which has more seeds), or {} until every
    cell has one."""
    if not all(name in runs for name in GRID):
        return {}
    seeds = shared_seeds(runs, GRID)
    return {name: [r for r in runs[name] if r["seed"] in seeds] for name in GRID} if seeds else {}


def grid_complete(runs):
    return bool(grid_runs(runs))


def grid_section(runs):
    cells_runs = grid_runs(runs)
    if not cells_runs:
        return []
    names = list(GRID)
    seeds = sorted({r["seed"] for r in cells_runs[names[0]]})
    lines = [
        "",
        "## AdaSwitch's window L x multiplier K (accuracy, train difficulty)",
        "",
        f"Every cell on seeds {', '.join(map(str, seeds))} (the seeds all cells have).",
        "",
        "| L \\ K | " + " | ".join(f"{k:g}" for k in MULTIPLIERS) + " |",
        "|---|" + "---|" * len(MULTIPLIERS),
    ]
    for i, w in enumerate(WINDOWS):
        cells = []
        for j in range(len(MULTIPLIERS)):
            group = cells_runs[names[i * len(MULTIPLIERS) + j]]
            cells.append(show(*interval([r["final"]["train"]["accuracy"] for r in group])))
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return lines


def plot(results, main_runs, runs, output):
    figure, axis = subplots(figsize=(8, 5))
    for name, group in main_runs.items():
        curves, steps = evaluations(group)
        start = results["student_eval_accuracy"]
        values = 100 * np.array([[start] + [c[step] for step in steps] for c in curves])
        steps = [0] + steps
        axis.plot(steps, values.mean(0), marker=".", label=name)
        if len(curves) > 1:
            low, high = zip(*(interval(column)[1:] for column in values.T))
            axis.fill_between(steps, low, high, alpha=0.12)
    axis.axhline(
        100 * results["teacher_accuracy"]["train"],
        color="k",
        ls=":",
        label=f"teacher ({results['settings']['test_size']} problems)",
    )
    axis.set(
        xlabel="training step",
        ylabel="test accuracy, % (greedy exact match)",
        title="Student accuracy from the SFT plateau (mean, 95% interval over seeds)",
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(output, "accuracy_vs_step.png"), dpi=120)

    cells_runs = grid_runs(runs)
    if cells_runs:
        values = np.array(
            [np.mean([r["final"]["train"]["accuracy"] for r in cells_runs[n]]) for n in GRID]
        ).reshape(len(WINDOWS), len(MULTIPLIERS))
        figure, axis = subplots(figsize=(5, 4))
        image = axis.imshow(100 * values, cmap="viridis")
        for (i, j), value in np.ndenumerate(values):
            axis.text(j, i, f"{100 * value:.1f}", ha="center", va="center", color="w")
        axis.set_xticks(range(len(MULTIPLIERS)), [f"K={k:g}" for k in MULTIPLIERS])
        axis.set_yticks(range(len(WINDOWS)), [f"L={w}" for w in WINDOWS])
        axis.set_title("AdaSwitch accuracy (%), mean over seeds")
        figure.colorbar(image)
        figure.tight_layout()
        figure.savefig(os.path.join(output, "grid.png"), dpi=120)


# -- driver ---------------------------------------------------------------------
def merge(results, other):
    """`results` with the runs of `other`, another output's `results.json`
    (a stage run side by side, from a copy of this one and `--resume`):
    both must come from the same settings, versions and starting models; a
    run that both have must be the same run."""
    for key in ("settings", "backend", "versions", "teacher_accuracy", "student_accuracy"):
        if results[key] != other[key]:
            raise ValueError(f"Cannot merge: {key} differ ({results[key]} and {other[key]}).")
    have, new = keyed(results), keyed(other)
    clashes = sorted(key for key in have.keys() & new.keys() if have[key] != new[key])
    if clashes:
        raise ValueError(f"Cannot merge: different runs of {clashes}.")
    return {
        **results,
        "commands": results["commands"]
        + [c for c in other["commands"] if c not in results["commands"]],
        "runs": results["runs"] + [run for key, run in new.items() if key not in have],
    }


def keyed(results):
    return {(run["name"], run["seed"]): run for run in results["runs"]}


def tiny_pair(output):
    """Untrained tiny presets for --smoke, which checks the machinery only."""
    paths = []
    for role, layers in (("teacher", 2), ("student", 1)):
        path = os.path.join(output, f"tiny-{role}")
        model = ak.tiny.causal_lm(num_layers=layers, hidden_dim=16, sequence_length=256)
        model.save_to_preset(path)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=[*STAGES, "report"], default="main")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    parser.add_argument(
        "--eval-limit", type=int, default=200, help="test problems scored during training"
    )
    parser.add_argument(
        "--test-size", type=int, default=500, help="test problems per difficulty at the end"
    )
    parser.add_argument(
        "--rollout-limit", type=int, default=128, help="test prompts rolled out for hand-over"
    )
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--teacher", help="a preset; the shipped arithmetic-hard-teacher")
    parser.add_argument("--student", help="a preset; the shipped arithmetic-hard-student")
    parser.add_argument("--output", default="docs/results/strategies_plateau")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="add to the runs in --output/results.json (same settings), skipping those done",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="DIR",
        help="with --stage report: first add the runs of these outputs (stages run side by "
        "side into other --output folders) to --output/results.json",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="an untrained tiny pair, three strategies, 2 steps, tiny evaluations (CI)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_every, args.seeds = 2, 1, [0]
        args.eval_limit = args.test_size = args.rollout_limit = args.eval_batch_size = 8
    if args.merge and args.stage != "report":
        parser.error("--merge goes with --stage report.")
    if args.steps % args.eval_every:
        parser.error("--steps must be a multiple of --eval-every")
    saved = os.path.join(args.output, "results.json")
    if args.stage == "report":
        if not os.path.exists(saved):
            parser.error(f"No {saved} to report on.")
        with open(saved) as f:
            results = json.load(f)
        for folder in args.merge:
            with open(os.path.join(folder, "results.json")) as f:
                try:
                    results = merge(results, json.load(f))
                except ValueError as error:
                    parser.error(f"{folder}: {error}")
        if args.merge:
            with open(saved, "w") as f:
                json.dump(results, f, indent=1)
        report(results, args.output)
        return
    os.makedirs(args.output, exist_ok=True)
    if args.smoke and not (args.teacher or args.student):
        args.teacher, args.student = tiny_pair(args.output)
    args.teacher = args.teacher or presets.path("arithmetic-hard-teacher")
    args.student = args.student or presets.path("arithmetic-hard-student")
    args.max_new_tokens = presets.HARD_MAX_NEW_TOKENS
    args.commit = git_commit()  # the code of this invocation's runs
    settings = {key: getattr(args, key) for key in COMPARED}
    command = " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else argv))

    if os.path.exists(saved) and args.resume:
        with open(saved) as f:
            results = json.load(f)
        different = {
            key: (results["settings"].get(key), value)
            for key, value in settings.items()
            if results["settings"].get(key) != value
        }
        if different:
            parser.error(
                f"{saved} was made with other settings (saved, now): {different}. "
                "Use the same settings or another --output."
            )
        results["commands"].append(command)
    elif os.path.exists(saved):
        parser.error(f"{saved} exists: pass --resume to add to it, or another --output.")
    else:
        results = None

    teacher = keras_hub.models.CausalLM.from_preset(args.teacher)
    train = ak.data.load(
        "arithmetic", "train", limit=64 if args.smoke else None, **presets.HARD_TASK
    )
    tests = {
        d: ak.data.load("arithmetic", "test", limit=args.test_size, **o)
        for d, o in DIFFICULTIES.items()
    }
    if results is None:
        student = keras_hub.models.CausalLM.from_preset(args.student)
        results = {
            "commands": [command],
            **environment(),
            "settings": settings,
            "difficulties": DIFFICULTIES,
            "teacher_accuracy": {
                d: accuracy(teacher, rows, args.eval_batch_size) for d, rows in tests.items()
            },
            "student_accuracy": {
                d: accuracy(student, rows, args.eval_batch_size) for d, rows in tests.items()
            },
            "student_eval_accuracy": accuracy(  # step 0 of every accuracy-vs-step curve
                student, tests["train"][: args.eval_limit], args.eval_batch_size
            ),
            "runs": [],
        }
        print(
            f"teacher accuracy {results['teacher_accuracy']}, "
            f"SFT student accuracy {results['student_accuracy']}",
            flush=True,
        )
    done = set(keyed(results))
    strategies = STAGES[args.stage]
    for seed in args.seeds:
        for name, make in strategies.items():
            if (args.smoke and name not in SMOKE) or (name, seed) in done:
                continue
            results["runs"].append(run(name, make, seed, teacher, train, tests, args))
            done.add((name, seed))
            with open(saved, "w") as f:  # after every run: an interruption loses one run
                json.dump(results, f, indent=1)
    with open(saved, "w") as f:
        json.dump(results, f, indent=1)
    report(results, args.output)
    print(f"page: {os.path.abspath(args.output.rstrip('/') + '.md')}")


if __name__ == "__main__":
    main()
