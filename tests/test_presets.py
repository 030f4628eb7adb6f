"""The shipped presets load on every backend and are the models their
`training.json` describes: a wrong or half-copied directory fails here."""

import json
import os

import keras_hub
import pytest

import adaswitch_keras as ak
from adaswitch_keras import presets


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
