"""Train a tiny Qwen2 on the synthetic arithmetic task with supervised fine-tuning.

    KERAS_BACKEND=jax python scripts/train_model.py --size teacher --steps 6000 \
        --output adaswitch_keras/presets/arithmetic-teacher

Reproducible from `--seed` (same data, same initialisation). Every
`--eval-every` steps it prints greedy exact-match accuracy on the first
`--eval-limit` test problems (with `--patience`, it stops at the plateau:
that many evaluations in a row without a new best); at the end it scores the
whole test split, saves a KerasHub preset and writes `training.json` beside
it.

Speed: KerasHub's `CausalLM.fit` tokenizes every batch inside its tf.data
pipeline on each epoch. Here the whole training set is tokenized once and
`fit` runs on the packed arrays (see benchmarks/fit_speed.py for the numbers).
"""

import argparse
import json
import os
import sys
import time

import keras
import tensorflow as tf

import adaswitch_keras as ak

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
)
from provenance import git_commit  # noqa: E402

SIZES = {  # num_layers, hidden_dim, num_heads, intermediate_dim
    "teacher": dict(num_layers=4, hidden_dim=128, num_heads=4, intermediate_dim=512),
    "student": dict(num_layers=2, hidden_dim=64, num_heads=2, intermediate_dim=256),
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


def fit_packed(model, dataset, **kwargs):
    """`CausalLM.fit` on packed data: the preprocessor is detached meanwhile."""
    preprocessor, model.preprocessor = model.preprocessor, None
    try:
        return model.fit(dataset, shuffle=False, **kwargs)
    finally:
        model.preprocessor = preprocessor


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="teacher")
    parser.add_argument("--task", choices=TASKS, default="arithmetic")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--sequence-length", type=int, default=160)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-limit", type=int, default=128)
    parser.add_argument(
        "--patience",
        type=int,
        help="stop once this many evaluations in a row have not raised the best accuracy "
        "(training to the SFT plateau)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    commit = git_commit()  # the code that trains, before anything else can change it
    keras.utils.set_random_seed(args.seed)
    model = ak.tiny.causal_lm(**SIZES[args.size], sequence_length=args.sequence_length)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, args.steps, alpha=0.1, warmup_target=args.learning_rate, warmup_steps=args.steps // 20
    )
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01), sampler="greedy")
    task, max_new_tokens = TASKS[args.task]
    train = ak.data.load("arithmetic", "train", seed=args.seed, **task)
    test = ak.data.load("arithmetic", "test", seed=args.seed, **task)
    dataset = packed_dataset(model, train, args.batch_size, args.seed, max_new_tokens)
    print(
        f"{args.size}: {model.count_params():,} parameters; {len(train)} train / {len(test)} test problems"
    )

    start, done, log = time.perf_counter(), 0, []
    while done < args.steps:
        chunk = min(args.eval_every, args.steps - done)
        history = fit_packed(model, dataset, epochs=1, steps_per_epoch=chunk, verbose=0)
        done += chunk
        accuracy = ak.evaluate(
            model, "arithmetic", examples=test, limit=args.eval_limit, verbose=0
        )["accuracy"]
        log.append(
            {
                "step": done,
                "loss": history.history["loss"][-1],
                "accuracy": accuracy,
                "seconds": time.perf_counter() - start,
            }
        )
        print(json.dumps(log[-1]), flush=True)
        best = max(range(len(log)), key=lambda i: log[i]["accuracy"])  # the first best
        if args.patience and len(log) - 1 - best >= args.patience:
            print(f"no gain in {args.patience} evaluations since step {log[best]['step']}: stopped")
            break

    final = ak.evaluate(model, "arithmetic", examples=test, verbose=0)
    os.makedirs(args.output, exist_ok=True)
    model.save_to_preset(args.output)
    report = {
        "commit": commit,
        "size": args.size,
        "parameters": model.count_params(),
        "task": task,
        "max_new_tokens": max_new_tokens,
        "args": vars(args),
        "backend": keras.backend.backend(),
        "steps_done": done,
        "seconds": time.perf_counter() - start,
        "test_accuracy": final["accuracy"],
        "log": log,
    }
    with open(os.path.join(args.output, "training.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(
        f"test accuracy {final['accuracy']:.3f} after {done} steps, {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
