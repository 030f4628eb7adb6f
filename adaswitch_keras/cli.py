"""The `adaswitch-keras` command: `demo`, `distill`, `cache-teacher` and `evaluate`.

    adaswitch-keras demo --backend jax
    adaswitch-keras distill --teacher TEACHER --student STUDENT --task gsm8k --data-dir DIR
    adaswitch-keras cache-teacher --teacher TEACHER --task gsm8k --top-k 32 --output t.npz
    adaswitch-keras distill --teacher-cache t.npz --student STUDENT --strategy supervised_kd
    adaswitch-keras evaluate --model PRESET --task arithmetic

Option names that TRL's GKDConfig also uses mean the same thing here
(`docs/features/samplers.md` has the table): `--temperature` is the sampling temperature
of the generations, `--loss-temperature` the divergence's.

Run it through the console script (`adaswitch_keras_cli.main`), which sets
KERAS_BACKEND from `--backend` before Keras is imported.
"""

import argparse
import ast
import inspect
import json
import os
import sys
import time

import keras
import keras_hub

from adaswitch_keras import data
from adaswitch_keras import evaluation
from adaswitch_keras import lora
from adaswitch_keras import plotting
from adaswitch_keras import presets
from adaswitch_keras import strategies
from adaswitch_keras import teacher_cache
from adaswitch_keras.distiller import Distiller
from adaswitch_keras.divergences import KINDS

BACKENDS = ("jax", "tensorflow", "torch")
FEATURES = """features, each with a page in docs/features/:
  LoRA students          --lora-rank N
  an offline teacher     `cache-teacher`, then `distill --teacher-cache FILE`
  a mixed loss           --cross-entropy-weight 0.3 | linear:0.5 | cosine:0.5
  samplers, TRL's names  --student-sampler, --teacher-sampler, --temperature
  what the teacher cost  teacher_calls, teacher_prefilled, teacher_scored,
                         teacher_decoded in the progress bar and history.json
  GGUF for llama.cpp     adaswitch_keras.convert.save_gguf(model, path)
  large vocabularies     --loss-chunk-size 128 (the loss chunk by chunk)"""


class UsageError(Exception):
    """A bad argument: printed as one line, exit code 2, no traceback."""


def load_model(preset, dtype=None, sequence_length=None):
    """A KerasHub CausalLM from a shipped name, a local directory or a hub
    preset, in `dtype` (its saved one if None), its preprocessor packing
    `sequence_length` tokens (its saved length if None)."""
    if preset in presets.NAMES:
        preset = presets.path(preset)
    elif os.sep in preset or preset.startswith("."):
        if not os.path.isdir(preset):
            raise UsageError(f"No preset directory at {os.path.abspath(preset)}.")
        if not os.path.exists(os.path.join(preset, "config.json")):
            raise UsageError(
                f"{os.path.abspath(preset)} is not a KerasHub preset (no config.json)."
            )
    try:
        model = keras_hub.models.CausalLM.from_preset(preset, dtype=dtype)
    except Exception as error:  # KerasHub raises many types for a bad name
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"Could not load the preset {preset!r} ({cause}). Use a KerasHub preset name, "
            f"a local preset directory or one of {', '.join(presets.NAMES)}."
        ) from None
    if sequence_length:
        model.preprocessor.sequence_length = sequence_length
    return model


def make_strategy(args):
    """The strategy named by `--strategy`, with its `--option`s (and
    TRL's `--lmbda` for GKD)."""
    arguments = {}
    for option in args.option:
        if "=" not in option:
            raise UsageError(f"--option takes KEY=VALUE; received {option!r}.")
        arguments.update(_keyword_values(option, "--option"))
    if args.lmbda is not None:
        arguments["lmbda"] = args.lmbda
    try:
        return strategies.get(args.strategy, **arguments)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None


