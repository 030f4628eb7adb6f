"""Pipeline.used_width: training batches cut to the columns they use."""

import keras
import numpy as np
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
