"""Evidence that can tell: every strategy from a student at its SFT plateau,
under a continuation that does no harm by itself.

    KERAS_BACKEND=jax python benchmarks/evidence.py --stage calibrate --seeds 0 1
    KERAS_BACKEND=jax python benchmarks/evidence.py --stage grid --seeds 0 1
    KERAS_BACKEND=jax python benchmarks/evidence.py --stage main --seeds 0 1 2 3 4
    KERAS_BACKEND=jax python benchmarks/evidence.py --stage report
    KERAS_BACKEND=jax python benchmarks/evidence.py --smoke --output /tmp/evidence

It answers the four faults of the plateau page (docs/results/strategies_plateau.md):

- the start is `--student`, a student whose SFT stopped by patience on the
  validation split (scripts/train_model.py --init-from, docs/presets.md);
- every choice is made on the arithmetic task's `validation` block and the
  final scores are on its `fresh_test` block, never used for a choice and
  disjoint from training and from the problems that stopped SFT;
- `calibrate` runs the SFT-continued control alone under each of
  `PROTOCOLS` (optimizer and schedule); `choose_protocol`, a rule fixed
  before the runs, picks the one every arm then uses;
- `grid` runs AdaSwitch's window L x multiplier K under that protocol;
  `choose_window` picks the selective setting, and FixedSwitch switches at
  that setting's mean switch position.

Each stage writes `<output>/<stage>/results.json` (one run written at a
time; `--resume` skips the runs done; `--merge DIR ...` with `--stage
report` adds the runs of a stage that ran side by side into another
output); every stage ends by writing the page `<output>.md` from the
results files alone.
"""

import argparse
import json
import os
import sys

import keras
import keras_hub
import numpy as np
from compare_strategies import CONTROL  # benchmarks/compare_strategies.py
from compare_strategies import DIFFICULTIES
from compare_strategies import _skd_reference_samplers
from compare_strategies import accuracy
from compare_strategies import interval
from compare_strategies import keyed
from compare_strategies import merge
from compare_strategies import paired
from compare_strategies import percent
from compare_strategies import run
from compare_strategies import show
from compare_strategies import show_rate
from compare_strategies import tiny_pair
from compare_strategies import verdict
from provenance import environment
from provenance import git_commit

import adaswitch_keras as ak
from adaswitch_keras import presets
from adaswitch_keras.plotting import subplots

# Candidate continuations for every arm: the plateau page's (a fresh AdamW
# at a constant 3e-4, Keras' default weight decay) and gentler ones shaped
# like SFT's own schedule (linear warm-up, cosine decay, weight decay 0.01).
PROTOCOLS = {
    "constant 3e-4, weight decay 0.004": dict(
        learning_rate=3e-4, warmup_steps=0, final_learning_rate=3e-4, weight_decay=0.004
    ),
    "warm-up 30 to 1e-4, cosine to 1e-5, weight decay 0.01": dict(
        learning_rate=1e-4, warmup_steps=30, final_learning_rate=1e-5, weight_decay=0.01
    ),
    "warm-up 30 to 3e-5, cosine to 1e-5, weight decay 0.01": dict(
        learning_rate=3e-5, warmup_steps=30, final_learning_rate=1e-5, weight_decay=0.01
    ),
}
NO_HARM = 0.01  # a protocol does no harm when the control's mean change is within 1 point
WINDOWS, MULTIPLIERS = (5, 10, 20), (2.0, 5.0, 20.0)
PAPER = (5, 2.0)  # the paper's default (L, K)
SPLITS = {"calibrate": "validation", "grid": "validation", "main": "fresh_test"}
# Settings that runs of one stage must share (and that a resumed run must repeat).
COMPARED = (
    "teacher",
    "student",
    "steps",
    "batch_size",
    "eval_every",
    "eval_limit",
    "test_size",
    "rollout_limit",
    "max_new_tokens",
    "final_split",
    "protocol",
)


def adaswitch_name(window, k):
    return f"AdaSwitch(L={window}, K={k:g})"


def optimizer(protocol, steps):
    """AdamW with a linear warm-up to the peak, then cosine decay to the
    final rate at `steps` (a constant rate when the two are equal)."""
    peak, warmup = protocol["learning_rate"], protocol["warmup_steps"]
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        max(steps - warmup, 1),  # --smoke's 2 steps are all warm-up
        alpha=protocol["final_learning_rate"] / peak,
        warmup_target=peak,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(schedule, weight_decay=protocol["weight_decay"])


