"""A failed step never harms a model, and `train_on_batch` traces once.

On every backend: `fit` or `train_on_batch` on a bad batch gives the clear
error; afterwards both models generate, evaluate and train exactly as models
that never saw the bad batch. On JAX, Keras takes the variables out of the
models for its compiled steps, so this also holds when the first step itself
fails.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import adaswitch_keras as ak
from conftest import MAX_NEW_TOKENS
from conftest import SEQUENCE_LENGTH
from conftest import copy_weights


def make_pair(seed=0):
    keras.utils.set_random_seed(seed)
    teacher = ak.tiny.causal_lm(num_layers=2, hidden_dim=64, sequence_length=SEQUENCE_LENGTH)
    student = ak.tiny.causal_lm(num_layers=1, hidden_dim=32, sequence_length=SEQUENCE_LENGTH)
    return teacher, student


def make_distiller(teacher, student):
    distiller = ak.Distiller(
        teacher,
        student,
        strategy=ak.AdaSwitch(window=2, k=1.2),
        max_new_tokens=MAX_NEW_TOKENS,
        seed=5,
    )
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-2))
    return distiller


def bad_batches(good):
    """Every kind of bad batch `check_batch` names."""
    without = lambda key: {k: v for k, v in good.items() if k != key}  # noqa: E731
    return {
        "missing response_mask": (without("response_mask"), "Expected a packed batch"),
        "missing token_ids": (without("token_ids"), "Expected a packed batch"),
        "not a dict": (good["token_ids"], "Expected a packed batch"),
        "float token_ids": (
            {**good, "token_ids": good["token_ids"].astype("float32")},
            "must be integers",
        ),
        "float mask": (
            {**good, "padding_mask": good["padding_mask"].astype("float32")},
            "bool or integers",
        ),
        "string token_ids": (
            {**good, "token_ids": good["token_ids"].astype(str)},
            "must be integers",
        ),
        "ragged shapes": (
            {**good, "response_mask": good["response_mask"][:, :-1]},
            r"\[batch, length\] alike",
        ),
        "rank 1": ({k: v[0] for k, v in good.items()}, r"\[batch, length\] alike"),
        "empty batch": ({k: v[:0] for k, v in good.items()}, "batch is empty"),
    }


def outcome(teacher, student, distiller, good):
    """What the models do afterwards: greedy generations, evaluation on the
    ground truth, and the student's weights after two good steps."""
    prompts = ["Q: 1 + 2 =", "Q: 12 + 3 ="]
    generations = {}
    for name, model in (("teacher", teacher), ("student", student)):
        model.compile(sampler="greedy")
        generations[name] = model.generate(prompts, max_length=20)
    evaluation = distiller.evaluate(tf.data.Dataset.from_tensor_slices(good).batch(4), verbose=0)
    distiller.fit(tf.data.Dataset.from_tensor_slices(good).batch(4), epochs=1, verbose=0)
    return generations, evaluation, copy_weights(student)


@pytest.fixture(scope="module")
def good_batch():
    teacher, student = make_pair()
    rows = [{"prompts": f"Q: {i} + {i % 5} =", "responses": f" {i + i % 5}"} for i in range(8)]
    data = make_distiller(teacher, student).make_dataset(rows, batch_size=8)
    return {k: np.asarray(v) for k, v in next(iter(data)).items()}


@pytest.fixture(scope="module")
def untouched(good_batch):
    """The outcome for models that never saw a bad batch."""
    teacher, student = make_pair()
    return outcome(teacher, student, make_distiller(teacher, student), good_batch)


def assert_same_outcome(got, expected):
    for name in ("teacher", "student"):
        assert got[0][name] == expected[0][name], name
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5)
    for a, b in zip(got[2], expected[2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_batches_are_clear_errors_and_leave_the_models_intact(good_batch, untouched):
    teacher, student = make_pair()
    distiller = make_distiller(teacher, student)
    weights = copy_weights(teacher) + copy_weights(student)
    for kind, (bad, message) in bad_batches(good_batch).items():
        with pytest.raises(ValueError, match=message):
            distiller.train_on_batch(bad)
        if isinstance(bad, dict) and kind not in ("rank 1", "empty batch"):
            # As a dataset, a bad batch fails before fit starts, too.
            with pytest.raises(ValueError, match=message):
                distiller.fit(tf.data.Dataset.from_tensor_slices(bad).batch(4), verbose=0)
    with pytest.raises(ValueError, match="no targets"):
        distiller.train_on_batch(good_batch, good_batch["token_ids"])
    for before, after in zip(weights, copy_weights(teacher) + copy_weights(student)):
        np.testing.assert_array_equal(before, after)
    assert_same_outcome(outcome(teacher, student, distiller, good_batch), untouched)


def test_a_first_step_that_fails_inside_fit_leaves_the_models_intact(
    good_batch, untouched, monkeypatch
):
    """The error rises inside Keras' compiled step (on JAX, after Keras took
    the variables out of the models): the models keep their weights."""
    teacher, student = make_pair()
    distiller = make_distiller(teacher, student)

    def broken_rollout(*args, **kwargs):
        raise RuntimeError("the rollout failed")

    monkeypatch.setattr(distiller, "rollout", broken_rollout)
    data = tf.data.Dataset.from_tensor_slices(good_batch).batch(4)
    for call in (
        lambda: distiller.fit(data, verbose=0),
        lambda: distiller.train_on_batch(good_batch),
    ):
        with pytest.raises(RuntimeError, match="the rollout failed"):
            call()
    monkeypatch.undo()
    assert_same_outcome(outcome(teacher, student, distiller, good_batch), untouched)


@pytest.mark.skipif(
    keras.config.backend() == "torch", reason="PyTorch steps run eagerly: nothing is traced"
)
def test_train_on_batch_traces_the_step_once(good_batch):
    traces = {"train_step": 0, "call": 0}

    class Counting(ak.Distiller):
        def train_step(self, *args):
            traces["train_step"] += 1  # Python runs only while tracing
            return super().train_step(*args)

        def call(self, *args, **kwargs):
            traces["call"] += 1
            return super().call(*args, **kwargs)

    teacher, student = make_pair()
    distiller = Counting(teacher, student, max_new_tokens=MAX_NEW_TOKENS, seed=5)
    distiller.compile(optimizer="adam")
    for _ in range(4):
        distiller.train_on_batch(good_batch)
    assert traces == {"train_step": 1, "call": 1}
    assert int(ops.convert_to_numpy(distiller.optimizer.iterations)) == 4
