"""An offline teacher: the sparse top-k divergence against NumPy, the cache's
contents, and a Distiller with no teacher that trains as one with it."""

import json

import keras
import numpy as np
import pytest
from keras import ops

import adaswitch_keras as ak
from adaswitch_keras import divergences
from conftest import MAX_NEW_TOKENS
from conftest import SEQUENCE_LENGTH
from conftest import arithmetic_pairs
from conftest import copy_weights


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_buckets(log_p, ids):
    """The teacher's top-k tokens and one tail bucket, in NumPy (float64)."""
    top = np.take_along_axis(log_p, ids, axis=-1)
    tail = np.log(np.maximum(1.0 - np.exp(top).sum(-1, keepdims=True), 1e-30))
    return np.concatenate([top, tail], axis=-1)


def np_divergence(kind, log_p, log_q):
    p, q = np.exp(log_p), np.exp(log_q)
    if kind == "forward_kl":
        return (p * (log_p - log_q)).sum(-1)
    if kind == "reverse_kl":
        return (q * (log_q - log_p)).sum(-1)
    if kind == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    m = 0.5 * (p + q)  # jsd, beta = 0.5
    return 0.5 * (p * (log_p - np.log(m))).sum(-1) + 0.5 * (q * (log_q - np.log(m))).sum(-1)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("k", [3, 17, 40])
def test_top_k_divergence_equals_numpy_and_the_full_one_at_k_equal_v(kind, k):
    rng = np.random.default_rng(0)
    vocabulary = 40
    teacher, student = rng.normal(0, 3, (2, 6, vocabulary)), rng.normal(0, 3, (2, 6, vocabulary))
    log_p, log_q = log_softmax(teacher), log_softmax(student)
    ids = np.argsort(-log_p, axis=-1)[..., :k]
    got = ops.convert_to_numpy(
        divergences.top_k_divergence(
            np.take_along_axis(log_p, ids, -1).astype("float32"),
            ids,
            student.astype("float32"),
            kind,
        )
    )
    want = np_divergence(kind, np_buckets(log_p, ids), np_buckets(log_q, ids))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    if k == vocabulary:
        full = divergences.token_divergence(
            teacher.astype("float32"), student.astype("float32"), kind
        )
        np.testing.assert_allclose(got, ops.convert_to_numpy(full), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got, np_divergence(kind, log_p, log_q), rtol=2e-4, atol=2e-5)


def test_the_cache_holds_the_teachers_top_k_at_every_response_token(pair, tmp_path):
    teacher, _ = pair
    rows = arithmetic_pairs(6)
    path = tmp_path / "teacher.npz"
    size = ak.teacher_cache.write(
        teacher, rows, path, top_k=5, max_new_tokens=MAX_NEW_TOKENS, verbose=0
    )
    stored = ak.teacher_cache.read(path)
    assert stored["meta"]["top_k"] == 5 and size == path.stat().st_size
    longest = stored["response_mask"].sum(1).max()
    assert stored["top_k_ids"].shape == (6, longest, 5)
    assert stored["top_k_log_probs"].dtype == np.float16
    batch = next(iter(ak.teacher_cache.dataset(path, batch_size=6)))
    logits = ops.convert_to_numpy(
        teacher({k: np.asarray(batch[k]) for k in ("token_ids", "padding_mask")})
    )
    log_p = log_softmax(
        logits.astype("float64")[..., : teacher.preprocessor.tokenizer.vocabulary_size()]
    )
    response = np.asarray(batch["response_mask"])
    ids, values = (np.asarray(batch[key]) for key in divergences.TOP_K_KEYS)
    for row, column in zip(*np.nonzero(response)):  # column c: predicted at c - 1
        want = np.argsort(-log_p[row, column - 1])[:5]
        np.testing.assert_array_equal(np.sort(ids[row, column]), np.sort(want))
        want = log_p[row, column - 1, ids[row, column]]
        np.testing.assert_allclose(values[row, column], want, rtol=1e-3, atol=1e-4)  # float16
    assert not ids[~response].any() and not values[~response].any()
    assert json.dumps(stored["meta"])  # plain JSON


def test_a_distiller_without_a_teacher_trains_as_one_with_it(pair, tmp_path):
    """With k = V and float32 log-probabilities the cache holds the whole
    distribution: the loss and the step equal SupervisedKD's with the teacher."""
    teacher, student = pair
    vocabulary = teacher.preprocessor.tokenizer.vocabulary_size()
    path = tmp_path / "teacher.npz"
    rows = arithmetic_pairs(8)
    ak.teacher_cache.write(
        teacher,
        rows,
        path,
        top_k=vocabulary,
        max_new_tokens=MAX_NEW_TOKENS,
        dtype="float32",
        verbose=0,
    )
    batch = {k: np.asarray(v) for k, v in next(iter(ak.teacher_cache.dataset(path, 8))).items()}
    results = {}
    for name, model in (("online", teacher), ("offline", None)):
        keras.utils.set_random_seed(0)
        fresh = ak.tiny.causal_lm(num_layers=1, hidden_dim=32, sequence_length=SEQUENCE_LENGTH)
        fresh.set_weights(student.get_weights())
        distiller = ak.Distiller(
            model, fresh, strategy="supervised_kd", max_new_tokens=MAX_NEW_TOKENS
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.5))
        logs = distiller.train_on_batch(batch, return_dict=True)
        results[name] = logs["loss"], copy_weights(fresh)
    assert results["offline"][0] == pytest.approx(results["online"][0], rel=1e-4)
    for a, b in zip(results["offline"][1], results["online"][1]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_an_offline_teacher_serves_only_ground_truth_strategies(pair):
    _, student = pair
    with pytest.raises(ValueError, match="needs a teacher model"):
        ak.Distiller(None, student, strategy="adaswitch", max_new_tokens=MAX_NEW_TOKENS)
    with pytest.raises(ValueError, match="temperature-1"):
        ak.Distiller(
            None, student, strategy="supervised_kd", temperature=2.0, max_new_tokens=MAX_NEW_TOKENS
        )
    distiller = ak.Distiller(None, student, strategy="supervised_kd", max_new_tokens=MAX_NEW_TOKENS)
    packed = next(iter(distiller.make_dataset(arithmetic_pairs(4), batch_size=4)))
    with pytest.raises(ValueError, match="train on `teacher_cache.dataset"):
        distiller({k: np.asarray(v) for k, v in packed.items()})
