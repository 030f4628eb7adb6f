"""The same supervised-KD step from the same saved weights on every backend."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import adaswitch_keras as ak
from conftest import SEQUENCE_LENGTH

BACKENDS = ("jax", "tensorflow", "torch")

# It runs every backend in subprocesses itself: once, from the torch run (the
# shortest of the three runs that tests/run.sh starts at once).
pytestmark = pytest.mark.skipif(
    keras.config.backend() != "torch", reason="runs all three backends itself, from the torch run"
)

STEP = """
import json, sys
import keras, keras_hub, numpy as np
import adaswitch_keras as ak

teacher = keras_hub.models.CausalLM.from_preset(sys.argv[1])
student = keras_hub.models.CausalLM.from_preset(sys.argv[2])
batch = dict(np.load(sys.argv[3]))
distiller = ak.Distiller(teacher, student, strategy="supervised_kd", max_new_tokens=8)
distiller.compile(optimizer=keras.optimizers.SGD(1.0))
logs = distiller.train_on_batch(batch, return_dict=True)
after = distiller.compute_loss(batch, y_pred=distiller(batch))
print(json.dumps({"loss": float(logs["loss"]), "after": float(keras.ops.convert_to_numpy(after))}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory, pair):
    folder = tmp_path_factory.mktemp("parity")
    teacher, student = pair
    teacher.save_to_preset(str(folder / "teacher"))
    student.save_to_preset(str(folder / "student"))
    distiller = ak.Distiller(teacher, student, max_new_tokens=8)
    rows = [{"prompts": f"Q: {i} * 3 =", "responses": f" {3 * i}"} for i in range(4)]
    batch = next(iter(distiller.make_dataset(rows, batch_size=4)))
    np.savez(folder / "batch.npz", **{k: np.asarray(v) for k, v in batch.items()})
    return folder


def run_step(backend, folder):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [str(folder / name) for name in ("teacher", "student", "batch.npz")]
    done = subprocess.run(
        [sys.executable, "-c", STEP, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_supervised_kd_step_is_the_same_on_every_backend(saved):
    results = {backend: run_step(backend, saved) for backend in BACKENDS}
    reference = results[keras.config.backend()]
    assert reference["after"] < reference["loss"]  # the step did something
    for backend, result in results.items():
        assert result["loss"] == pytest.approx(reference["loss"], abs=1e-4), (backend, results)
        assert result["after"] == pytest.approx(reference["after"], abs=1e-4), (backend, results)
    assert SEQUENCE_LENGTH  # presets carry the test sequence length
