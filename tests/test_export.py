"""Checkpoints of the distiller during `fit`, and the student exported as a
KerasHub preset that another backend loads with the same logits."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import adaswitch_keras as ak
from conftest import arithmetic_pairs
from conftest import copy_weights

OTHER_BACKEND = {"jax": "tensorflow", "tensorflow": "torch", "torch": "jax"}

LOGITS = """
import json, sys
import keras_hub, numpy as np
from keras import ops

student = keras_hub.models.CausalLM.from_preset(sys.argv[1])
token_ids = student.preprocessor.tokenizer(sys.argv[2])
inputs = {"token_ids": ops.convert_to_tensor([token_ids]), "padding_mask": ops.ones((1, len(token_ids)), "bool")}
logits = ops.convert_to_numpy(student(inputs))[0]
print(json.dumps({"token_ids": np.asarray(token_ids).tolist(), "logits": logits.tolist()}))
"""


def tiny_distiller(seed):
    keras.utils.set_random_seed(seed)
    teacher = ak.tiny.causal_lm(num_layers=1, hidden_dim=32, sequence_length=32)
    student = ak.tiny.causal_lm(num_layers=1, hidden_dim=16, sequence_length=32)
    return ak.Distiller(teacher, student, strategy="supervised_kd", max_new_tokens=8, seed=seed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A distiller fitted for 2 epochs with a weights-only `ModelCheckpoint`."""
    path = tmp_path_factory.mktemp("checkpoint") / "distiller.weights.h5"
    distiller = tiny_distiller(seed=0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    checkpoint = keras.callbacks.ModelCheckpoint(str(path), save_weights_only=True)
    distiller.fit(arithmetic_pairs(8), batch_size=4, epochs=2, callbacks=[checkpoint], verbose=0)
    return distiller, path


def test_model_checkpoint_restores_the_student_into_a_fresh_distiller(trained):
    distiller, path = trained
    fresh = tiny_distiller(seed=1)
    assert not np.array_equal(fresh.student.get_weights()[0], distiller.student.get_weights()[0])
    ones = np.ones((1, 8), "int32")
    fresh({"token_ids": ones, "padding_mask": ones, "response_mask": ones})  # builds it
    fresh.load_weights(str(path))
    for model in ("student", "teacher"):
        for saved, loaded in zip(
            copy_weights(getattr(distiller, model)), copy_weights(getattr(fresh, model))
        ):
            np.testing.assert_array_equal(loaded, saved)


def test_student_preset_loads_on_another_backend_with_the_same_logits(trained, tmp_path):
    student = trained[0].student
    student.save_to_preset(str(tmp_path / "student"))
    backend = OTHER_BACKEND[keras.config.backend()]
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    prompt = "Q: 12 + 30 ="
    done = subprocess.run(
        [sys.executable, "-c", LOGITS, str(tmp_path / "student"), prompt],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    other = json.loads(done.stdout.strip().splitlines()[-1])
    token_ids = ops.convert_to_numpy(student.preprocessor.tokenizer(prompt))
    assert other["token_ids"] == token_ids.tolist()
    inputs = {"token_ids": token_ids[None], "padding_mask": np.ones((1, len(token_ids)), bool)}
    np.testing.assert_allclose(
        np.array(other["logits"]), ops.convert_to_numpy(student(inputs))[0], atol=1e-5
    )
