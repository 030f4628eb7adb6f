# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # How AdaSwitch works: a rollout opened up
#
# **What you will see:** for a few prompts, the divergence trace that AdaSwitch
# reads while the student writes, the sliding-window threshold, the switch
# point, and which tokens the teacher wrote.
#
# The rule (one switch per sequence). With d_i = KL(p_teacher,i || p_student,i)
# at response position i, window L and multiplier K, the switch index is the
# first i >= L with
#
#     d_i > K * (d_{i-1} + ... + d_{i-L}) / L,
#
# and from there on the teacher writes every token.
#
# `Distiller.predict` runs exactly the rollout of a training step (compiled on
# JAX and TensorFlow) and returns the trace. Run on any backend;
# `SMOKE=1` uses fewer prompts.

# %%
import os

import keras_hub
import numpy as np
from matplotlib import pyplot as plt

import adaswitch_keras as ak

SMOKE = os.environ.get("SMOKE") == "1"
WINDOW, K = 5, 2.0
teacher = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-teacher"))
student = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-student"))
distiller = ak.Distiller(
    teacher,
    student,
    strategy=ak.AdaSwitch(window=WINDOW, k=K),
    max_new_tokens=ak.presets.MAX_NEW_TOKENS,
    seed=1,
)
prompts = ak.data.load("arithmetic", "test", limit=8, **ak.presets.TASK)

# %% [markdown]
# ## 1. One rollout, as a training step would write it

# %%
out = distiller.predict(prompts, batch_size=8, verbose=0)
response = out["response_mask"].astype(bool)
teacher_wrote = out["teacher_token_mask"].astype(bool)
print({key: value.shape for key, value in out.items()})
print(f"switched: {teacher_wrote.any(axis=1).mean():.0%} of the sequences")

# %% [markdown]
# ## 2. The switch index, recomputed by hand in NumPy
#
# `out["scores"]` holds d_i at every response column. Recomputing the rule in
# plain NumPy gives the same switch positions as the live rollout.


# %%
def switch_by_hand(d, window=WINDOW, k=K):
    """First i >= window with d[i] > k * mean(d[i-window:i]); None if none."""
    for i in range(window, len(d)):
        if d[i] > k * d[i - window : i].mean():
            return i
    return None


prompt_length = out["padding_mask"].sum(1) - response.sum(1)
for row in range(len(prompts)):
    d = out["scores"][row][response[row]]
    live = out["switch_index"][row] - prompt_length[row] if teacher_wrote[row].any() else None
    print(f"row {row}: by hand {switch_by_hand(d)}, live rollout {live}")
    assert switch_by_hand(d) == live

# %% [markdown]
# ## 3. The trace, the threshold and the switch point

# %%
rows = range(2 if SMOKE else 4)
figure, axes = plt.subplots(len(rows), 1, figsize=(8, 2.4 * len(rows)), squeeze=False)
for axis, row in zip(axes[:, 0], rows):
    d = out["scores"][row][response[row]]
    threshold = [np.nan] * WINDOW + [K * d[i - WINDOW : i].mean() for i in range(WINDOW, len(d))]
    axis.plot(d, marker=".", label="d_i = KL(teacher || student)")
    axis.plot(threshold, "--", label=f"K x mean of the last {WINDOW}")
    switch = switch_by_hand(d)
    if switch is not None:
        axis.axvline(switch, color="red", alpha=0.6, label=f"switch at {switch}")
        axis.axvspan(switch, len(d) - 1, color="red", alpha=0.06)
    axis.set_ylabel("nats")
    axis.legend(fontsize=7, loc="upper right")
axes[-1, 0].set_xlabel("response position i")
figure.tight_layout()
os.makedirs("tutorial-output", exist_ok=True)
figure.savefig(os.path.join("tutorial-output", "adaswitch_trace.png"), dpi=110)

# %% [markdown]
# ## 4. Whose tokens? The teacher's are in [brackets]
#
# Before the switch the student wrote (its mistakes included: that is the
# on-policy part); after it the teacher wrote the rest (the off-policy part).

# %%
detokenize = student.preprocessor.tokenizer.detokenize


def highlight(row):
    text, inside = [], False
    for token, is_response, by_teacher in zip(
        out["token_ids"][row], response[row], teacher_wrote[row]
    ):
        if not is_response:
            continue
        if by_teacher and not inside:
            text.append("[")
        text.append(detokenize([int(token)]))
        inside = bool(by_teacher)
    return "".join(text) + ("]" if inside else "")


for row in rows:
    print(prompts[row]["prompts"] + highlight(row))
    print("---")

# %% [markdown]
# ## 5. What the student trains on
#
# Every response token, whoever wrote it, gets the loss
# KL(p_teacher || p_student) at that position (forward KL by default;
# `divergence="jsd"`, `"reverse_kl"`, ... choose another). The next tutorial
# compares AdaSwitch with the other strategies on identical code.
