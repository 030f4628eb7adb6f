"""Train a tiny Qwen2 on the synthetic arithmetic task with supervised fine-tuning.

    KERAS_BACKEND=jax python scripts/train_model.py --size teacher --steps 6000 \
        --output adaswitch_keras/presets/arithmetic-teacher

To continue a trained model's SFT to its plateau instead, start from its
preset and choose on the validation split, scoring the fresh test split:

    KERAS_BACKEND=jax python scripts/train_model.py \
        --init-from adaswitch_keras/presets/arithmetic-hard-student --task arithmetic-hard \
        --steps 30000 --learning-rate 3e-4 --warmup-steps 300 --eval-split validation \
        --eval-limit 1000 --test-split fresh_test --patience 4 --output <dir>

Reproducible from `--seed` (same data, same initialisation). Every
`--eval-every` steps it prints greedy exact-match accuracy on the first
`--eval-limit` problems of `--eval-split` (with `--patience`, it stops at
the plateau: that many evaluations in a row without a new best, and keeps
the best evaluation's weights); at the end it scores the whole
`--test-split`, saves a KerasHub preset and writes `training.json` beside
it. A killed run resumes from its last evaluation when the same command is
run again (its backup is in `.train_model_backup/<output name>`);
`training.json` lists the steps it resumed at, and its `seconds` count the
kept epochs and each process's start, not the lost part of a killed epoch.

Speed: KerasHub's `CausalLM.fit` tokenizes every batch inside its tf.data
pipeline on each epoch. Here the whole training set is tokenized once and
`fit` runs on the packed arrays (see benchmarks/fit_speed.py for the numbers).
"""

import argparse
import json
import os
import shutil
import sys
import time

import keras
import keras_hub
import tensorflow as tf

import adaswitch_keras as ak

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
)
from provenance import git_commit  # noqa: E402

SIZES = {  # num_layers, hidden_dim, num_heads, intermediate_dim
    "teacher": dict(num_layers=4, hidden_dim=128, num_heads=4, intermediate_dim=512),
    "student": dict(num_layers=2, hidden_dim=64, num_heads=2, intermediate_dim=256),
    # The hard task's student, and a smaller size tried for it: how each size
    # fared on arithmetic-hard is in docs/presets.md.
    "hard_student": dict(num_layers=2, hidden_dim=48, num_heads=2, intermediate_dim=192),
    "hard_student_h40": dict(num_layers=2, hidden_dim=40, num_heads=2, intermediate_dim=160),
    "small_student": dict(num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=128),
}
TASKS = {  # the task's `ak.data.load` options and the room for its solutions
    "arithmetic": (ak.presets.TASK, ak.presets.MAX_NEW_TOKENS),
    "arithmetic-hard": (ak.presets.HARD_TASK, ak.presets.HARD_MAX_NEW_TOKENS),
}


def packed_dataset(model, rows, batch_size, seed, max_new_tokens):
    """Tokenize once into next-token (x, y, sample_weight) with loss on the
    response only, then shuffle and batch the packed tensors forever."""
    packer = ak.preprocessing.PromptResponsePacker(
        model.preprocessor, max_new_tokens=max_new_tokens
    )

    def next_token_data(packed):
        x = {
            "token_ids": packed["token_ids"][:, :-1],
            "padding_mask": packed["padding_mask"][:, :-1],
        }
        return x, packed["token_ids"][:, 1:], tf.cast(packed["response_mask"][:, 1:], "float32")

    strings = {key: [r[key] for r in rows] for key in ("prompts", "responses")}
    dataset = (
        tf.data.Dataset.from_tensor_slices(strings).batch(1024).map(packer).map(next_token_data)
    )
    dataset = dataset.unbatch().cache().shuffle(len(rows), seed=seed)
    return dataset.repeat().batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class Evaluation(keras.callbacks.Callback):
    """Greedy accuracy on the evaluation rows after every epoch (`--eval-every`
    steps), kept in `log_path` so that a resumed run continues the log; stops
    training at the plateau: `patience` evaluations in a row without a new
    best, whose weights it keeps in `best_path`. Each entry names the
    `commit` that trained it: a run stopped by hand, or resumed at other
    code, keeps its provenance."""

    def __init__(self, rows, preprocessor, log_path, best_path, patience, log, commit):
        super().__init__()
        self.rows, self.preprocessor, self.best_path = rows, preprocessor, best_path
        self.log_path, self.patience, self.log, self.commit = log_path, patience, log, commit
        # Training time of the evaluations kept (a killed epoch's part is not counted).
        self.seconds_before = log[-1]["seconds"] if log else 0.0
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.model.preprocessor = self.preprocessor  # generation needs it
        try:
            accuracy = ak.evaluate(
                self.model, "arithmetic", examples=self.rows, batch_size=128, verbose=0
            )["accuracy"]
        finally:
            self.model.preprocessor = None
        step = (epoch + 1) * self.params["steps"]
        self.log.append(
            {
                "step": step,
                "loss": float(logs["loss"]),
                "accuracy": accuracy,
                "seconds": self.seconds_before + time.perf_counter() - self.start,
                "commit": self.commit,
            }
        )
        with open(self.log_path, "w") as f:
            json.dump(self.log, f)
        print(json.dumps(self.log[-1]), flush=True)
        best = max(range(len(self.log)), key=lambda i: self.log[i]["accuracy"])  # the first best
        if best == len(self.log) - 1:
            self.model.save_weights(self.best_path)
        if self.patience and len(self.log) - 1 - best >= self.patience:
            print(f"no gain in {self.patience} evaluations since step {self.log[best]['step']}")
            self.model.stop_training = True


