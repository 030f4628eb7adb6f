"""Exact resume: a run killed mid-epoch and restarted from its BackupAndRestore
backup ends with the weights of a run never stopped."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import adaswitch_keras as ak
from conftest import MAX_NEW_TOKENS
from conftest import arithmetic_pairs

RUN = """
import json, os, signal, sys
import keras, numpy as np
import adaswitch_keras as ak

folder, kill_after, init_seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keras.utils.set_random_seed(init_seed)  # a resumed run starts elsewhere: only the restore brings it back
teacher = ak.tiny.causal_lm(num_layers=2, hidden_dim=64, sequence_length=32)
student = ak.tiny.causal_lm(num_layers=1, hidden_dim=32, sequence_length=32)
rows = [{"prompts": f"Q: {i} + {i % 5} =", "responses": f" {i + i % 5}"} for i in range(12)]
distiller = ak.Distiller(teacher, student, max_new_tokens=8, seed=7)
distiller.compile(optimizer=keras.optimizers.AdamW(1e-2))


class Kill(keras.callbacks.Callback):
    steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


backup = keras.callbacks.BackupAndRestore(os.path.join(folder, "backup"))
history = distiller.fit(rows, batch_size=4, epochs=3, callbacks=[backup, Kill()], verbose=0)
np.savez(os.path.join(folder, "student.npz"), *student.get_weights())
print(json.dumps(history.history["loss"]))
"""


def run(folder, kill_after=0, init_seed=0):
    """One process of the script; `kill_after` steps (0: never); the models'
    initial weights drawn from `init_seed`."""
    os.makedirs(folder, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", RUN, str(folder), str(kill_after), str(init_seed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def losses(done):
    return json.loads(done.stdout.strip().splitlines()[-1])


def weights(folder):
    with np.load(os.path.join(folder, "student.npz")) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def test_killed_run_resumes_to_the_weights_of_an_unbroken_run(tmp_path):
    unbroken = run(tmp_path / "unbroken")
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    # 3 steps an epoch: killed in the middle of the second epoch, backed up after the first.
    killed = run(tmp_path / "resumed", kill_after=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert os.path.exists(tmp_path / "resumed" / "backup" / "latest.weights.h5")
    # The restarted process draws other initial weights: only the backup's
    # weights, optimizer state and rollout seed can make it end where the
    # unbroken run ends.
    resumed = run(tmp_path / "resumed", init_seed=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for a, b in zip(weights(tmp_path / "unbroken"), weights(tmp_path / "resumed")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The resumed run trained epochs 2 and 3 only; its last loss is the unbroken run's.
    assert len(losses(unbroken)) == 3 and len(losses(resumed)) == 2
    assert losses(resumed)[-1] == pytest.approx(losses(unbroken)[-1], rel=1e-6)


def test_weights_files_keep_the_rollout_seed(pair, packed_pairs, tmp_path):
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, max_new_tokens=MAX_NEW_TOKENS, seed=3)
    distiller(packed_pairs)  # builds it
    distiller.rollout(packed_pairs)  # advances the seed
    state = keras.ops.convert_to_numpy(distiller.seed_generator.state)
    distiller.save_weights(str(tmp_path / "distiller.weights.h5"))
    fresh = ak.Distiller(teacher, student, max_new_tokens=MAX_NEW_TOKENS, seed=3)
    fresh(packed_pairs)
    assert not np.array_equal(keras.ops.convert_to_numpy(fresh.seed_generator.state), state)
    fresh.load_weights(str(tmp_path / "distiller.weights.h5"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh.seed_generator.state), state)


def test_the_stream_starts_after_the_steps_already_taken(pair):
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, max_new_tokens=MAX_NEW_TOKENS, seed=5)
    stream, steps_per_pass = distiller.pipeline.training_stream(arithmetic_pairs(12), 4)
    assert steps_per_pass == 3
    from_start = [batch["token_ids"].numpy() for batch in stream.take(5)]
    distiller.pipeline.steps_taken = 2
    from_step_2 = [batch["token_ids"].numpy() for batch in stream.take(3)]
    for a, b in zip(from_start[2:], from_step_2):
        np.testing.assert_array_equal(a, b)
    # Each pass sees every row once, in a new order.
    first_pass, second_pass = np.concatenate(from_start[:3]), np.concatenate(from_start[3:5])
    assert len({row.tobytes() for row in first_pass}) == 12
    assert not np.array_equal(first_pass[:8], second_pass)


def test_mid_epoch_backups_are_refused(pair):
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, max_new_tokens=MAX_NEW_TOKENS)
    distiller.compile(optimizer="sgd")
    backup = keras.callbacks.BackupAndRestore("unused", save_freq=2)
    with pytest.raises(ValueError, match="save_freq='epoch'"):
        distiller.fit(arithmetic_pairs(4), callbacks=[backup])