def change(group, start, split_key="train"):
    """Each run's final accuracy minus the start's: (mean, low, high)."""
    return interval([r["final"][split_key]["accuracy"] - start for r in group])


def choose_protocol(calibration):
    """Of the protocols whose control moved the student by less than
    `NO_HARM` (mean over seeds, validation, train difficulty), the one with
    the highest peak learning rate: the more a protocol lets the student
    move, the more a strategy's own effect can show. None if none does."""
    start = calibration["student_accuracy"]["train"]
    harmless = [
        name
        for name, group in by_name(calibration).items()
        if abs(change(group, start)[0]) < NO_HARM
    ]
    if not harmless:
        return None
    return max(harmless, key=lambda name: PROTOCOLS[name]["learning_rate"])


def grid_cells(grid):
    """{(L, K): runs} for every cell with a run."""
    runs = by_name(grid)
    return {
        (w, k): runs[adaswitch_name(w, k)]
        for w in WINDOWS
        for k in MULTIPLIERS
        if adaswitch_name(w, k) in runs
    }


def mean_final(group, key, difficulty="train"):
    return float(np.mean([r["final"][difficulty][key] for r in group]))


def mean_position(group, difficulty="train"):
    positions = sum((r["final"][difficulty]["switch_positions"] for r in group), [])
    return float(np.mean(positions)) if positions else None


def selective(group):
    """A cell that selects: it switches on fewer than all train-difficulty
    sequences, and more often on the harder ones than on the easier ones."""
    rate = mean_final(group, "switch_rate")
    rises = mean_final(group, "switch_rate", "harder") > mean_final(group, "switch_rate", "easier")
    return rate < 1.0 and rises and mean_position(group) is not None


def choose_window(grid):
    """Of the selective cells, the one with the highest validation accuracy
    (train difficulty, mean over seeds), and FixedSwitch's position: that
    cell's mean switch position, rounded. None if no cell selects."""
    cells = {cell: group for cell, group in grid_cells(grid).items() if selective(group)}
    if not cells:
        return None
    cell = max(cells, key=lambda c: mean_final(cells[c], "accuracy"))
    return cell, round(mean_position(cells[cell]))


def main_arms(window, k, position):
    """The main comparison's arms, in the order they run (arms outer, seeds
    inner: if compute must give, the last arms are cut, not seeds)."""
    arms = {
        CONTROL: lambda: dict(strategy=ak.SFT()),
        adaswitch_name(window, k): lambda: dict(strategy=ak.AdaSwitch(window=window, k=k)),
        f"FixedSwitch(position={position})": lambda: dict(
            strategy=ak.FixedSwitch(position=position)
        ),
        "SeqKD-divergence": lambda: dict(strategy=ak.SeqKDDivergence()),
        "OnPolicy": lambda: dict(strategy=ak.OnPolicy()),
        adaswitch_name(*PAPER): lambda: dict(strategy=ak.AdaSwitch(window=PAPER[0], k=PAPER[1])),
        "SeqKD": lambda: dict(strategy=ak.SeqKD()),
        "GKD(lmbda=0.5)": lambda: dict(strategy=ak.GKD(lmbda=0.5)),
        "SKD(top_k=25, reference samplers)": _skd_reference_samplers,
        "Switch(tau0=0.2, decay=0.05)": lambda: dict(strategy=ak.Switch(tau0=0.2, decay=0.05)),
        "SupervisedKD": lambda: dict(strategy=ak.SupervisedKD()),
    }
    return arms


def by_name(results):
    runs = {}
    for r in results["runs"]:
        runs.setdefault(r["name"], []).append(r)
    return runs


