# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Quickstart: distil a teacher into a student in a few lines
#
# **What you will do:** load a teacher and a student causal LM from KerasHub
# presets, score the student, distil it with AdaSwitch using `fit()`, and
# score it again.
#
# Everything runs offline on a CPU: the package ships a tiny arithmetic
# teacher (a 1.0M-parameter Qwen2 that solves the synthetic task) and a 7x
# smaller student that has only been warmed up. The same lines work with real
# KerasHub presets on a GPU machine (see the note after the loading cell).
#
# Run it on any backend: `KERAS_BACKEND=jax python tutorials/01_quickstart.py`
# (or `tensorflow`, `torch`). `SMOKE=1` makes every loop tiny (CI runs that).

# %%
import os
import time

import keras
import keras_hub

import adaswitch_keras as ak

SMOKE = os.environ.get("SMOKE") == "1"
STEPS = 4 if SMOKE else 600  # as `adaswitch-keras demo`; 200 steps did not lift the student here
TEST_SIZE = 16 if SMOKE else 300
print("Keras backend:", keras.backend.backend())

# %% [markdown]
# ## 1. Load a teacher and a student
#
# Both are ordinary `keras_hub.models.CausalLM`s with their preprocessors. They
# must share a tokenizer: AdaSwitch compares their next-token distributions.

# %%
teacher = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-teacher"))
student = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-student"))
print(f"teacher: {teacher.count_params():,} parameters; student: {student.count_params():,}")

# %% [markdown]
# With real weights (a GPU machine with access to Kaggle or Hugging Face), the
# only change is the preset names, e.g.:
#
# ```python
# teacher = keras_hub.models.CausalLM.from_preset("qwen2.5_7b_en")
# student = keras_hub.models.CausalLM.from_preset("qwen2.5_0.5b_en")
# ```

# %% [markdown]
# ## 2. Data: prompts and responses
#
# `fit()` takes the KerasHub convention `{"prompts": str, "responses": str}`.
# `ak.data.load` gives the synthetic GSM8K-format task the presets were trained
# on (generated offline; the same rows on every machine).

# %%
train = ak.data.load("arithmetic", "train", limit=256 if SMOKE else None, **ak.presets.TASK)
test = ak.data.load("arithmetic", "test", limit=TEST_SIZE, **ak.presets.TASK)
print(train[0]["prompts"] + train[0]["responses"])

# %% [markdown]
# ## 3. Score the student before distillation
#
# `ak.evaluate` generates greedily and checks the number after `####`.

# %%
before = ak.evaluate(student, "arithmetic", examples=test, batch_size=64, verbose=0)
print(f"student accuracy before: {before['accuracy']:.3f}")

# %% [markdown]
# ## 4. Distil with AdaSwitch
#
# Each step the student writes the responses; the rollout watches the
# divergence d_i = KL(p_teacher || p_student) and, once it jumps above K times
# the mean of the last L values, lets the teacher write the rest. The student
# then learns the teacher's distribution on every response token.

# %%
keras.utils.set_random_seed(0)
distiller = ak.Distiller(
    teacher,
    student,
    strategy=ak.AdaSwitch(window=5, k=2.0),
    max_new_tokens=ak.presets.MAX_NEW_TOKENS,
    seed=0,
)
distiller.compile(optimizer=keras.optimizers.AdamW(1e-3))
start = time.perf_counter()
history = distiller.fit(train, batch_size=32, epochs=1, steps_per_epoch=STEPS, verbose=2)
print(f"{STEPS} steps in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## 5. Score it again and look at a generation

# %%
after = ak.evaluate(student, "arithmetic", examples=test, batch_size=64, verbose=0)
print(f"student accuracy: {before['accuracy']:.3f} -> {after['accuracy']:.3f}")
print(f"switch rate in the last epoch: {history.history['switch_rate'][-1]:.2f}")
print(test[0]["prompts"] + after["predictions"][0])

# %% [markdown]
# ## 6. Save the student
#
# The student is still a KerasHub model: save it as a preset and load it on any
# backend with `keras_hub.models.CausalLM.from_preset(path)`.

# %%
student.save_to_preset(os.path.join("tutorial-output", "quickstart-student"))
