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


def read_jsonl(task, split, data_dir, required=None):
    """The JSON rows of a task's split, with errors that name the path. A
    line that is not UTF-8, not a JSON object, or lacks a field of
    `required` ({key: type or types}) is refused in one line naming file
    and line."""
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
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                where = f"{os.path.abspath(path)}, line {number}"
                rows.append(_json_object(line, required or {}, where))
    return rows


def _json_object(line, required, where):
    try:
        row = json.loads(line.decode("utf-8"))
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{where}: not a line of JSON in UTF-8 ({error}).") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a JSON object but {type(row).__name__}.")
    for key, types in required.items():
        if not isinstance(row.get(key), types):
            raise ValueError(f"{where}: no field {key!r} of type {_names(types)}.")
    return row


def _names(types):
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def strip_calculator_annotations(solution):
    """GSM8K writes `16-3-4=<<16-3-4=9>>9`; the `<<...>>` part is tool markup."""
    return re.sub(r"<<[^<>]*>>", "", solution)


def final_answer(solution):
    """The text after the last `####`, e.g. "1,080" -> "1080"."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


def gsm8k(split, data_dir):
    """GSM8K rows: {"question", "solution", "answer"}."""
    rows = []
    for row in read_jsonl("gsm8k", split, data_dir, {"question": str, "answer": str}):
        solution = strip_calculator_annotations(row["answer"])
        rows.append(
            {"question": row["question"], "solution": solution, "answer": final_answer(solution)}
        )
    return rows


GSM_PLUS_FIELDS = {
    "question": str,
    "solution": str,
    "answer": (str, int, float),
    "perturbation_type": str,
}


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
        for row in read_jsonl("gsm_plus", split, data_dir, GSM_PLUS_FIELDS)
    ]


def dialogsum(split, data_dir):
    """DialogSum rows: {"dialogue", "summary", "references", "topic"}.

    The test split has three reference summaries per dialogue (`summary1..3`);
    `summary` is the first, used as the training target.
    """
    rows = []
    summary = "summary1" if split == "test" else "summary"  # the test split has three
    for row in read_jsonl("dialogsum", split, data_dir, {"dialogue": str, summary: str}):
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
