# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Every strategy on the same data, models and code
#
# **What you will do:** distil the same warm-up student from the same teacher
# with each token-source strategy for the same number of steps, and compare
# accuracy, step time and how much of each sequence the teacher wrote.
#
# | strategy | who writes the response | loss |
# |---|---|---|
# | `SFT` | ground truth | cross-entropy |
# | `SupervisedKD` | ground truth | divergence to the teacher |
# | `SeqKD` | the teacher samples it | cross-entropy on the teacher's tokens |
# | `SeqKDDivergence` | the teacher samples it | divergence |
# | `OnPolicy` | the student samples it | divergence |
# | `GKD(lmbda)` | the student with probability lmbda, else ground truth | divergence |
# | `SKD(top_k)` | the student; a token outside the teacher's top-K is resampled by the teacher | divergence |
# | `Switch(tau0, decay)` | per token: the teacher when JSD > tau0 * exp(-decay * t) | divergence |
# | `AdaSwitch(window, k)` | the student until d_i > K x its window mean, then the teacher | divergence |
#
# This is a short run for reading; `benchmarks/compare_strategies.py` runs
# the full comparison (from an SFT-plateau student on a harder task, with an
# SFT-continued control, 5 seeds, 95% intervals, an L x K grid) and writes
# its page; `docs/results/strategies.md` shows an earlier, warm-up regime.

# %%
import os

import keras
import keras_hub

import adaswitch_keras as ak

SMOKE = os.environ.get("SMOKE") == "1"
STEPS = 2 if SMOKE else 60
TEST_SIZE = 8 if SMOKE else 300
STRATEGIES = [
    ak.SFT(),
    ak.SupervisedKD(),
    ak.SeqKD(),
    ak.OnPolicy(),
    ak.GKD(lmbda=0.5),
    ak.SKD(top_k=5),
    ak.Switch(tau0=0.2, decay=0.05),
    ak.AdaSwitch(window=5, k=2.0),
]
teacher = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-teacher"))
train = ak.data.load("arithmetic", "train", limit=256 if SMOKE else None, **ak.presets.TASK)
test = ak.data.load("arithmetic", "test", limit=TEST_SIZE, **ak.presets.TASK)


# %% [markdown]
# ## One loop, one line that changes: `strategy=`

# %%
results = []
for strategy in STRATEGIES:
    keras.utils.set_random_seed(0)
    student = keras_hub.models.CausalLM.from_preset(ak.presets.path("arithmetic-student"))
    distiller = ak.Distiller(
        teacher, student, strategy=strategy, max_new_tokens=ak.presets.MAX_NEW_TOKENS, seed=0
    )
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-3))
    clock = ak.callbacks.StepTimer()
    logs = distiller.fit(
        train, batch_size=32, epochs=1, steps_per_epoch=STEPS, callbacks=[clock], verbose=0
    ).history
    accuracy = ak.evaluate(student, "arithmetic", examples=test, batch_size=64, verbose=0)[
        "accuracy"
    ]
    results.append(
        {
            "strategy": repr(strategy),
            "accuracy": accuracy,
            "seconds": clock.median(),
            "teacher_tokens": logs["teacher_token_fraction"][-1],
            "switch_rate": logs["switch_rate"][-1],
        }
    )
    print(f"{results[-1]['strategy']:<40} accuracy {accuracy:.3f}")

# %% [markdown]
# ## The table

# %%
on_policy = next(r["seconds"] for r in results if r["strategy"] == "OnPolicy()")
print(f"{STEPS} steps each, batch 32, backend {keras.backend.backend()}\n")
print("| strategy | accuracy | step time / OnPolicy | switch rate | teacher-token fraction |")
print("|---|---|---|---|---|")
for r in results:
    print(
        f"| {r['strategy']} | {r['accuracy']:.3f} | {r['seconds'] / on_policy:.2f}x "
        f"| {r['switch_rate']:.2f} | {r['teacher_tokens']:.2f} |"
    )

# %% [markdown]
# ## When to pick which
#
# - **SFT / SupervisedKD** are the cheapest (no rollout) and a good start when
#   ground truth is plentiful and clean; supervised KD adds the teacher's whole
#   distribution over each next token.
# - **SeqKD** needs no ground truth and gives clean teacher text, but the
#   student never sees its own prefixes (exposure bias).
# - **OnPolicy / GKD** train on the student's own prefixes; a weak student
#   writes noisy sequences (GKD's lmbda mixes in ground truth).
# - **SKD, Switch, AdaSwitch** let the teacher intervene inside the sequence,
#   paying for a teacher decode in the rollout. AdaSwitch switches once, when
#   the divergence jumps relative to its recent past: the student keeps its
#   own prefix and the teacher writes a coherent rest.
# - Tiny runs like this one are noisy: compare strategies over several seeds,
#   with intervals. `docs/results/strategies_plateau.md` does, from a student
#   fine-tuned to its plateau below the teacher (the papers' regime).
