"""Tasks: the synthetic arithmetic generator, the file loaders, templates."""

import json
import os
import re

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import adaswitch_keras as ak
from adaswitch_keras.data import arithmetic
from conftest import once

pytestmark = once  # conftest.ONCE_BACKEND

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED), reason=f"shared data sets not found at {os.path.abspath(SHARED)}"
)

# An independent reading of the question text (not the generator's tables).
VERBS = {
    r"(?:gets|finds|buys) (\d+) more": "+",
    r"(?:gives away|loses|sells) (\d+)\.": "-",
    r"has (\d+) times as many": "*",
}


def solve(question):
    start = int(re.match(r"\w+ has (\d+) ", question).group(1))
    steps = []
    for pattern, op in VERBS.items():
        steps += [(m.start(), op, int(m.group(1))) for m in re.finditer(pattern, question)]
    value = start
    for _, op, n in sorted(steps):
        value = {"+": value + n, "-": value - n, "*": value * n}[op]
    return value


HARD = dict(steps=4, max_operand=50, operations="+-*", distractors=2)


@pytest.mark.parametrize("options", [{}, HARD])
def test_every_answer_is_the_value_of_its_problem(options):
    for row in arithmetic.generate("train", 2000, **options) + arithmetic.generate(
        "test", 300, **options
    ):
        assert str(solve(row["question"])) == row["answer"]
        lines = row["solution"].split("\n")
        assert lines[-1] == f"#### {row['answer']}"
        for line in lines[:-1]:  # each step is true arithmetic
            a, op, b, _, c = line.split()
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c)
        assert len(lines) == (options.get("steps", 2)) + 1


@pytest.mark.parametrize("options", [{}, HARD])
def test_train_and_test_never_share_a_question(options):
    train = {r["question"] for r in arithmetic.generate("train", 5000, **options)}
    test = [r["question"] for r in arithmetic.generate("test", 500, **options)]
    assert len(test) == len(set(test)) == 500
    assert not train & set(test)


@pytest.mark.parametrize("options", [{}, HARD])
def test_held_out_splits_are_disjoint_from_training_and_each_other(options):
    """test, validation and fresh_test: consecutive blocks of one held-out
    stream, none sharing a question with train or with each other; a
    split's first rows do not depend on how many are asked for."""
    train = {r["question"] for r in arithmetic.generate("train", 5000, **options)}
    held_out = {split: arithmetic.generate(split, **options) for split in arithmetic.HELD_OUT}
    for split, (start, end) in arithmetic.HELD_OUT.items():
        questions = [r["question"] for r in held_out[split]]
        assert len(questions) == len(set(questions)) == end - start
        assert not train & set(questions)
        assert arithmetic.generate(split, 7, **options) == held_out[split][:7]
    test, validation, fresh = ({r["question"] for r in held_out[s]} for s in arithmetic.HELD_OUT)
    assert not test & validation and not test & fresh and not validation & fresh
    assert all(arithmetic.split_of(q) == "test" for q in test | validation | fresh)


def test_the_generator_is_deterministic_across_processes():
    """Same rows in another process with another hash seed; a golden first row."""
    import subprocess
    import sys

    code = "import json; from adaswitch_keras.data import arithmetic; print(json.dumps(arithmetic.generate('test', 50)))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.splitlines()[-1]
    )
    assert other == arithmetic.generate("test", 50)
    assert arithmetic.generate("test", 1, seed=1) != arithmetic.generate("test", 1, seed=0)
    assert arithmetic.generate("test", 1)[0]["question"] == (
        "Eve has 14 pens. Eve gets 1 more. Eve sells 9. How many pens does Eve have now?"
    )


def test_distractors_and_knobs_show_in_the_text():
    rows = arithmetic.generate("train", 200, steps=3, max_operand=9, operations="+", distractors=1)
    assert all(re.search(r"years old|miles|pages", r["question"]) for r in rows)
    assert all("-" not in r["solution"] for r in rows)
    assert all(int(r["answer"]) <= 9 * 4 for r in rows)


def test_bad_arithmetic_arguments_are_explained():
    with pytest.raises(ValueError, match="splits"):
        arithmetic.generate("dev")
    with pytest.raises(ValueError, match="has 500 problems"):
        arithmetic.generate("test", 501)
    with pytest.raises(ValueError, match="operations"):
        arithmetic.generate("train", operations="+/")
    with pytest.raises(ValueError, match="distinct"):
        arithmetic.generate("train", 10_000, steps=1, max_operand=2, operations="+")


def test_rows_follow_the_prompt_templates():
    row = ak.data.load("arithmetic", "test", limit=1)[0]
    assert row["prompts"] == f"Question: {row['question']}\nAnswer:\n"
    assert row["responses"] == row["solution"]
    chat = ak.data.load("arithmetic", "test", limit=1, chat=True)[0]
    assert chat["prompts"].startswith("<|im_start|>user\nQuestion: ")
    assert chat["prompts"].endswith("Answer:<|im_end|>\n<|im_start|>assistant\n")