def _keyword_values(text, what):
    """{key: value} of "k=v,k=v" (values as Python literals, else words)."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if not value:
            raise UsageError(f"{what} takes KEY=VALUE pairs; received {item!r}.")
        try:
            values[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            values[key.strip()] = value.strip()
    return values


SAMPLERS = {
    "greedy": keras_hub.samplers.GreedySampler,
    "random": keras_hub.samplers.RandomSampler,
    "top_k": keras_hub.samplers.TopKSampler,
    "top_p": keras_hub.samplers.TopPSampler,
}


def make_sampler(spec, temperature, flag):
    """A KerasHub sampler from "NAME[:KEY=VALUE,...]" (e.g. "top_p:p=0.5"),
    at the sampling `temperature` unless the spec sets its own."""
    name, _, options = spec.partition(":")
    if name not in SAMPLERS:
        raise UsageError(f"{flag}: unknown sampler {name!r}; choose one of {list(SAMPLERS)}.")
    arguments = _keyword_values(options, flag)
    if name != "greedy":
        arguments.setdefault("temperature", temperature)
    try:
        return SAMPLERS[name](**arguments)
    except (ValueError, TypeError) as error:
        raise UsageError(f"{flag} {spec!r}: {error}") from None


SCHEDULES = {
    "linear": lambda start, steps: keras.optimizers.schedules.PolynomialDecay(start, steps, 0.0),
    "cosine": lambda start, steps: keras.optimizers.schedules.CosineDecay(start, steps),
}


def make_cross_entropy_weight(spec, steps):
    """`--cross-entropy-weight`: "0.3" (constant), or "linear:0.5" /
    "cosine:0.5" (from 0.5 at the first step to 0 at the last)."""
    kind, _, start = spec.rpartition(":")
    try:
        start = float(start)
    except ValueError:
        start = None
    if start is None or not 0.0 <= start <= 1.0 or (kind and kind not in SCHEDULES):
        raise UsageError(
            "--cross-entropy-weight takes a weight in [0, 1], optionally after "
            f"{' or '.join(k + ':' for k in SCHEDULES)}; received {spec!r}."
        )
    return SCHEDULES[kind](start, steps) if kind else start


def strategy_help():
    """Each registered strategy and the options it takes, for `--help`."""
    lines = []
    for name in strategies.registered():
        options = ", ".join(
            key if value is inspect.Parameter.empty else f"{key}={value!r}"
            for key, value in strategies.options(name).items()
        )
        lines.append(f"{name}({options})")
    return "; ".join(lines)


def load_rows(task, split, args, limit=None, **options):
    if task in data.files.FILES and args.data_dir is None:
        raise UsageError(
            f"--task {task} reads local JSONL files: pass --data-dir DIR, a folder holding "
            f"{', '.join(data.files.FILES[task].values())} (the README's 'Tasks and evaluation' says where to get them)."
        )
    try:
        return data.load(
            task, split, data_dir=args.data_dir, limit=limit, chat=args.chat, **options
        )
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None


def distill(args, teacher, student, train, test, task):
    """Evaluate, distill, evaluate again; write preset, history and plot."""
    os.makedirs(args.output, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    if args.lora_rank:
        lora.enable(student, args.lora_rank)
    log_every = min(args.log_every, args.steps)
    epochs = -(-args.steps // log_every)  # whole logging periods: rounds steps up
    distiller = Distiller(
        teacher,
        student,
        strategy=args.strategy,
        divergence=args.divergence,
        beta=args.beta,
        temperature=args.loss_temperature,
        max_new_tokens=args.max_new_tokens,
        student_sampler=args.student_sampler,
        teacher_sampler=args.teacher_sampler,
        cross_entropy_weight=args.cross_entropy_weight,
        loss_chunk_size=args.loss_chunk_size,
        seed=args.seed,
    )
    distiller.compile(optimizer=keras.optimizers.AdamW(args.learning_rate))
    if train is not None:
        distiller.packer.check_prompts([row["prompts"] for row in train])  # before anything long

    def score(model, name):
        print(f"Evaluating the {name} on {len(test)} {task} test examples")
        start = time.perf_counter()
        result = evaluation.evaluate(model, task, examples=test, batch_size=args.eval_batch_size)
        return {k: v for k, v in result.items() if k != "predictions"}, time.perf_counter() - start

    teacher_metrics = score(teacher, "teacher")[0] if teacher is not None else None
    before, _ = score(student, "student")
    if train is None:  # an offline teacher: the cache holds the packed rows
        train = teacher_cache.dataset(
            args.teacher_cache, args.batch_size, shuffle=True, seed=args.seed
        ).repeat()
    callbacks = []
    if args.checkpoint_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(args.checkpoint_dir, save_freq="epoch"))
    print(f"Distilling with {distiller.strategy!r}, {args.divergence}, {epochs * log_every} steps")
    start = time.perf_counter()
    try:
        history = distiller.fit(
            train,
            batch_size=args.batch_size,
            epochs=epochs,
            steps_per_epoch=log_every,
            callbacks=callbacks,
            verbose=args.verbose,
        ).history
        interrupted = False
    except KeyboardInterrupt:
        history, interrupted = distiller.history.history if distiller.history else {}, True
        print("\nInterrupted: saving the student as it is now.")
    seconds = time.perf_counter() - start
    after, _ = score(student, "student")

    student_dir = os.path.join(args.output, "student")
    student.save_to_preset(student_dir)  # a LoRA student's kernels merged
    if args.lora_rank:  # and its factors alone, as Keras saves them
        student.backbone.save_lora_weights(os.path.join(args.output, "student.lora.h5"))
    metric = "accuracy" if task in data.GSM_FAMILY else "rougeL"
    report = {
        "task": task,
        "strategy": repr(distiller.strategy),
        "divergence": args.divergence,
        "steps": len(history.get("loss", [])) * log_every,
        "backend": keras.backend.backend(),
        "seconds_distilling": seconds,
        "interrupted": interrupted,
        "teacher": teacher_metrics,
        "student_before": before,
        "student_after": after,
        "history": history,
        "steps_per_point": log_every,
    }
    with open(os.path.join(args.output, "history.json"), "w") as f:
        json.dump(report, f, indent=1)
    if history.get("loss"):
        plotting.plot_history(
            history,
            os.path.join(args.output, "distillation.png"),
            steps_per_epoch=log_every,
            title=f"{distiller.strategy!r} on {task} ({keras.backend.backend()})",
        )
    teacher_score = f"{teacher_metrics[metric]:.3f}" if teacher_metrics else "-"
    rows = [
        ("student " + metric, f"{before[metric]:.3f}", f"{after[metric]:.3f}"),
        ("teacher " + metric, teacher_score, teacher_score),
        (
            "switch rate",
            "",
            f"{history['switch_rate'][-1]:.3f}" if history.get("switch_rate") else "-",
        ),
        ("distillation time", "", f"{seconds:.0f} s"),
    ]
    print(f"\n| {'':<22} | {'before':>8} | {'after':>8} |\n|{'-' * 24}|{'-' * 10}|{'-' * 10}|")
    for name, a, b in rows:
        print(f"| {name:<22} | {a:>8} | {b:>8} |")
    print(
        f"\nStudent preset, history.json and distillation.png are in {os.path.abspath(args.output)}"
    )
    return report


def run_demo(args):
    teacher = load_model("arithmetic-teacher")
    student = load_model("arithmetic-student")
    train = load_rows("arithmetic", "train", args, **presets.TASK)
    test = load_rows("arithmetic", "test", args, limit=args.eval_limit, **presets.TASK)
    args.max_new_tokens = args.max_new_tokens or presets.MAX_NEW_TOKENS
    return distill(args, teacher, student, train, test, "arithmetic")


def run_distill(args):
    if (args.teacher is None) == (args.teacher_cache is None):
        raise UsageError("Give one of --teacher (a model) and --teacher-cache (its stored top-k).")
    if args.teacher_cache and not os.path.exists(args.teacher_cache):
        raise UsageError(f"No teacher cache at {os.path.abspath(args.teacher_cache)}.")
    if args.teacher_cache:  # the rollout budget that the cache was packed for
        stored = teacher_cache.meta(args.teacher_cache)["max_new_tokens"]
        if args.max_new_tokens not in (None, stored):
            raise UsageError(
                f"The teacher cache was packed for --max-new-tokens {stored}; "
                f"received --max-new-tokens {args.max_new_tokens}."
            )
        args.max_new_tokens = stored
    teacher = args.teacher and load_model(args.teacher, args.teacher_dtype, args.sequence_length)
    student = load_model(args.student, args.student_dtype, args.sequence_length)
    train = load_rows(args.task, "train", args) if teacher is not None else None
    test = load_rows(args.task, "test", args, limit=args.eval_limit)
    return distill(args, teacher, student, train, test, args.task)


def run_cache_teacher(args):
    """Run the teacher once over the task's training responses; store its top-k."""
    teacher = load_model(args.teacher)
    rows = load_rows(args.task, args.split, args, limit=args.limit)
    print(f"Caching the teacher's top-{args.top_k} on {len(rows)} {args.task} rows")
    start = time.perf_counter()
    size = teacher_cache.write(
        teacher,
        rows,
        args.output,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
    )
    seconds = time.perf_counter() - start
    print(f"Wrote {args.output}: {size / 2**20:.1f} MiB in {seconds:.0f} s")
    return {"bytes": size, "seconds": seconds}


