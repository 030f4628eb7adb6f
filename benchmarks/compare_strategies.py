"""Every strategy on identical code: the paper's comparison at CPU scale.

    KERAS_BACKEND=jax python benchmarks/compare_strategies.py --output docs/results/strategies
    KERAS_BACKEND=jax python benchmarks/compare_strategies.py --smoke --output /tmp/smoke

From the shipped arithmetic teacher and the shipped warm-up student (one SFT
checkpoint for all), each strategy distils for the same steps, batch,
learning rate, rollout length and sampling temperature, once per seed. The
student is scored (greedy exact match) on the test split every
`--eval-every` steps and, at the end, on an easier, the training and a
harder difficulty; there a rollout of the final student also measures how
often the strategy hands over to the teacher. A sweep of AdaSwitch's window L
and multiplier K (one seed) runs on the same settings.

Writes to `--output`: `results.json` (every number, with versions, backend
and seeds), `table.md`, `accuracy_vs_step.png`, `adaswitch_dynamics.png`,
`sweep.png`.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import keras
import keras_hub
import numpy as np
from provenance import git_commit  # benchmarks/provenance.py

import adaswitch_keras as ak
from adaswitch_keras import presets
from adaswitch_keras.callbacks import TaskEvaluation
from adaswitch_keras.plotting import subplots

STRATEGIES = {
    "SFT": ak.strategies.SFT,
    "SupervisedKD": ak.strategies.SupervisedKD,
    "SeqKD": ak.strategies.SeqKD,
    "OnPolicy": ak.strategies.OnPolicy,
    "GKD(lmbda=0.5)": lambda: ak.strategies.GKD(lmbda=0.5),
    "SKD(top_k=5)": lambda: ak.strategies.SKD(top_k=5),
    "Switch(tau0=0.2, decay=0.05)": lambda: ak.strategies.Switch(tau0=0.2, decay=0.05),
    "AdaSwitch(L=5, K=2)": lambda: ak.strategies.AdaSwitch(window=5, k=2.0),
}
# --smoke (CI): one strategy of each kind of rollout (none, the student's, both models').
SMOKE_STRATEGIES = ("SFT", "OnPolicy", "AdaSwitch(L=5, K=2)")
# One knob at a time around (L=5, K=2): the window at K=2, the multiplier at L=5.
SWEEP = [(2, 2.0), (5, 2.0), (10, 2.0), (5, 1.5), (5, 3.0)]
# The presets' task with smaller and larger operands. The teacher knows only
# two-step problems (one or three steps: 0% on 8 problems), so difficulty
# varies the operands: it scores 100% / 100% / 80% on 128 problems of each.
DIFFICULTIES = {
    "easier": {**presets.TASK, "max_operand": 10},
    "train": dict(presets.TASK),
    "harder": {**presets.TASK, "max_operand": 30},
}


def handover(distiller, rows, batch_size):
    """Switch rate, teacher-token fraction and switch positions of the final
    student's rollouts on `rows` (no training)."""
    out = distiller.predict(rows, batch_size, verbose=0)
    response, teacher = out["response_mask"].astype(bool), out["teacher_token_mask"].astype(bool)
    switched = teacher.any(axis=1)
    prompt_length = out["padding_mask"].sum(1) - response.sum(1)
    return {
        "switch_rate": float(switched.mean()),
        "teacher_token_fraction": float((teacher.sum(1) / np.maximum(response.sum(1), 1)).mean()),
        "switch_positions": (out["switch_index"] - prompt_length)[switched].tolist(),
    }


