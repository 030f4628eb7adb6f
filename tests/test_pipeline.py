"""Pipeline.used_width: training batches cut to the columns they use."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import adaswitch_keras as ak
from conftest import arithmetic_pairs


class _Packer:
    max_new_tokens = 5


@st.composite
def packed_rows(draw):
    """[prompt] [response] [padding] rows, as the packer lays them out."""
    width = draw(st.integers(6, 140))
    lengths = []
    for _ in range(draw(st.integers(1, 5))):
        prompt = draw(st.integers(1, width - _Packer.max_new_tokens))
        lengths.append((prompt, draw(st.integers(0, width - prompt))))
    columns = np.arange(width)
    prompt = np.array([[p] for p, _ in lengths])
    end = np.array([[p + r] for p, r in lengths])
    return {"padding_mask": columns < end, "response_mask": (columns >= prompt) & (columns < end)}


@settings(max_examples=60, deadline=None)
@given(packed_rows())
def test_the_used_width_keeps_every_token_and_room_to_generate(rows):
    width = ak.pipeline.Pipeline(_Packer(), seed=0).used_width(rows)
    prompt = rows["padding_mask"] & ~rows["response_mask"]
    assert not rows["padding_mask"][:, width:].any()  # no token is cut
    assert prompt.sum(1).max() + _Packer.max_new_tokens <= width  # room for every rollout
    assert (
        width == rows["padding_mask"].sum(1).max()
        or width == prompt.sum(1).max() + _Packer.max_new_tokens
    )  # and no wider than one of the two needs


def test_fit_trains_on_batches_cut_to_the_used_width():
    """A preprocessor of 128 columns and short rows: the rollout sees only
    the used columns (its `teacher_prefilled` counts the batch's columns)."""
    keras.utils.set_random_seed(0)
    teacher = ak.tiny.causal_lm(num_layers=1, hidden_dim=16, sequence_length=128)
    student = ak.tiny.causal_lm(num_layers=1, hidden_dim=16, sequence_length=128)
    distiller = ak.Distiller(teacher, student, strategy="adaswitch", max_new_tokens=8, seed=0)
    distiller.compile(optimizer="sgd")
    packed = next(iter(distiller.make_dataset(arithmetic_pairs(8), batch_size=8)))
    assert packed["token_ids"].shape[1] == 128  # make_dataset itself does not cut
    width = distiller.pipeline.used_width(packed)
    assert width < 40
    history = distiller.fit(arithmetic_pairs(8), batch_size=4, epochs=1, verbose=0)
    assert history.history["teacher_prefilled"][-1] == 4 * width


def test_fit_and_steps_on_batches_of_several_widths():
    """One Distiller fitted on a list (cut to its used width), then on a
    `tf.data.Dataset` (the preprocessor's full width), then stepped on a
    batch of a third width: every width gets its own compiled step on every
    backend (TensorFlow's `reduce_retracing` alone would trace one of
    unknown width, which the rollout cannot run)."""
    keras.utils.set_random_seed(0)
    teacher = ak.tiny.causal_lm(num_layers=1, hidden_dim=16, sequence_length=64)
    student = ak.tiny.causal_lm(num_layers=1, hidden_dim=16, sequence_length=64)
    distiller = ak.Distiller(teacher, student, strategy="adaswitch", max_new_tokens=8, seed=0)
    distiller.compile(optimizer="sgd")
    pairs = arithmetic_pairs(8)
    as_list = distiller.fit(pairs, batch_size=4, epochs=1, verbose=0).history
    dataset = distiller.make_dataset(pairs, batch_size=4)
    as_dataset = distiller.fit(dataset, epochs=1, verbose=0).history
    batch = next(iter(dataset))
    narrower = {key: np.asarray(value)[:, :48] for key, value in batch.items()}
    logs = distiller.train_on_batch(narrower, return_dict=True)
    assert as_list["teacher_prefilled"][-1] == 4 * distiller.pipeline.used_width(batch)
    assert as_dataset["teacher_prefilled"][-1] == 4 * 64
    assert logs["teacher_prefilled"] == 4 * 48
    rollouts = distiller.predict(pairs, batch_size=4, verbose=0)
    assert rollouts["token_ids"].shape == (8, 64)
    assert np.isfinite([as_list["loss"][-1], as_dataset["loss"][-1], logs["loss"]]).all()


@pytest.mark.skipif(
    keras.config.backend() != "tensorflow", reason="JAX and torch trace each batch's width"
)
def test_a_batch_of_unknown_width_is_a_clear_error():
    spec = {
        key: tf.TensorSpec((None, None), "int32")
        for key in ("token_ids", "padding_mask", "response_mask")
    }
    with pytest.raises(ValueError, match="known width"):
        ak.pipeline.check_batch(spec)
