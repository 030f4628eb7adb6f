# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # One code, three backends: JAX, TensorFlow and PyTorch
#
# **What you will do:** run the identical distillation script under each Keras
# backend (one subprocess each, since the backend is fixed when Keras is
# imported), compare step time, rollout tokens per second and final loss, and
# check that one supervised-KD step gives the same numbers everywhere.
#
# The backend is chosen by the `KERAS_BACKEND` environment variable (or
# `adaswitch-keras --backend ...`). What differs is only how the step runs:
# JAX compiles the whole step (rollout included) with `jax.jit`, TensorFlow
# traces it with `tf.function` (no XLA by default on CPU), PyTorch runs it
# eagerly. The few lines where the backends differ are in
# `adaswitch_keras/_backend.py`.

# %%
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SMOKE = os.environ.get("SMOKE") == "1"
STEPS = 3 if SMOKE else 20
BACKENDS = ("jax", "tensorflow", "torch")

# %% [markdown]
# ## 1. The script every backend runs
#
# It loads the shipped presets, distils with AdaSwitch for a few steps, times
# the warm steps and one compiled rollout (`Distiller.predict`), and prints a
# JSON line. Then, from the warm-up student's saved weights, it takes one SGD
# step of supervised KD on a fixed batch: the parity check.

# %%
SCRIPT = r"""
import json, sys, time
import keras, keras_hub, numpy as np
import adaswitch_keras as ak

steps, folder = int(sys.argv[1]), sys.argv[2]
teacher = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-teacher"))
train = ak.data.load("arithmetic", "train", limit=32 * steps, **ak.presets.TASK)

def student():
    return keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-student"))

clock = ak.callbacks.StepTimer()

keras.utils.set_random_seed(0)
distiller = ak.Distiller(teacher, student(), strategy=ak.AdaSwitch(), max_new_tokens=48, seed=0)
distiller.compile(optimizer=keras.optimizers.AdamW(1e-3))
history = distiller.fit(train, batch_size=32, epochs=1, callbacks=[clock], verbose=0).history
distiller.predict(train[:32], batch_size=32, verbose=0)  # compile the rollout
start = time.perf_counter()
rollout = distiller.predict(train[:32], batch_size=32, verbose=0)
rollout_seconds = time.perf_counter() - start

parity = ak.Distiller(teacher, student(), strategy="supervised_kd", max_new_tokens=48)
parity.compile(optimizer=keras.optimizers.SGD(1.0))
batch = dict(np.load(folder + "/batch.npz"))
loss = parity.train_on_batch(batch, return_dict=True)["loss"]
after = parity.compute_loss(batch, y_pred=parity(batch))
print(json.dumps({
    "step_seconds": clock.median(),
    "first_step_seconds": clock.seconds[0],
    "rollout_tokens_per_second": float(rollout["response_mask"].sum() / rollout_seconds),
    "final_loss": float(history["loss"][-1]),
    "parity_loss": float(loss),
    "parity_loss_after_step": float(keras.ops.convert_to_numpy(after)),
}))
"""

# %% [markdown]
# ## 2. The fixed batch for the parity check
#
# Packed once here (token ids and masks as NumPy), so every backend starts from
# the same integers.

# %%
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras_hub  # noqa: E402

import adaswitch_keras as ak  # noqa: E402

folder = tempfile.mkdtemp()
teacher = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-teacher"))
student = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-student"))
rows = ak.data.load("arithmetic", "test", limit=8, **ak.presets.TASK)
packed = next(iter(ak.Distiller(teacher, student, max_new_tokens=48).make_dataset(rows, 8)))
np.savez(os.path.join(folder, "batch.npz"), **{k: np.asarray(v) for k, v in packed.items()})

# %% [markdown]
# ## 3. Run it under each backend

# %%
results = {}
for backend in BACKENDS:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(STEPS), folder], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{backend} failed:\n{done.stderr[-3000:]}")
    results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    print(backend, results[backend])

# %% [markdown]
# ## 4. The table

# %%
print(f"AdaSwitch, batch 32, 48 new tokens, {STEPS} steps\n")
print("| backend | warm step | first step (compile) | rollout tokens/s | final loss |")
print("|---|---|---|---|---|")
for backend, r in results.items():
    print(
        f"| {backend} | {r['step_seconds'] * 1000:.0f} ms | {r['first_step_seconds']:.1f} s "
        f"| {r['rollout_tokens_per_second']:,.0f} | {r['final_loss']:.4f} |"
    )

# %% [markdown]
# The final losses differ a little: each backend draws its own random numbers
# for sampling, so the rollouts differ. The deterministic supervised-KD step
# does not:

# %%
reference = results["jax"]
for backend, r in results.items():
    for key in ("parity_loss", "parity_loss_after_step"):
        assert abs(r[key] - reference[key]) < 1e-4, (backend, key, r[key], reference[key])
print("supervised-KD step: loss", {b: round(r["parity_loss"], 6) for b, r in results.items()})
print(
    "after one SGD step:     ",
    {b: round(r["parity_loss_after_step"], 6) for b, r in results.items()},
)