def test_load_explains_unknown_tasks_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="Unknown task"):
        ak.data.load("mnist")
    with pytest.raises(ValueError, match="data_dir="):
        ak.data.load("gsm8k", "test")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "test.jsonl"))):
        ak.data.load("gsm8k", "test", data_dir=tmp_path)
    with pytest.raises(ValueError, match="splits"):
        ak.data.load("gsm_plus", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="no options"):
        ak.data.load("gsm8k", "test", data_dir=tmp_path, steps=3)


@needs_shared
def test_gsm8k_loader_reads_the_shared_files():
    data_dir = os.path.join(SHARED, "gsm8k")
    train, test = (
        ak.data.load("gsm8k", "train", data_dir=data_dir),
        ak.data.load("gsm8k", "test", data_dir=data_dir),
    )
    assert (len(train), len(test)) == (7473, 1319)
    assert not any("<<" in r["responses"] or ">>" in r["responses"] for r in train + test)
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", r["answer"]) for r in train + test)
    assert test[0]["answer"] == "18" and "16 - 3 - 4 = 9 duck eggs" in test[0]["responses"]
    assert any(r["answer"].startswith("-") for r in train)  # negatives survive
    assert any("," in r["solution"].rsplit("####")[-1] for r in train)  # "1,080" -> "1080"


@needs_shared
def test_dialogsum_loader_reads_the_shared_files():
    data_dir = os.path.join(SHARED, "dialogsum")
    sizes = {
        s: len(ak.data.load("dialogsum", s, data_dir=data_dir))
        for s in ("train", "validation", "test")
    }
    assert sizes == {"train": 12460, "validation": 500, "test": 500}
    test = ak.data.load("dialogsum", "test", data_dir=data_dir)
    assert all(len(r["references"]) == 3 for r in test)
    assert test[0]["responses"] == test[0]["references"][0]
    assert test[0]["prompts"].startswith("Summarize the dialogue.\n#Person1#: ")


def test_gsm_plus_loader_reads_its_file(tmp_path):
    rows = [
        {
            "question": "q1",
            "solution": "3 * 4 = <<3*4=12>>12\n#### 12",
            "answer": "12",
            "perturbation_type": "numerical substitution",
            "seed_question": "",
            "seed_solution": "",
            "seed_answer": "",
        },
        {
            "question": "q2",
            "solution": "We cannot know.\n#### None",
            "answer": "None",
            "perturbation_type": "critical thinking",
            "seed_question": "",
            "seed_solution": "",
            "seed_answer": "",
        },
    ]
    (tmp_path / "gsmplus_testmini.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    loaded = ak.data.load("gsm_plus", "test", data_dir=tmp_path)
    assert [r["answer"] for r in loaded] == ["12", "None"]
    assert loaded[0]["responses"] == "3 * 4 = 12\n#### 12"
    assert loaded[1]["perturbation_type"] == "critical thinking"


def test_distiller_takes_task_rows_as_they_come(pair):
    teacher, student = pair
    rows = ak.data.load("arithmetic", "train", limit=4, max_operand=3, steps=1)
    distiller = ak.Distiller(teacher, student, max_new_tokens=8)
    # the tiny pair's sequence_length is 32: use short prompts with the same extra fields
    rows = [{**r, "prompts": r["solution"][:6]} for r in rows]
    batch = next(iter(distiller.make_dataset(rows, batch_size=4)))
    assert set(batch) == {"token_ids", "padding_mask", "response_mask"}
    assert batch["token_ids"].shape == (4, 32)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
GSM8K_ROW = st.fixed_dictionaries(
    {},
    optional={"question": JSON_VALUES | st.text(max_size=20), "answer": JSON_VALUES | st.text()},
)
LINES = st.one_of(
    GSM8K_ROW.map(lambda row: json.dumps(row).encode()),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),
)


@once
@settings(max_examples=60, deadline=None, derandomize=True)
@given(lines=st.lists(LINES, min_size=1, max_size=4))
def test_a_hostile_jsonl_file_is_read_or_refused_in_one_line(tmp_path_factory, lines):
    """Random JSON values, rows missing or mistyping their fields, bytes that
    are not UTF-8: `load` returns rows whose prompts and responses are
    strings, or raises one ValueError line naming the file and the line."""
    folder = tmp_path_factory.mktemp("gsm8k")
    (folder / "test.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    try:
        rows = ak.data.load("gsm8k", "test", data_dir=folder)
    except ValueError as error:
        message = str(error)
        assert str(folder / "test.jsonl") in message and ", line " in message, message
        assert "\n" not in message
    else:
        assert all(isinstance(r["prompts"], str) and isinstance(r["responses"], str) for r in rows)


@once
def test_a_dialogsum_row_without_its_summary_names_the_line(tmp_path):
    (tmp_path / "dialogsum.test.jsonl").write_text(
        json.dumps({"dialogue": "#Person1#: Hi.", "summary1": "A greeting."})
        + "\n"
        + json.dumps({"dialogue": "#Person1#: Hi.", "summary": "no summary1 here"})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"dialogsum.test.jsonl, line 2: no field 'summary1'"):
        ak.data.load("dialogsum", "test", data_dir=tmp_path)
