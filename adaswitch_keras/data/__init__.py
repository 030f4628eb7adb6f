"""Tasks as rows of {"prompts", "responses", ...}: `load(task, split, ...)`.

    rows = adaswitch_keras.data.load("gsm8k", "test", data_dir="../shared/data/gsm8k")
    distiller.fit(adaswitch_keras.data.load("arithmetic", "train"))

Each row also keeps the task's own fields (`answer`, `references`, ...),
which `adaswitch_keras.evaluation.score` reads.
"""

from adaswitch_keras.data import arithmetic
from adaswitch_keras.data import files
from adaswitch_keras.data.templates import format_row

TASKS = ("arithmetic", "gsm8k", "gsm_plus", "dialogsum")
GSM_FAMILY = ("arithmetic", "gsm8k", "gsm_plus")


def load(task, split="train", *, data_dir=None, limit=None, chat=False, **options):
    """A task split as a list of dict rows with "prompts" and "responses".

    Args:
        task: one of `TASKS`.
        split: "train" or "test" ("validation" for dialogsum too; gsm_plus
            has only "test", its 2,400-row testmini).
        data_dir: the folder of the task's JSONL files (not for "arithmetic").
        limit: keep the first `limit` rows.
        chat: wrap prompts in the ChatML chat format (see `templates`).
        **options: the synthetic task's knobs (`size`, `steps`, `max_operand`,
            `operations`, `distractors`, `seed`; see `arithmetic.generate`).
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")
    if task == "arithmetic":
        rows = arithmetic.generate(split, **{"size": limit, **options})
    elif options:
        raise ValueError(
            f"{task} takes no options {sorted(options)}; only the arithmetic task does."
        )
    else:
        rows = getattr(files, task)(split, data_dir)
    return [format_row(task, row, chat) for row in rows[:limit]]
