"""An offline teacher: the sparse top-k divergence against NumPy, the cache's
contents, and a Distiller with no teacher that trains as one with it."""

import json
import re
import zipfile

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

import adaswitch_keras as ak
from adaswitch_keras import divergences
from adaswitch_keras import teacher_cache
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


def _valid_cache(path, rows=3, length=10, longest=4, top_k=3, vocabulary=20):
    """A small cache file as `write` lays it out, made with NumPy alone."""
    rng = np.random.default_rng(0)
    response = np.zeros((rows, length), bool)
    for row, size in enumerate([4, 2, 3][:rows]):
        response[row, 3 : 3 + size] = True
    meta = {
        "top_k": top_k,
        "vocabulary_size": vocabulary,
        "max_new_tokens": 6,
        "longest_response": longest,
        "dtype": "float16",
    }
    arrays = {
        "token_ids": rng.integers(0, vocabulary, (rows, length)).astype("int32"),
        "padding_mask": np.ones((rows, length), bool),
        "response_mask": response,
        "top_k_ids": rng.integers(0, vocabulary, (rows, longest, top_k)).astype("int32"),
        "top_k_log_probs": -rng.random((rows, longest, top_k)).astype("float16"),
    }
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return path


def _refused_in_one_line(path):
    """`read` and `meta` return or raise a one-line ValueError naming `path`."""
    for reader in (teacher_cache.read, teacher_cache.meta):
        try:
            reader(path)
        except ValueError as error:
            message = str(error)
            assert str(path) in message and "\n" not in message, message
            return True
    return False


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(["truncate", "overwrite"]),
    where=st.floats(0.0, 1.0),
    patch=st.binary(min_size=1, max_size=8),
)
def test_a_corrupted_cache_is_read_or_refused_in_one_line(tmp_path_factory, kind, where, patch):
    path = _valid_cache(tmp_path_factory.mktemp("cache") / "t.npz")
    content = path.read_bytes()
    at = int(where * len(content))
    path.write_bytes(
        content[:at] if kind == "truncate" else content[:at] + patch + content[at + len(patch) :]
    )
    _refused_in_one_line(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("top_k_ids"), "not the arrays"),
        (lambda a: a.update(token_ids=a["token_ids"].astype("float32")), "token_ids is float32"),
        (lambda a: a.update(top_k_ids=a["top_k_ids"] + 100), "ids outside [0, 20)"),
        (lambda a: a.update(padding_mask=a["padding_mask"][:, :5]), "padding_mask has shape"),
        (lambda a: a.update(meta=np.array("{}")), "meta lacks one of"),
        (lambda a: a.update(meta=np.array("not json")), "Expecting value"),
        (lambda a: a.update(response_mask=np.ones((3, 10), bool)), "longer than meta's"),
        (lambda a: a.update(extra=np.zeros(2)), "not the arrays"),
    ],
)
def test_a_malformed_cache_is_refused_in_one_line(tmp_path, change, message):
    path = _valid_cache(tmp_path / "t.npz")
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=re.escape(message)):
        teacher_cache.read(path)
    assert _refused_in_one_line(path)


def test_a_header_that_declares_more_than_the_file_is_refused_before_allocating(tmp_path):
    """A NumPy header may declare any shape, and NumPy allocates it whole
    before reading: a member whose header declares more than it holds (its
    CRC made right, so that zipfile cannot catch it) is refused first."""
    path = _valid_cache(tmp_path / "t.npz")
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    declared = b"'shape': (3, 4, 3)"
    huge = b"'shape': (3,4,999)"  # the same length: the header's size stays
    assert declared in members["top_k_ids.npy"] and len(huge) == len(declared)
    members["top_k_ids.npy"] = members["top_k_ids.npy"].replace(declared, huge)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match=r"top_k_ids declares shape \(3, 4, 999\)"):
        teacher_cache.read(path)
    assert _refused_in_one_line(path)
    assert teacher_cache.read(_valid_cache(tmp_path / "ok.npz"))["meta"]["top_k"] == 3
