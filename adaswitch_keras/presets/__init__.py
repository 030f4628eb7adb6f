"""Tiny pretrained KerasHub presets shipped with the package (no downloads).

    teacher = keras_hub.models.CausalLM.from_preset(adaswitch_keras.presets.path("arithmetic-teacher"))

Both were trained by `scripts/train_model.py` on the synthetic arithmetic
task with the settings in `TASK` (see docs/presets.md and each preset's
`training.json` for the command, the seed and the test accuracy):

- "arithmetic-teacher": Qwen2, 4 layers, hidden 128 (1.0M parameters).
- "arithmetic-student": Qwen2, 2 layers, hidden 64, after a short SFT
  warm-up on the same task: the demo's student, competent at the format but
  weak at the arithmetic.

and on the harder setting `HARD_TASK`, for comparisons in the regime the
AdaSwitch paper is about (a student fine-tuned on the task that still trails
its teacher; benchmarks/compare_strategies.py):

- "arithmetic-hard-teacher": Qwen2, 4 layers, hidden 128 (1.0M parameters).
- "arithmetic-hard-student": Qwen2, 2 layers, hidden 48 (82k parameters),
  after its whole SFT schedule (10,000 steps), well below the teacher.
- "arithmetic-hard-student-plateau": that student's SFT continued until its
  validation accuracy stopped improving (patience), the start of
  benchmarks/evidence.py.
"""

import os

NAMES = (
    "arithmetic-teacher",
    "arithmetic-student",
    "arithmetic-hard-teacher",
    "arithmetic-hard-student",
    "arithmetic-hard-student-plateau",
)
# The arithmetic task the presets were trained on (`adaswitch_keras.data.load` options).
TASK = dict(steps=2, max_operand=20, operations="+-", distractors=0)
# Room after each prompt for the solution: the longest is 40 tokens.
MAX_NEW_TOKENS = 48
# The harder setting of the strategy comparison (benchmarks/compare_strategies.py):
# three operations with `*`, operands up to 50 and a distractor sentence, so
# that an error early in the solution carries into every later line. Its
# longest prompt is 170 tokens and its longest solution 54.
HARD_TASK = dict(steps=3, max_operand=50, operations="+-*", distractors=1)
HARD_MAX_NEW_TOKENS = 64


def path(name):
    """The local directory of a shipped preset, for `CausalLM.from_preset`."""
    if name not in NAMES:
        raise ValueError(f"Unknown shipped preset {name!r}; expected one of {NAMES}.")
    directory = os.path.join(os.path.dirname(__file__), name)
    if not os.path.exists(os.path.join(directory, "config.json")):
        raise FileNotFoundError(
            f"The preset {name!r} is missing at {directory}; reinstall the package "
            "or rebuild it with scripts/train_model.py."
        )
    return directory