def run_evaluate(args):
    model = load_model(args.model)
    examples = load_rows(args.task, args.split, args, limit=args.limit)
    result = evaluation.evaluate(
        model, args.task, examples=examples, batch_size=args.batch_size, output=args.output
    )
    metrics = {k: v for k, v in result.items() if k != "predictions"}
    print(json.dumps(metrics, indent=1))
    return metrics


def _training_arguments(parser, steps, batch_size, learning_rate, output):
    parser.add_argument(
        "--strategy",
        default="adaswitch",
        choices=list(strategies.registered()),
        help="a registered strategy: " + strategy_help().replace("%", "%%"),
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an argument of the strategy, e.g. --option window=5 --option k=2.0",
    )
    parser.add_argument("--divergence", default="forward_kl", choices=KINDS)
    parser.add_argument("--steps", type=int, default=steps, help="training steps")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="rollout length (TRL's max_new_tokens)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature of the generations, both samplers (TRL's temperature)",
    )
    parser.add_argument(
        "--loss-temperature", type=float, default=1.0, help="temperature of the divergence"
    )
    for role in ("student", "teacher"):
        parser.add_argument(
            f"--{role}-sampler",
            default="random",
            metavar="NAME[:KEY=VALUE,...]",
            help=f"the {role}'s sampler: {', '.join(SAMPLERS)}; e.g. top_p:p=0.5,temperature=0.5",
        )
    parser.add_argument(
        "--cross-entropy-weight",
        default="0",
        metavar="[linear:|cosine:]W",
        help="w in (1 - w) divergence + w cross-entropy; linear:/cosine: decay it to 0",
    )
    parser.add_argument(
        "--lora-rank", type=int, default=None, help="train LoRA factors of this rank only"
    )
    parser.add_argument(
        "--loss-chunk-size",
        type=int,
        default=None,
        help="compute the loss this many positions at a time (less memory at large vocabularies)",
    )
    parser.add_argument(
        "--beta", type=float, default=0.5, help="JSD beta for --divergence jsd (TRL's beta)"
    )
    parser.add_argument(
        "--lmbda",
        type=float,
        default=None,
        help="GKD: the fraction of student-sampled sequences (TRL's lmbda); --option lmbda=...",
    )
    parser.add_argument(
        "--eval-limit", type=int, default=None, help="test examples to score (default all)"
    )
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument(
        "--log-every", type=int, default=25, help="steps per logged point (a Keras epoch)"
    )
    parser.add_argument("--checkpoint-dir", default=None, help="resume from / back up to here")
    parser.add_argument("--output", default=output)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="adaswitch-keras", description="AdaSwitch knowledge distillation in Keras 3."
    )
    backend_help = "Keras backend (default: KERAS_BACKEND or Keras' own)"
    parser.add_argument("--backend", choices=BACKENDS, help=backend_help)
    # `--backend` also after the command (`adaswitch-keras demo --backend jax`).
    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument(
        "--backend", choices=BACKENDS, default=argparse.SUPPRESS, help=backend_help
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="distill the shipped arithmetic teacher into the shipped student",
        parents=[backend],
        epilog=FEATURES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _training_arguments(demo, steps=600, batch_size=32, learning_rate=1e-3, output="adaswitch-demo")

    run = commands.add_parser(
        "distill",
        help="distill any KerasHub teacher preset into a student preset",
        parents=[backend],
        epilog=FEATURES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--teacher", help="KerasHub preset name or local preset directory")
    run.add_argument(
        "--teacher-cache",
        default=None,
        help="an offline teacher: the file `cache-teacher` wrote (ground-truth strategies)",
    )
    run.add_argument(
        "--student", required=True, help="KerasHub preset name or local preset directory"
    )
    run.add_argument("--task", default="arithmetic", choices=data.TASKS)
    run.add_argument("--data-dir", default=None, help="folder of the task's JSONL files")
    run.add_argument("--chat", action="store_true", help="ChatML prompts for instruct models")
    run.add_argument(
        "--teacher-dtype", help="e.g. bfloat16: the teacher's weights and compute (default: saved)"
    )
    run.add_argument("--student-dtype", help="the student's (default: its saved dtype)")
    run.add_argument(
        "--sequence-length",
        type=int,
        help="tokens both preprocessors pack (prompt + response); default: each preset's",
    )
    _training_arguments(run, steps=1000, batch_size=8, learning_rate=1e-5, output="adaswitch-run")

    cache = commands.add_parser(
        "cache-teacher",
        help="store a teacher's top-k log-probabilities on a task's responses",
        parents=[backend],
    )
    cache.add_argument("--teacher", required=True, help="KerasHub preset name or directory")
    cache.add_argument("--task", default="arithmetic", choices=data.TASKS)
    cache.add_argument("--split", default="train")
    cache.add_argument("--data-dir", default=None)
    cache.add_argument("--chat", action="store_true")
    cache.add_argument("--limit", type=int, default=None)
    cache.add_argument("--top-k", type=int, default=32)
    cache.add_argument("--max-new-tokens", type=int, required=True, help="as for `distill`")
    cache.add_argument("--batch-size", type=int, default=8)
    cache.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    cache.add_argument("--output", required=True, help="the .npz file to write")

    score = commands.add_parser(
        "evaluate", help="score a preset on a task split", parents=[backend]
    )
    score.add_argument(
        "--model", required=True, help="KerasHub preset name or local preset directory"
    )
    score.add_argument("--task", default="arithmetic", choices=data.TASKS)
    score.add_argument("--split", default="test")
    score.add_argument("--data-dir", default=None)
    score.add_argument("--chat", action="store_true")
    score.add_argument("--limit", type=int, default=None)
    score.add_argument("--batch-size", type=int, default=32)
    score.add_argument("--output", default=None, help="write predictions here as JSONL")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.backend and args.backend != keras.backend.backend():
        print(
            f"error: Keras was imported with the {keras.backend.backend()} backend before "
            f"--backend {args.backend} could apply; run the `adaswitch-keras` command.",
            file=sys.stderr,
        )
        return 2
    for name in (
        "steps",
        "batch_size",
        "log_every",
        "eval_limit",
        "limit",
        "lora_rank",
        "loss_chunk_size",
        "top_k",
    ):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1.", file=sys.stderr)
            return 2
    if args.command == "demo":
        args.data_dir, args.chat = None, False
    try:
        if args.command in ("demo", "distill"):  # bad options fail before anything loads
            args.strategy = make_strategy(args)
            for role in ("student", "teacher"):
                flag = f"--{role}-sampler"
                sampler = make_sampler(getattr(args, f"{role}_sampler"), args.temperature, flag)
                setattr(args, f"{role}_sampler", sampler)
            steps = -(-args.steps // min(args.log_every, args.steps)) * min(
                args.log_every, args.steps
            )
            args.cross_entropy_weight = make_cross_entropy_weight(args.cross_entropy_weight, steps)
        {
            "demo": run_demo,
            "distill": run_distill,
            "cache-teacher": run_cache_teacher,
            "evaluate": run_evaluate,
        }[args.command](args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # our own checks: tokenizers, prompt lengths, ...
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