def load(output, stage):
    path = os.path.join(output, stage, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# -- the page -------------------------------------------------------------------
def report(output):
    """`<output>.md` and its plots, from the stages' results files alone."""
    folder = os.path.basename(output.rstrip("/"))
    stages = {stage: load(output, stage) for stage in SPLITS}
    commits = sorted({r["commit"] for s in stages.values() if s for r in s["runs"]})
    lines = [
        "# Evidence that can tell: strategies from the SFT plateau, a harmless continuation",
        "",
        "Generated by `benchmarks/evidence.py` from "
        + ", ".join(f"[{stage}]({folder}/{stage}/results.json)" for stage, s in stages.items() if s)
        + "; do not edit by hand.",
        "",
        f"- Commit(s) of the runs: {', '.join(f'`{c}`' for c in commits) or '-'}"
        + (" (**more than one**)" if len(commits) > 1 else ""),
    ]
    for stage, results in stages.items():
        if results:
            lines.append(
                f"- `{stage}`: {'; '.join(f'`{c}`' for c in results['commands'])} "
                f"(backend {results['backend']}, {results['machine']}; "
                + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
                + ")"
            )
    lines += calibration_section(stages["calibrate"], output)
    lines += grid_section(stages["grid"])
    lines += main_section(stages["main"])
    with open(output.rstrip("/") + ".md", "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")


def settings_line(results):
    s = results["settings"]
    return (
        f"{s['steps']} steps, batch {s['batch_size']}, `max_new_tokens={s['max_new_tokens']}`; "
        f"final scores on {s['test_size']} `{s['final_split']}` problems per difficulty, "
        f"greedy exact match in percent; curves on the first {s['eval_limit']} of them; "
        f"teacher `{os.path.basename(s['teacher'])}` {percent(results['teacher_accuracy']['train'])}%"
        f", start student `{os.path.basename(s['student'])}` "
        f"{percent(results['student_accuracy']['train'])}% (train difficulty)"
        + (f". Protocol: {s['protocol']['name']}." if s["protocol"] else ".")
    )


def calibration_section(results, output):
    if not results:
        return []
    folder = os.path.basename(output.rstrip("/"))
    start = results["student_accuracy"]["train"]
    lines = [
        "",
        "## 1. Calibration: the SFT-continued control alone, on the validation split",
        "",
        settings_line(results),
        "",
        f"Rule, fixed before the runs: of the protocols whose control moves the student by less "
        f"than {100 * NO_HARM:g} point (mean over seeds), the one with the highest peak "
        "learning rate.",
        "",
        "| protocol | seeds | final minus start (points) | the control |",
        "|---|---|---|---|",
    ]
    for name, group in by_name(results).items():
        mean, low, high = change(group, start)
        moved = {"higher": "raises it", "lower": "lowers it"}.get(verdict(low, high), "no change")
        lines.append(f"| {name} | {len(group)} | {show(mean, low, high)} | {moved} |")
    chosen = choose_protocol(results)
    lines += ["", f"Chosen: **{chosen}**." if chosen else "No protocol qualifies yet."]
    plot_curves(results, os.path.join(output, "calibration.png"), "The control under each protocol")
    lines += ["", f"![calibration curves]({folder}/calibration.png)"]
    return lines


def grid_section(results):
    if not results:
        return []
    cells = grid_cells(results)
    lines = [
        "",
        "## 2. AdaSwitch's window L x multiplier K, on the validation split",
        "",
        settings_line(results),
        "",
        "A cell *selects* when it switches on fewer than all train-difficulty sequences "
        "and more often on harder than on easier ones. Rule, fixed before the runs: the "
        "selective cell with the highest validation accuracy; FixedSwitch's position is "
        "its mean switch position, rounded.",
        "",
        "| L | K | seeds | accuracy | switch rate (easier / train / harder) | "
        "mean switch position | teacher tokens | selects |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (w, k), group in cells.items():
        rates = " / ".join(
            show_rate([r["final"][d]["switch_rate"] for r in group]) for d in DIFFICULTIES
        )
        position = mean_position(group)
        lines.append(
            f"| {w} | {k:g} | {len(group)} | "
            f"{show(*interval([r['final']['train']['accuracy'] for r in group]))} | {rates} | "
            f"{'-' if position is None else f'{position:.1f}'} | "
            f"{percent(mean_final(group, 'teacher_token_fraction'))}% | "
            f"{'yes' if selective(group) else 'no'} |"
        )
    chosen = choose_window(results)
    if chosen:
        (w, k), position = chosen
        lines += ["", f"Chosen: **{adaswitch_name(w, k)}**, FixedSwitch(position={position})."]
    else:
        lines += ["", "No cell selects yet."]
    return lines


def main_section(results):
    if not results:
        return []
    runs = by_name(results)
    start = results["student_accuracy"]["train"]
    lines = [
        "",
        "## 3. The comparison, on the fresh test split",
        "",
        settings_line(results),
        "",
        "| arm | seeds | accuracy (train difficulty) | easier | harder | switch rate | "
        "teacher tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, group in runs.items():
        cells = [
            show(*interval([r["final"][d]["accuracy"] for r in group]))
            for d in ("train", "easier", "harder")
        ]
        switching = "switch_rate" in group[0]["final"]["train"]
        rate = show_rate([r["final"]["train"]["switch_rate"] for r in group]) if switching else "-"
        tokens = f"{percent(mean_final(group, 'teacher_token_fraction'))}%" if switching else "-"
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + f" | {rate} | {tokens} |")
    if CONTROL in runs:
        mean, low, high = change(runs[CONTROL], start)
        lines += [
            "",
            f"The control's final minus the start, per seed: {show(mean, low, high)} points "
            f"({verdict(low, high)}).",
        ]
    method = results["settings"]["adaswitch"]
    if method in runs:
        others = [n for n in runs if n != method]
        lines += [
            "",
            f"### {method} minus each arm (paired by seed, train difficulty)",
            "",
            f"Each interval is for its own comparison, not corrected for the {len(others)} made.",
            "",
            "| arm | seeds | difference (points) | AdaSwitch is |",
            "|---|---|---|---|",
        ]
        for name in others:
            (mean, low, high), seeds = paired(runs[method], runs[name])
            if seeds:
                lines.append(
                    f"| {name} | {len(seeds)} | {show(mean, low, high)} | {verdict(low, high)} |"
                )
    return lines


def plot_curves(results, path, title):
    figure, axis = subplots(figsize=(8, 5))
    start = results["student_eval_accuracy"]
    for name, group in by_name(results).items():
        steps = sorted({p["step"] for p in group[0]["accuracy_vs_step"]})
        curves = [{p["step"]: p["eval_accuracy"] for p in r["accuracy_vs_step"]} for r in group]
        values = 100 * np.array([[start] + [c.get(s, np.nan) for s in steps] for c in curves])
        axis.plot([0] + steps, np.nanmean(values, 0), marker=".", label=name)
    axis.axhline(100 * start, color="k", ls=":", label="start")
    axis.set(xlabel="training step", ylabel="accuracy, % (greedy exact match)", title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# -- driver ---------------------------------------------------------------------
def experiments(args):
    """{name: (make, protocol)} of the stage's runs, and its protocol setting."""
    if args.stage == "calibrate":
        arms = {name: (lambda: dict(strategy=ak.SFT()), p) for name, p in PROTOCOLS.items()}
        return arms, None
    calibration = load(args.output, "calibrate")
    chosen = args.protocol or (calibration and choose_protocol(calibration))
    if not chosen:
        sys.exit("No protocol chosen: run --stage calibrate first, or pass --protocol.")
    protocol = {"name": chosen, **PROTOCOLS[chosen]}
    if args.stage == "grid":
        cells = {
            adaswitch_name(w, k): lambda w=w, k=k: dict(strategy=ak.AdaSwitch(window=w, k=k))
            for w in WINDOWS
            for k in MULTIPLIERS
        }
        return {name: (make, protocol) for name, make in cells.items()}, protocol
    if args.window:
        (w, k), position = args.window, args.fixed_position
    else:
        grid = load(args.output, "grid")
        chosen = grid and choose_window(grid)
        if not chosen:
            sys.exit("No selective AdaSwitch setting: run --stage grid first, or pass --window.")
        (w, k), position = chosen
    arms = main_arms(int(w), float(k), int(position))
    args.adaswitch = adaswitch_name(int(w), float(k))
    return {name: (make, protocol) for name, make in arms.items()}, protocol


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=[*SPLITS, "report"], default="calibrate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    parser.add_argument("--eval-limit", type=int, default=200, help="problems of each curve")
    parser.add_argument(
        "--test-size", type=int, default=2000, help="problems per difficulty at the end"
    )
    parser.add_argument(
        "--rollout-limit", type=int, default=256, help="prompts rolled out for hand-over"
    )
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--teacher", help="a preset; the shipped arithmetic-hard-teacher")
    parser.add_argument("--student", required=False, help="a preset: the plateau student")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="instead of the calibrated one")
    parser.add_argument(
        "--window", nargs=2, type=float, metavar=("L", "K"), help="instead of the grid's choice"
    )
    parser.add_argument("--fixed-position", type=int, help="instead of the grid's choice")
    parser.add_argument("--output", default="docs/results/strategies_evidence")
    parser.add_argument("--resume", action="store_true", help="skip the runs done")
    parser.add_argument("--merge", nargs="+", default=[], metavar="DIR")
    parser.add_argument("--smoke", action="store_true", help="an untrained tiny pair (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_every, args.seeds = 2, 1, [0]
        args.eval_limit = args.test_size = args.rollout_limit = args.eval_batch_size = 8
    if args.steps % args.eval_every:
        parser.error("--steps must be a multiple of --eval-every")
    if args.window and args.fixed_position is None:
        parser.error("--window goes with --fixed-position")
    if args.stage == "report":
        for folder in args.merge:  # <folder>/<stage>/results.json into ours
            for stage in SPLITS:
                other = load(folder, stage)
                if other:
                    ours = load(args.output, stage)
                    merged = merge(ours, other) if ours else other
                    with open(os.path.join(args.output, stage, "results.json"), "w") as f:
                        json.dump(merged, f, indent=1)
        report(args.output)
        return
    if args.smoke and not (args.teacher or args.student):
        os.makedirs(args.output, exist_ok=True)
        args.teacher, args.student = tiny_pair(args.output)
    if not args.student:
        parser.error("--student: the plateau student's preset")
    args.teacher = args.teacher or presets.path("arithmetic-hard-teacher")
    args.max_new_tokens = presets.HARD_MAX_NEW_TOKENS
    args.final_split = SPLITS[args.stage]
    args.commit = git_commit()
    stage_runs, args.protocol = experiments(args)
    if args.smoke:  # the machinery, not the tables: two runs of the stage
        stage_runs = dict(list(stage_runs.items())[:2])
    settings = {key: getattr(args, key) for key in COMPARED}
    if args.stage == "main":
        settings["adaswitch"] = args.adaswitch
    command = " ".join(["evidence.py"] + (sys.argv[1:] if argv is None else argv))
    saved = os.path.join(args.output, args.stage, "results.json")
    os.makedirs(os.path.dirname(saved), exist_ok=True)
    results = load(args.output, args.stage)
    if results and not args.resume:
        parser.error(f"{saved} exists: pass --resume to add to it, or another --output.")
    if results and results["settings"] != settings:
        parser.error(f"{saved} was made with other settings: {results['settings']}.")

    teacher = keras_hub.models.CausalLM.from_preset(args.teacher)
    limit = 64 if args.smoke else None
    train = ak.data.load("arithmetic", "train", limit=limit, **presets.HARD_TASK)
    tests = {
        d: ak.data.load("arithmetic", args.final_split, limit=args.test_size, **o)
        for d, o in DIFFICULTIES.items()
    }
    curve_rows = tests["train"][: args.eval_limit]
    if results is None:
        student = keras_hub.models.CausalLM.from_preset(args.student)
        results = {
            "commands": [],
            **environment(),
            "settings": settings,
            "difficulties": DIFFICULTIES,
            "teacher_accuracy": {
                d: accuracy(teacher, rows, args.eval_batch_size) for d, rows in tests.items()
            },
            "student_accuracy": {
                d: accuracy(student, rows, args.eval_batch_size) for d, rows in tests.items()
            },
            "student_eval_accuracy": accuracy(student, curve_rows, args.eval_batch_size),
            "runs": [],
        }
    results["commands"].append(command)
    done = set(keyed(results))
    for name, (make, protocol) in stage_runs.items():
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            result = run(
                name,
                make,
                seed,
                teacher,
                train,
                tests,
                args,
                curve_rows=curve_rows,
                optimizer=lambda p=protocol: optimizer(p, args.steps),
            )
            results["runs"].append({**result, "protocol": protocol})
            with open(saved, "w") as f:  # after every run: an interruption loses one run
                json.dump(results, f, indent=1)
    with open(saved, "w") as f:
        json.dump(results, f, indent=1)
    report(args.output)
    print(f"page: {os.path.abspath(args.output.rstrip('/') + '.md')}")


if __name__ == "__main__":
    main()
