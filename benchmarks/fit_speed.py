"""Why was `fit()` slower than a hand-written jitted step? Time both, same model.

    KERAS_BACKEND=jax python benchmarks/fit_speed.py [--steps 60] [--output docs/results/fit_speed.md]

SFT of the arithmetic teacher configuration (Qwen2, 4 layers, hidden 128,
1.0M parameters, batch 32, 159 tokens), in one process so that the ratios
share the machine's state. Variants:

- `keras_hub_strings`: `CausalLM.fit` on raw strings, KerasHub's default
  path: its tf.data pipeline tokenizes and packs every batch, every epoch
  (timed over a tenth of the steps: it is that slow).
- `keras_hub_preprocessing_alone`: that pipeline's batches without training.
- `packed_tf_data`: `fit` on a tf.data pipeline that is tokenized once and
  cached (what `Distiller.fit` and scripts/train_model.py do).
- `packed_tf_data_spe8`: the same with `compile(steps_per_execution=8)`.
- `hand_written_jit` (JAX only): `jax.jit` of stateless_call + optimizer
  stateless_apply on NumPy batches, the floor that `fit()` pays overhead on.
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import adaswitch_keras as ak

SIZE = dict(num_layers=4, hidden_dim=128, num_heads=4, intermediate_dim=512, sequence_length=160)
BATCH = 32


def build(steps_per_execution=1):
    keras.utils.set_random_seed(0)
    model = ak.tiny.causal_lm(**SIZE)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), steps_per_execution=steps_per_execution)
    return model


def packed(model, rows):
    packer = ak.preprocessing.PromptResponsePacker(model.preprocessor, max_new_tokens=48)
    strings = {k: [r[k] for r in rows] for k in ("prompts", "responses")}
    batch = next(iter(tf.data.Dataset.from_tensor_slices(strings).batch(len(rows)).map(packer)))
    x = {"token_ids": batch["token_ids"][:, :-1], "padding_mask": batch["padding_mask"][:, :-1]}
    return x, batch["token_ids"][:, 1:], tf.cast(batch["response_mask"][:, 1:], "float32")


class Synchronous(keras.callbacks.Callback):
    """A per-step callback, so that Keras runs callbacks in step with
    training. Without one, `fit(verbose=0)` hands the step logs to a thread
    pool, and with JAX on this 2-core CPU that hung twice (no progress for
    over 5 minutes; see docs/results/fit_speed.md)."""

    def on_train_batch_end(self, batch, logs=None):
        pass


def seconds_per_step(fit_once, steps, warm_up=3):
    fit_once(warm_up)  # compile and warm up
    start = time.perf_counter()
    fit_once(steps)
    return (time.perf_counter() - start) / steps


def detached(model):
    model.preprocessor = None
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    steps = -(-args.steps // 8) * 8  # a multiple of steps_per_execution=8
    rows = ak.data.load("arithmetic", "train", limit=BATCH * (steps + 8))
    results = {}

    model = build()
    texts = tf.data.Dataset.from_tensor_slices([r["prompts"] + r["responses"] for r in rows])
    texts = texts.repeat().batch(BATCH).prefetch(tf.data.AUTOTUNE)
    string_steps = max(3, args.steps // 10)
    results["keras_hub_strings"] = seconds_per_step(
        lambda n: model.fit(
            texts, epochs=1, steps_per_epoch=n, verbose=0, callbacks=[Synchronous()]
        ),
        string_steps,
    )
    preprocessed = texts.map(model.preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    results["keras_hub_preprocessing_alone"] = seconds_per_step(
        lambda n: [None for _ in preprocessed.take(n)], string_steps
    )
    print(results, flush=True)

    for name, spe in (("packed_tf_data", 1), ("packed_tf_data_spe8", 8)):
        model = build(spe)
        data = packed(model, rows)
        dataset = (
            tf.data.Dataset.from_tensor_slices(data)
            .cache()
            .repeat()
            .batch(BATCH)
            .prefetch(tf.data.AUTOTUNE)
        )
        detached(model)
        # Whole executions of `spe` steps (steps_per_epoch=0 would mean "until
        # the data ends": never, on a repeated dataset).
        results[name] = seconds_per_step(
            lambda n, model=model, dataset=dataset: model.fit(
                dataset, epochs=1, steps_per_epoch=n, verbose=0, callbacks=[Synchronous()]
            ),
            steps,
            warm_up=8,
        )
        print(name, results[name], flush=True)

    if keras.backend.backend() == "jax":
        results["hand_written_jit"] = seconds_per_step(hand_written(data), steps, warm_up=8)

    floor = min(v for k, v in results.items() if "alone" not in k)
    lines = ["| variant | s/step | x fastest |", "|---|---|---|"] + [
        f"| {name} | {s:.3f} | {s / floor:.2f} |" for name, s in results.items()
    ]
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w") as f:
            f.write(
                f"# fit() speed, {keras.backend.backend()} backend, {steps} steps\n\n"
                + __doc__.split("\n\n", 2)[2]
                + "\n"
                + "\n".join(lines)
                + "\n"
            )


def hand_written(data):
    import jax

    model = build()
    x, y, weight = keras.tree.map_structure(np.asarray, data)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)

    def loss(trainable, non_trainable, x, y, weight):
        logits, _ = model.stateless_call(trainable, non_trainable, x)
        return loss_fn(y, logits, weight)

    @jax.jit
    def step(state, x, y, weight):
        trainable, non_trainable, optimizer_variables = state
        value, grads = jax.value_and_grad(loss)(trainable, non_trainable, x, y, weight)
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, grads, trainable
        )
        return (trainable, non_trainable, optimizer_variables), value

    state = [
        [v.value for v in vs]
        for vs in (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
    ]

    def run(n):
        nonlocal state
        for i in range(n):
            batch = slice(i * BATCH, (i + 1) * BATCH)
            state, value = step(state, {k: v[batch] for k, v in x.items()}, y[batch], weight[batch])
        value.block_until_ready()

    return run


if __name__ == "__main__":
    main()
