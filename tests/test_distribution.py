"""keras.distribution on JAX: an AdaSwitch step of the distiller, data parallel
or with a sharded teacher, equals the single-device step (8 virtual CPUs)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import adaswitch_keras as ak
from conftest import arithmetic_pairs
from conftest import sharpen

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "jax",
    reason="keras.distribution (DataParallel, ModelParallel) needs the JAX backend",
)

# The virtual devices must exist before JAX starts: a fresh process.
STEPS = """
import json, sys
from contextlib import nullcontext
import keras, keras_hub, numpy as np
import adaswitch_keras as ak
from keras.distribution import DataParallel, DeviceMesh, LayoutMap, ModelParallel

folder = sys.argv[1]
batch = dict(np.load(folder + "/batch.npz"))


def step(teacher_scope, student_scope):
    with teacher_scope:
        teacher = keras_hub.models.CausalLM.from_preset(folder + "/teacher")
    with student_scope:
        student = keras_hub.models.CausalLM.from_preset(folder + "/student")
        distiller = ak.Distiller(
            teacher, student, strategy=ak.AdaSwitch(window=2, k=1.5), max_new_tokens=8, seed=0
        )
        distiller.compile(optimizer=keras.optimizers.SGD(1.0))
        logs = distiller.train_on_batch(batch, return_dict=True)
    result = {"loss": float(logs["loss"]), "switch_rate": float(logs["switch_rate"]),
              "student_weights": [np.asarray(w) for w in student.get_weights()]}
    for role, model in (("teacher", teacher), ("student", student)):
        (kernel,) = [v for v in model.weights if v.path == "transformer_layer_0/self_attention/query/kernel"]
        sharding = kernel.value.sharding
        result[role] = {"devices": len(sharding.device_set), "shard_shape": sharding.shard_shape(kernel.shape)}
    return result


mesh = DeviceMesh((2, 4), ("batch", "model"))
model_parallel = ModelParallel(layout_map=keras_hub.models.QwenBackbone.get_layout_map(mesh))
replicated = ModelParallel(layout_map=LayoutMap(mesh))  # no rule: every variable replicated
data_parallel = DataParallel()  # all 8 devices
results = {
    "single_device": step(nullcontext(), nullcontext()),
    "data_parallel": step(data_parallel.scope(), data_parallel.scope()),
    "model_parallel": step(model_parallel.scope(), model_parallel.scope()),
    "sharded_teacher_only": step(model_parallel.scope(), replicated.scope()),
}
reference = results["single_device"]["student_weights"]
for result in results.values():  # the update: the student after the step
    weights = zip(result.pop("student_weights"), reference)
    result["student_max_diff"] = max(float(np.abs(a - b).max()) for a, b in weights)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Saves a teacher and a student (embedding tables padded to 272 rows,
    divisible by the mesh axes) and a batch of 8, then runs `STEPS`."""
    folder = tmp_path_factory.mktemp("distribution")
    keras.utils.set_random_seed(0)
    teacher = ak.tiny.causal_lm(
        num_layers=2, hidden_dim=64, sequence_length=32, vocabulary_size=272
    )
    student = ak.tiny.causal_lm(
        num_layers=1, hidden_dim=32, sequence_length=32, vocabulary_size=272
    )
    sharpen(teacher, 60.0).save_to_preset(str(folder / "teacher"))
    sharpen(student, 20.0).save_to_preset(str(folder / "student"))
    distiller = ak.Distiller(teacher, student, max_new_tokens=8)
    batch = next(iter(distiller.make_dataset(arithmetic_pairs(8), batch_size=8)))
    np.savez(folder / "batch.npz", **{k: np.asarray(v) for k, v in batch.items()})
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    done = subprocess.run(
        [sys.executable, "-c", STEPS, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("run", ["data_parallel", "model_parallel", "sharded_teacher_only"])
def test_sharded_step_equals_the_single_device_step(results, run):
    reference = results["single_device"]
    assert 0 < reference["switch_rate"] < 1  # the rollout switched in some rows, not all
    for key in ("loss", "switch_rate"):  # the rollout and the loss
        assert results[run][key] == pytest.approx(reference[key], abs=1e-5), (run, results)
    assert results[run]["student_max_diff"] < 1e-5, (run, results)  # the update (SGD(1.0))


def test_variables_are_sharded_as_the_layout_map_says(results):
    full = [64, 4, 16]  # the teacher's query kernel: hidden, heads, head dim
    assert results["single_device"]["teacher"] == {"devices": 1, "shard_shape": full}
    assert results["data_parallel"]["teacher"] == {"devices": 8, "shard_shape": full}
    # QwenBackbone.get_layout_map: query kernels ("model", "batch", None) on a (2, 4) mesh.
    assert results["model_parallel"]["teacher"] == {"devices": 8, "shard_shape": [16, 2, 16]}
    assert results["model_parallel"]["student"] == {"devices": 8, "shard_shape": [8, 2, 8]}
    assert results["sharded_teacher_only"]["teacher"] == {"devices": 8, "shard_shape": [16, 2, 16]}
    assert results["sharded_teacher_only"]["student"] == {"devices": 8, "shard_shape": [32, 4, 8]}
