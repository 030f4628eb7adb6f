"""`loss_chunk_size`: the same loss and gradients as the plain path."""

import keras
import numpy as np
import pytest

import adaswitch_keras as ak
from conftest import MAX_NEW_TOKENS
from conftest import copy_weights
from test_distiller import fresh_student


def one_step(pair, batch, strategy, divergence, chunk):
    """Loss and weight change of one SGD(1) step: minus the gradients."""
    teacher, _ = pair
    student = fresh_student(pair)
    before = copy_weights(student)
    distiller = ak.Distiller(
        teacher,
        student,
        strategy=strategy,
        divergence=divergence,
        max_new_tokens=MAX_NEW_TOKENS,
        seed=3,
        loss_chunk_size=chunk,
        cross_entropy_weight=0.0 if strategy == "sft" else 0.3,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(1.0))
    logs = distiller.train_on_batch(batch, return_dict=True)
    return logs, [after - old for old, after in zip(before, copy_weights(student))]


@pytest.mark.parametrize(
    "strategy, divergence",
    [("supervised_kd", "forward_kl"), ("adaswitch", "forward_kl"), ("on_policy", "jsd")],
)
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_loss_and_gradients_equal_the_plain_path(pair, batch, strategy, divergence, chunk):
    """Chunks of 1, of 7 (the last one shorter) and one wider than the batch;
    the rollout keeps the teacher's logits on the plain path, the chunked one
    recomputes them from the teacher's hidden states."""
    plain, plain_update = one_step(pair, batch, strategy, divergence, None)
    chunked, chunked_update = one_step(pair, batch, strategy, divergence, chunk)
    for key in ("loss", "divergence", "cross_entropy", "switch_rate"):
        np.testing.assert_allclose(chunked[key], plain[key], rtol=1e-5)
    assert any(np.abs(update).max() > 1e-3 for update in plain_update)
    for a, b in zip(chunked_update, plain_update):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_chunked_distiller_never_keeps_full_teacher_logits(pair):
    distiller = ak.Distiller(*pair, loss_chunk_size=8, max_new_tokens=MAX_NEW_TOKENS)
    assert distiller.reuse_teacher_logits is False


@pytest.mark.parametrize("bad", [0, -4, 2.5, "64"])
def test_bad_chunk_size_is_a_clear_error(pair, bad):
    with pytest.raises(ValueError, match="loss_chunk_size"):
        ak.Distiller(*pair, loss_chunk_size=bad, max_new_tokens=MAX_NEW_TOKENS)


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_head_equals_the_reverse_embedding(tied):
    """`output_matrix` and `logits` give the backbone's own head, with tied
    and with separate output embeddings (`reverse_embeddings`)."""
    import keras_hub
    from keras import ops

    backbone = keras_hub.models.QwenBackbone(
        vocabulary_size=40, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=8, intermediate_dim=16, tie_word_embeddings=tied,
    )  # fmt: skip
    embedding = backbone.token_embedding
    if not tied:  # random, so that a tied reading would differ
        embedding.reverse_embeddings.assign(
            keras.random.normal(embedding.reverse_embeddings.shape, seed=1)
        )
    hidden = keras.random.normal((2, 3, 8), seed=0)
    model = type("Model", (), {"backbone": backbone})
    want = ops.convert_to_numpy(embedding(hidden, reverse=True))
    got = ops.convert_to_numpy(ak.chunked_loss.logits(hidden, ak.chunked_loss.output_matrix(model)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
