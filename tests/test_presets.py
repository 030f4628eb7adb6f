"""The shipped presets load on every backend and are the models their
`training.json` describes: a wrong or half-copied directory fails here."""

import json
import os

import keras_hub
import pytest

import adaswitch_keras as ak
from adaswitch_keras import presets
from conftest import once


def task_of(name):
    hard = name.startswith("arithmetic-hard-")
    return (
        (presets.HARD_TASK, presets.HARD_MAX_NEW_TOKENS)
        if hard
        else (presets.TASK, presets.MAX_NEW_TOKENS)
    )


def record(name):
    with open(os.path.join(presets.path(name), "training.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", presets.NAMES)
def test_preset_matches_its_training_record(name):
    task, max_new_tokens = task_of(name)
    model = keras_hub.models.CausalLM.from_preset(presets.path(name))
    saved = record(name)
    assert saved["task"] == task
    assert model.count_params() == saved["parameters"]
    # The longest test prompt and its solution fit the preset's sequence length.
    test = ak.data.load("arithmetic", "test", **task)
    tokenizer = model.preprocessor.tokenizer
    longest = max(len(tokenizer(row["prompts"])) for row in test)
    assert longest + max_new_tokens <= model.preprocessor.sequence_length


@pytest.mark.parametrize("name", [name for name in presets.NAMES if name.endswith("-teacher")])
def test_teacher_solves_test_problems(name):
    """Its record says 95-100% (greedy, 500 problems); 8 of them here."""
    task, _ = task_of(name)
    test = ak.data.load("arithmetic", "test", **task)
    model = keras_hub.models.CausalLM.from_preset(presets.path(name))
    result = ak.evaluate(model, "arithmetic", examples=test, limit=8, verbose=0)
    assert result["accuracy"] >= 0.75


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The pages docs/presets.md links, and the records each is generated from.
PAGES = {
    "presets_demo": ["arithmetic-teacher", "arithmetic-student"],
    "presets_hard": ["arithmetic-hard-teacher", "arithmetic-hard-student"],
    "presets_plateau": [
        "arithmetic-hard-student-plateau",
        "docs/results/plateau_lr3e-4_training.json",
    ],
    "presets_equal_steps": [
        "arithmetic-teacher",
        "docs/results/student_3000_steps_training.json",
        "docs/results/small_student_3000_steps_training.json",
    ],
}


@once
@pytest.mark.parametrize("page", sorted(PAGES))
def test_presets_pages_are_what_the_report_writes(page, tmp_path):
    """No hand edit and no stale page: each committed page is what
    scripts/presets_report.py writes from the records today."""
    import subprocess
    import sys

    sources = [
        source if source.endswith(".json") else f"adaswitch_keras/presets/{source}"
        for source in PAGES[page]
    ]
    script = os.path.join(ROOT, "scripts", "presets_report.py")
    subprocess.run(
        [sys.executable, script, *sources, "--output", str(tmp_path)], cwd=ROOT, check=True
    )
    with open(os.path.join(ROOT, "docs", "results", page, "README.md")) as f:
        committed = f.read()
    assert (tmp_path / "README.md").read_text() == committed
