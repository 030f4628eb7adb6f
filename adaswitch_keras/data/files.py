"""Loaders for the paper's data sets from local JSONL files (no downloads).

TFDS's `gsm8k` builder downloads from the internet and TFDS has no DialogSum
builder, so these read the files as published and return plain rows.
"""

import json
import os
import re

# Where each task's files live inside `data_dir`, per split.
FILES = {
    "gsm8k": {"train": "train.jsonl", "test": "test.jsonl"},
    "gsm_plus": {"test": "gsmplus_testmini.jsonl"},
    "dialogsum": {
        "train": "dialogsum.train.jsonl",
        "validation": "dialogsum.dev.jsonl",
        "test": "dialogsum.test.jsonl",
    },
}


def read_jsonl(task, split, data_dir):
    """The JSON rows of a task's split, with errors that name the path."""
    if split not in FILES[task]:
        raise ValueError(f"{task} has splits {tuple(FILES[task])}; received {split!r}.")
    if data_dir is None:
        raise ValueError(
            f"{task} is read from local files: pass data_dir=, a folder holding "
            f"{', '.join(FILES[task].values())}."
        )
    path = os.path.join(os.fspath(data_dir), FILES[task][split])
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {task} {split} file at {os.path.abspath(path)}.")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def strip_calculator_annotations(solution):
    """GSM8K writes `16-3-4=<<16-3-4=9>>9`; the `<<...>>` part is tool markup."""
    return re.sub(r"<<[^<>]*>>", "", solution)


def final_answer(solution):
    """The text after the last `####`, e.g. "1,080" -> "1080"."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


def gsm8k(split, data_dir):
    """GSM8K rows: {"question", "solution", "answer"}."""
    rows = []
    for row in read_jsonl("gsm8k", split, data_dir):
        solution = strip_calculator_annotations(row["answer"])
        rows.append(
            {"question": row["question"], "solution": solution, "answer": final_answer(solution)}
        )
    return rows


def gsm_plus(split, data_dir):
    """GSM-Plus testmini rows: {"question", "solution", "answer", "perturbation_type"}.

    `answer` may be a decimal ("4.33"), a fraction, or "None" for the
    critical-thinking perturbation (the question cannot be answered).
    """
    return [
        {
            "question": row["question"],
            "solution": strip_calculator_annotations(row["solution"]),
            "answer": str(row["answer"]).replace(",", ""),
            "perturbation_type": row["perturbation_type"],
        }
        for row in read_jsonl("gsm_plus", split, data_dir)
    ]


def dialogsum(split, data_dir):
    """DialogSum rows: {"dialogue", "summary", "references", "topic"}.

    The test split has three reference summaries per dialogue (`summary1..3`);
    `summary` is the first, used as the training target.
    """
    rows = []
    for row in read_jsonl("dialogsum", split, data_dir):
        references = [row[k] for k in ("summary", "summary1", "summary2", "summary3") if k in row]
        rows.append(
            {
                "dialogue": row["dialogue"],
                "summary": references[0],
                "references": references,
                "topic": row.get("topic", row.get("topic1", "")),
            }
        )
    return rows