def run(name, strategy, seed, teacher, train, tests, args):
    """Distil a fresh copy of the warm-up student; every number of one run."""
    keras.utils.set_random_seed(seed)
    student = keras_hub.models.CausalLM.from_preset(presets.path("arithmetic-student"))
    distiller = ak.Distiller(
        teacher, student, strategy=strategy, max_new_tokens=presets.MAX_NEW_TOKENS, seed=seed
    )
    distiller.compile(optimizer=keras.optimizers.AdamW(args.learning_rate))
    clock = ak.callbacks.StepTimer()
    evaluation = TaskEvaluation(
        "arithmetic",
        tests["train"][: args.eval_limit],
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
    seconds = time.perf_counter() - start
    result = {
        "strategy": name,
        "config": repr(distiller.strategy),
        "seed": seed,
        "seconds": seconds,
        "step_seconds_median": clock.median(),
        "history": history,
        "accuracy_vs_step": evaluation.history,
        "final": {},
    }
    for difficulty, rows in tests.items():
        metrics = ak.evaluate(
            student, "arithmetic", examples=rows, batch_size=args.eval_batch_size, verbose=0
        )
        result["final"][difficulty] = {"accuracy": metrics["accuracy"]}
        if distiller.strategy.decoders == ("student", "teacher"):
            rollout_rows = rows[: args.rollout_limit]
            result["final"][difficulty].update(
                handover(distiller, rollout_rows, args.eval_batch_size)
            )
    accuracy = result["final"]["train"]["accuracy"]
    print(
        f"{name:<30} seed {seed}: accuracy {accuracy:.3f}, "
        f"{result['step_seconds_median'] * 1000:.0f} ms/step, {seconds:.0f} s",
        flush=True,
    )
    return result


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def fmt(values, digits=3):
    mean, std = mean_std(values)
    return "-" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def teacher_tokens(run):
    """The teacher's tokens per step (prefilled + scored + decoded, as the
    Distiller logs them), averaged over the run; for equal-cost comparisons."""
    history = run["history"]
    parts = [history.get(key) for key in ("teacher_prefilled", "teacher_scored", "teacher_decoded")]
    if not all(parts):
        return None
    return float(np.mean([sum(step) for step in zip(*parts)]))


def summarize(results, baseline):
    """The Markdown tables: strategies (mean ± std over seeds), then the sweep."""
    by_strategy = {}
    for r in results["runs"]:
        by_strategy.setdefault(r["strategy"], []).append(r)
    base = statistics.median(r["step_seconds_median"] for r in by_strategy[baseline])
    lines = [
        "| strategy | "
        + " | ".join(f"accuracy ({d})" for d in DIFFICULTIES)
        + f" | step time / {baseline} | teacher tokens / step | switch rate (easier / train / harder) | teacher-token fraction (train) |",
        "|---|" + "---|" * len(DIFFICULTIES) + "---|---|---|---|",
    ]
    lines.append(
        "| warm-up student (start) | "
        + " | ".join(f"{results['warm_up_student_accuracy'][d]:.3f}" for d in DIFFICULTIES)
        + " | | | | |"
    )
    lines.append(
        "| teacher | "
        + " | ".join(f"{results['teacher_accuracy'][d]:.3f}" for d in DIFFICULTIES)
        + " | | | | |"
    )
    for name, runs in by_strategy.items():
        accuracies = [fmt([r["final"][d]["accuracy"] for r in runs]) for d in DIFFICULTIES]
        ratio = statistics.median(r["step_seconds_median"] for r in runs) / base
        rates = " / ".join(
            fmt([r["final"][d].get("switch_rate") for r in runs], 2).split(" ±")[0]
            for d in DIFFICULTIES
        )
        fraction = fmt([r["final"]["train"].get("teacher_token_fraction") for r in runs], 2)
        tokens = fmt([teacher_tokens(r) for r in runs], 0)
        lines.append(
            f"| {name} | "
            + " | ".join(accuracies)
            + f" | {ratio:.2f}x | {tokens} | {rates} | {fraction} |"
        )
    lines += [
        "",
        "| AdaSwitch sweep | "
        + " | ".join(f"accuracy ({d})" for d in DIFFICULTIES)
        + " | switch rate (train) | mean switch position (train) | teacher-token fraction (train) |",
        "|---|" + "---|" * len(DIFFICULTIES) + "---|---|---|",
    ]
    for r in results["sweep"]:
        final = r["final"]
        positions = final["train"]["switch_positions"]
        lines.append(
            f"| L={r['window']}, K={r['k']} | "
            + " | ".join(f"{final[d]['accuracy']:.3f}" for d in DIFFICULTIES)
            + f" | {final['train']['switch_rate']:.2f} | "
            + (f"{np.mean(positions):.1f}" if positions else "-")
            + f" | {final['train']['teacher_token_fraction']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results, output):
    runs = results["runs"]
    figure, axis = subplots(figsize=(8, 5))
    for name in dict.fromkeys(r["strategy"] for r in runs):
        curves = [r["accuracy_vs_step"] for r in runs if r["strategy"] == name]
        steps = [0] + [p["step"] for p in curves[0]]
        start = results["warm_up_student_eval_accuracy"]
        values = np.array([[start] + [p["eval_accuracy"] for p in c] for c in curves])
        axis.plot(steps, values.mean(0), marker=".", label=name)
        axis.fill_between(steps, values.min(0), values.max(0), alpha=0.12)
    axis.set_xlabel("training step")
    axis.set_ylabel("test accuracy (greedy exact match)")
    axis.set_title(f"Student accuracy, mean and range over seeds {results['seeds']}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(os.path.join(output, "accuracy_vs_step.png"), dpi=120)

    adaswitch = [r for r in runs if r["strategy"].startswith("AdaSwitch")]
    every = results["settings"]["eval_every"]
    figure, axes = subplots(1, 3, figsize=(14, 4))
    for r in adaswitch:
        steps = [(i + 1) * every for i in range(len(r["history"]["divergence"]))]
        axes[0].plot(steps, r["history"]["divergence"], marker=".", label=f"seed {r['seed']}")
        axes[1].plot(steps, r["history"]["switch_rate"], marker=".", label=f"seed {r['seed']}")
    axes[0].set(
        xlabel="training step",
        ylabel="mean divergence KL(p_T || p_S)",
        title="Divergence (training rollouts)",
    )
    axes[1].set(
        xlabel="training step",
        ylabel="switch rate",
        title="Sequences that switched (training rollouts)",
    )
    axes[1].set_ylim(-0.05, 1.05)
    positions = [
        sum((r["final"][d]["switch_positions"] for r in adaswitch), []) for d in DIFFICULTIES
    ]
    axes[2].hist(positions, bins=range(0, presets.MAX_NEW_TOKENS + 1, 2), label=list(DIFFICULTIES))
    axes[2].set(
        xlabel="switch position in the response (tokens)",
        ylabel="sequences",
        title="Switch positions, final students",
    )
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(os.path.join(output, "adaswitch_dynamics.png"), dpi=120)

    labels = [f"L={r['window']}, K={r['k']}" for r in results["sweep"]]
    figure, axes = subplots(1, 2, figsize=(10, 3.6))
    for axis, key, title in (
        (axes[0], "accuracy", "test accuracy"),
        (axes[1], "switch_rate", "switch rate"),
    ):
        values = [r["final"]["train"][key] for r in results["sweep"]]
        axis.bar(labels, values, color="tab:blue")
        for i, value in enumerate(values):
            axis.text(i, value, f"{value:.3f}", ha="center", va="bottom", fontsize=8)
        axis.set_title(f"AdaSwitch sweep (seed {results['seeds'][0]}): {title}")
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(os.path.join(output, "sweep.png"), dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-every", type=int, default=20, help="steps between test evaluations")
    parser.add_argument(
        "--eval-limit", type=int, default=200, help="test problems scored during training"
    )
    parser.add_argument(
        "--test-size", type=int, default=500, help="test problems per difficulty at the end"
    )
    parser.add_argument(
        "--rollout-limit", type=int, default=128, help="test prompts rolled out for the switch rate"
    )
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--output", default="docs/results/strategies")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of an interrupted run in --output",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="three strategies and one sweep point for 2 steps, tiny evaluations (CI)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_every, args.seeds = 2, 1, [0]
        args.eval_limit = args.test_size = args.rollout_limit = args.eval_batch_size = 8
    if args.steps % args.eval_every:
        parser.error("--steps must be a multiple of --eval-every")
    os.makedirs(args.output, exist_ok=True)

    teacher = keras_hub.models.CausalLM.from_preset(presets.path("arithmetic-teacher"))
    train = ak.data.load("arithmetic", "train", **presets.TASK)
    tests = {
        d: ak.data.load("arithmetic", "test", limit=args.test_size, **o)
        for d, o in DIFFICULTIES.items()
    }
    teacher_accuracy = {
        d: ak.evaluate(
            teacher, "arithmetic", examples=rows, batch_size=args.eval_batch_size, verbose=0
        )["accuracy"]
        for d, rows in tests.items()
    }
    warm_up = keras_hub.models.CausalLM.from_preset(presets.path("arithmetic-student"))
    warm_up_accuracy = {
        d: ak.evaluate(
            warm_up, "arithmetic", examples=rows, batch_size=args.eval_batch_size, verbose=0
        )["accuracy"]
        for d, rows in tests.items()
    }
    warm_up_curve_start = ak.evaluate(  # step 0 of every accuracy-vs-step curve
        warm_up,
        "arithmetic",
        examples=tests["train"][: args.eval_limit],
        batch_size=args.eval_batch_size,
        verbose=0,
    )["accuracy"]
    print(
        f"teacher accuracy: {teacher_accuracy}\nwarm-up student accuracy: {warm_up_accuracy}",
        flush=True,
    )
    results = {
        "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
        "backend": keras.backend.backend(),
        "commit": git_commit(),
        "versions": {
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "seeds": args.seeds,
        "settings": vars(args),
        "difficulties": DIFFICULTIES,
        "teacher_accuracy": teacher_accuracy,
        "warm_up_student_accuracy": warm_up_accuracy,
        "warm_up_student_eval_accuracy": warm_up_curve_start,
        "runs": [],
        "sweep": [],
    }
    done = {}  # (name, seed) -> run, kept from an interrupted run with --resume
    saved = os.path.join(args.output, "results.json")
    if args.resume and os.path.exists(saved):
        with open(saved) as f:
            previous = json.load(f)
        if (
            previous["settings"]["steps"] == args.steps
            and previous["backend"] == results["backend"]
        ):
            done = {(r["strategy"], r["seed"]): r for r in previous["runs"] + previous["sweep"]}
            results["seconds_before_resume"] = previous.get("total_seconds", 0.0)
    start = time.perf_counter()

    def checkpoint():  # after every run: an interruption loses one run at most
        results["total_seconds"] = (
            results.get("seconds_before_resume", 0.0) + time.perf_counter() - start
        )
        with open(saved, "w") as f:
            json.dump(results, f, indent=1)

    def run_once(name, make, seed):
        if (name, seed) not in done:
            done[(name, seed)] = run(name, make(), seed, teacher, train, tests, args)
        return done[(name, seed)]

    for seed in args.seeds:
        for name, make in STRATEGIES.items():
            if args.smoke and name not in SMOKE_STRATEGIES:
                continue
            results["runs"].append(run_once(name, make, seed))
            checkpoint()
    for window, k in SWEEP[:2] if args.smoke else SWEEP:
        name = "AdaSwitch(L=5, K=2)" if (window, k) == (5, 2.0) else f"AdaSwitch(L={window}, K={k})"
        result = run_once(
            name, lambda window=window, k=k: ak.strategies.AdaSwitch(window, k), args.seeds[0]
        )
        results["sweep"].append({**result, "window": window, "k": k})
        checkpoint()
    table = summarize(results, baseline="OnPolicy")
    print(table)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(table)
    plot(results, args.output)
    print(f"{results['total_seconds']:.0f} s; outputs in {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