def resume_state(backup, args):
    """The step a killed run with these `args` resumes at (0 for a new
    run) and its log up to that step; a backup of other arguments is an
    error."""
    os.makedirs(backup, exist_ok=True)
    saved_args = os.path.join(backup, "args.json")
    if os.path.exists(saved_args):
        with open(saved_args) as f:
            saved = json.load(f)
        if saved != args:
            sys.exit(
                f"{backup} holds a run with other arguments: {saved}. Rerun with "
                "those to resume it, or delete the folder to start over."
            )
    with open(saved_args, "w") as f:
        json.dump(args, f)
    metadata = os.path.join(backup, "training_metadata.json")  # BackupAndRestore's
    if not os.path.exists(metadata):
        return 0, []
    with open(metadata) as f:
        step = json.load(f)["epoch"] * args["eval_every"]
    with open(os.path.join(backup, "log.json")) as f:
        log = [entry for entry in json.load(f) if entry["step"] <= step]
    if log:
        log[-1]["resumed"] = True
    print(f"resuming at step {step}", flush=True)
    return step, log


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="teacher")
    parser.add_argument(
        "--init-from", help="a preset to continue training (its size replaces --size)"
    )
    parser.add_argument("--task", choices=TASKS, default="arithmetic")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="the peak")
    parser.add_argument("--warmup-steps", type=int, help="linear warm-up; 5%% of --steps if unset")
    parser.add_argument("--sequence-length", type=int, default=160)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-limit", type=int, default=128)
    parser.add_argument(
        "--eval-split",
        choices=("test", "validation"),
        default="test",
        help="the split of the curve and of --patience",
    )
    parser.add_argument(
        "--test-split",
        choices=("test", "fresh_test"),
        default="test",
        help="the split scored at the end",
    )
    parser.add_argument(
        "--patience",
        type=int,
        help="stop once this many evaluations in a row have not raised the best accuracy "
        "(training to the SFT plateau)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    if args.steps % args.eval_every:
        parser.error("--steps must be a multiple of --eval-every")
    if args.patience is not None and args.patience < 1:
        parser.error("--patience must be at least 1 (leave it out to train all --steps)")

    commit = git_commit()  # the code that trains, before anything else can change it
    keras.utils.set_random_seed(args.seed)
    if args.init_from:
        model = keras_hub.models.CausalLM.from_preset(args.init_from)
    else:
        model = ak.tiny.causal_lm(**SIZES[args.size], sequence_length=args.sequence_length)
    warmup = args.steps // 20 if args.warmup_steps is None else args.warmup_steps
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, args.steps, alpha=0.1, warmup_target=args.learning_rate, warmup_steps=warmup
    )
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01), sampler="greedy")
    task, max_new_tokens = TASKS[args.task]
    train = ak.data.load("arithmetic", "train", seed=args.seed, **task)
    test = ak.data.load("arithmetic", args.test_split, seed=args.seed, **task)
    rows = ak.data.load(
        "arithmetic", args.eval_split, seed=args.seed, limit=args.eval_limit, **task
    )
    dataset = packed_dataset(model, train, args.batch_size, args.seed, max_new_tokens)
    print(
        f"{args.init_from or args.size}: {model.count_params():,} parameters; {len(train)} train, "
        f"{len(rows)} {args.eval_split}, {len(test)} {args.test_split} problems"
    )

    # Killed, the same command resumes where the last backup was made, as if
    # never stopped: weights, optimizer and step (BackupAndRestore), the data
    # stream after the batches already seen, and the log up to that step.
    backup = os.path.join(".train_model_backup", os.path.basename(args.output))
    resumed_step, log = resume_state(backup, vars(args))
    dataset = dataset.skip(resumed_step)
    preprocessor = model.preprocessor
    log_path, best_path = (os.path.join(backup, name) for name in ("log.json", "best.weights.h5"))
    evaluation = Evaluation(rows, preprocessor, log_path, best_path, args.patience, log, commit)
    model.preprocessor = None  # fit reads the packed data; generation gets it back
    try:
        model.fit(
            dataset,
            epochs=args.steps // args.eval_every,
            steps_per_epoch=args.eval_every,
            shuffle=False,
            verbose=0,
            # Evaluation first: its log is written before the backup that follows it.
            callbacks=[
                evaluation,
                keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False),
            ],
        )
    finally:
        model.preprocessor = preprocessor
    log = evaluation.log
    done = log[-1]["step"]
    best = max(log, key=lambda entry: entry["accuracy"])
    if args.patience:
        model.load_weights(best_path)

    final = ak.evaluate(model, "arithmetic", examples=test, verbose=0)
    os.makedirs(args.output, exist_ok=True)
    model.save_to_preset(args.output)
    report = {
        "commit": commit,
        "size": None if args.init_from else args.size,
        "init_from": args.init_from and os.path.basename(args.init_from.rstrip("/")),
        "parameters": model.count_params(),
        "task": task,
        "max_new_tokens": max_new_tokens,
        "args": vars(args),
        "backend": keras.backend.backend(),
        "steps_done": done,
        "kept_step": best["step"] if args.patience else done,
        "resumed_at_steps": [entry["step"] for entry in log if entry.get("resumed")],
        "seconds": log[-1]["seconds"],
        "test_accuracy": final["accuracy"],
        "test_split": args.test_split,
        "test_problems": len(test),
        "log": log,
    }
    with open(os.path.join(args.output, "training.json"), "w") as f:
        json.dump(report, f, indent=1)
    shutil.rmtree(backup)  # only now: a kill before this point resumes
    print(f"test accuracy {final['accuracy']:.3f} after {done} steps, {log[-1]['seconds']:.0f} s")


if __name__ == "__main__":
    main()
