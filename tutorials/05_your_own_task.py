# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Your own task: your data, your switching rule
#
# **What you will do:** feed the `Distiller` your own prompt/response data in
# each form it takes (a list of dicts, a dict of lists, a `tf.data.Dataset`,
# a TFDS dataset), and write your own switching rule as a `Strategy`.
#
# Run on any backend; `SMOKE=1` trains for fewer steps.

# %%
import os
import tempfile

import keras
import keras_hub
import tensorflow as tf
import tensorflow_datasets as tfds
from keras import ops

import adaswitch_keras as ak

SMOKE = os.environ.get("SMOKE") == "1"
STEPS = 2 if SMOKE else 40
teacher = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-teacher"))
student = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-student"))

# %% [markdown]
# ## 1. Your data, four ways
#
# The only contract is KerasHub's: `"prompts"` (str) and `"responses"` (str).
# Here the rows are our synthetic arithmetic problems; yours come from files,
# a database, anything.

# %%
rows = ak.data.load("arithmetic", "train", limit=256, **ak.presets.TASK)
as_list = [{"prompts": r["prompts"], "responses": r["responses"]} for r in rows]
as_dict = {key: [r[key] for r in as_list] for key in ("prompts", "responses")}
as_tf_data = tf.data.Dataset.from_tensor_slices(as_dict).shuffle(256, seed=0).repeat()

# A TFDS dataset of your own, stored once, then loaded like any TFDS dataset.
data_dir = tempfile.mkdtemp()
tfds.dataset_builders.store_as_tfds_dataset(
    name="my_arithmetic",
    version="1.0.0",
    features=tfds.features.FeaturesDict(
        {"prompts": tfds.features.Text(), "responses": tfds.features.Text()}
    ),
    split_datasets={"train": tf.data.Dataset.from_tensor_slices(as_dict)},
    data_dir=data_dir,
)
as_tfds = tfds.load("my_arithmetic", split="train", data_dir=data_dir).repeat()

distiller = ak.Distiller(teacher, student, max_new_tokens=ak.presets.MAX_NEW_TOKENS, seed=0)
distiller.compile(optimizer=keras.optimizers.AdamW(1e-3))
for name, data in [
    ("list", as_list),
    ("dict", as_dict),
    ("tf.data", as_tf_data),
    ("TFDS", as_tfds),
]:
    logs = distiller.fit(data, batch_size=16, epochs=1, steps_per_epoch=2, verbose=0).history
    print(f"{name:>8}: loss {logs['loss'][-1]:.4f}")

# %% [markdown]
# Lists and dicts are tokenized once and shuffled each epoch; a
# `tf.data.Dataset` is used as it comes (shuffle and repeat it yourself) and
# batched if it is not batched yet. Strategies that generate the responses
# (`OnPolicy`, `SeqKD`, `SeqKDDivergence`, `SKD`, `Switch`, `AdaSwitch`) need
# only prompts.

# %% [markdown]
# ## 2. Your own switching rule
#
# A strategy is a score and a rule over the trace of scores:
#
# - `score(teacher_logits, student_logits, proposal)` -> `[B]`: what the rule
#   reads at each position (AdaSwitch: KL(p_teacher || p_student));
# - `teacher_writes(scores, mask)` -> bool `[B, T]`: where the teacher's token
#   is kept. It must be causal (position t may read scores up to t only): the
#   rollout calls it on the trace recorded so far.
#
# Example: hand over to the teacher, once and for good, at the first token the
# student is unsure of (its top probability below `min_confidence`). Only
# `keras.ops`, so it runs and compiles on every backend.


# %%
class ConfidenceSwitch(ak.Strategy):
    """The student writes until its top-1 probability drops below
    `min_confidence`; the teacher writes the rest of the sequence."""

    decoders = ("student", "teacher")

    def __init__(self, min_confidence=0.5):
        self.min_confidence = min_confidence

    def score(self, teacher_logits, student_logits, proposal):
        return ops.max(ops.softmax(ops.cast(student_logits, "float32")), axis=-1)

    def teacher_writes(self, scores, mask):
        mask = ops.cast(mask, "bool")
        unsure = ops.logical_and(mask, scores < self.min_confidence)
        columns = ops.arange(ops.shape(scores)[1], dtype="int32")
        first = ops.min(ops.where(unsure, columns[None, :], ops.shape(scores)[1]), axis=1)
        return ops.logical_and(mask, columns[None, :] >= first[:, None])

    def get_config(self):
        return {"min_confidence": self.min_confidence}


# %% [markdown]
# It plugs in like the built-in strategies; the switch metrics in the
# progress bar and `predict`'s trace work unchanged.

# %%
keras.utils.set_random_seed(0)
student = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-student"))
distiller = ak.Distiller(
    teacher,
    student,
    strategy=ConfidenceSwitch(0.5),
    max_new_tokens=ak.presets.MAX_NEW_TOKENS,
    seed=0,
)
distiller.compile(optimizer=keras.optimizers.AdamW(1e-3))
logs = distiller.fit(as_list, batch_size=16, epochs=1, steps_per_epoch=STEPS, verbose=2).history

out = distiller.predict(as_list[:8], batch_size=8, verbose=0)
confidence = out["scores"][0][out["response_mask"][0].astype(bool)]
teacher_part = out["teacher_token_mask"][0][out["response_mask"][0].astype(bool)]
print("student confidence per response token:", confidence.round(2))
print("teacher wrote from position:", teacher_part.argmax() if teacher_part.any() else None)
assert not teacher_part.any() or confidence[teacher_part.argmax()] < 0.5

# %% [markdown]
# ## 3. Your own prompts, scored
#
# For a GSM-style task, `ak.evaluation.score("gsm8k", predictions, rows)` needs
# rows with an `answer`; for summaries, `"dialogsum"` needs `references`.

# %%
predictions = ak.evaluation.generate(
    student, [r["prompts"] for r in rows[:16]], batch_size=16, verbose=0
)
print(ak.evaluation.score("arithmetic", predictions, rows[:16]))
