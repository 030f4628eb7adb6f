"""Distiller: the loss against NumPy, fit() per strategy, metrics, bad input."""

import keras
import numpy as np
import pytest
from keras import ops

import adaswitch_keras as ak
from conftest import MAX_NEW_TOKENS
from conftest import SEQUENCE_LENGTH
from conftest import arithmetic_pairs
from conftest import copy_weights
from conftest import every_strategy


def fresh_student(pair):
    _, student = pair
    clone = ak.tiny.causal_lm(num_layers=1, hidden_dim=32, sequence_length=SEQUENCE_LENGTH)
    clone.set_weights(student.get_weights())
    return clone


def np_forward_kl(teacher_logits, student_logits):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    log_p, log_q = log_softmax(teacher_logits), log_softmax(student_logits)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def test_loss_is_the_masked_mean_over_response_tokens(pair, batch):
    """TRL #4105: the mean over response tokens, not over T*V."""
    teacher, student = pair
    distiller = ak.Distiller(
        teacher, student, strategy="supervised_kd", max_new_tokens=MAX_NEW_TOKENS
    )
    loss = distiller.compute_loss(batch, y_pred=distiller(batch))
    inputs = {k: batch[k] for k in ("token_ids", "padding_mask")}
    kl = np_forward_kl(
        ops.convert_to_numpy(teacher(inputs)).astype("float64")[:, :-1],
        ops.convert_to_numpy(student(inputs)).astype("float64")[:, :-1],
    )
    mask = batch["response_mask"][:, 1:]  # logits at t predict token t + 1
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), kl[mask].mean(), rtol=1e-4)


def test_response_mask_keeps_the_end_token_and_drops_the_prompt(pair, batch):
    """TRL #6357 and #2058: EOS stays in the loss, prompt tokens never are."""
    end_token = pair[1].preprocessor.tokenizer.end_token_id
    for row in range(len(batch["token_ids"])):
        columns = np.flatnonzero(batch["response_mask"][row])
        assert batch["token_ids"][row, columns[-1]] == end_token
        prompt = batch["padding_mask"][row] & ~batch["response_mask"][row]
        assert np.flatnonzero(prompt).max() == columns[0] - 1


def test_sft_loss_is_cross_entropy_of_the_response(pair, batch):
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, strategy="sft", max_new_tokens=MAX_NEW_TOKENS)
    loss = float(ops.convert_to_numpy(distiller.compute_loss(batch, y_pred=distiller(batch))))
    logits = ops.convert_to_numpy(student({k: batch[k] for k in ("token_ids", "padding_mask")}))
    logits = logits.astype("float64")[:, :-1]
    log_probs = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    targets = batch["token_ids"][:, 1:]
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, nll[batch["response_mask"][:, 1:]].mean(), rtol=1e-4)


def test_seqkd_loss_is_cross_entropy_on_the_teachers_tokens(pair, batch):
    """Kim and Rush's SeqKD: the teacher writes every response token and the
    loss is the student's cross-entropy on them (a NumPy reference)."""
    teacher, student = pair
    distiller = ak.Distiller(
        teacher, student, strategy="seqkd", max_new_tokens=MAX_NEW_TOKENS, seed=0
    )
    written = {k: ops.convert_to_numpy(v) for k, v in distiller.rollout(batch).items()}
    response = written["response_mask"].astype(bool)
    np.testing.assert_array_equal(written["teacher_token_mask"].astype(bool), response)
    loss = float(ops.convert_to_numpy(distiller.compute_loss(written, y_pred=distiller(written))))
    logits = ops.convert_to_numpy(student({k: written[k] for k in ("token_ids", "padding_mask")}))
    logits = logits.astype("float64")[:, :-1]
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, written["token_ids"][:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(loss, nll[response[:, 1:]].mean(), rtol=1e-4)


def ground_truth_divergence(distiller, packed):
    return float(
        ops.convert_to_numpy(distiller(packed)["divergence"])[packed["response_mask"][:, 1:]].mean()
    )


@pytest.mark.parametrize("strategy", every_strategy(), ids=repr)
def test_fit_trains_the_student_and_never_updates_the_teacher(pair, packed_pairs, strategy):
    """Every registered strategy: a divergence loss lowers the student's
    divergence to the teacher on the ground truth; a cross-entropy loss
    (SFT, SeqKD) falls."""
    teacher, _ = pair
    student = fresh_student(pair)
    distiller = ak.Distiller(
        teacher, student, strategy=strategy, max_new_tokens=MAX_NEW_TOKENS, seed=0
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    teacher_before, student_before = copy_weights(teacher), copy_weights(student)
    before = ground_truth_divergence(distiller, packed_pairs)
    history = distiller.fit(packed_pairs, batch_size=8, epochs=3, verbose=0)
    if strategy.loss == "divergence":
        after = ground_truth_divergence(distiller, packed_pairs)
        assert after < 0.9 * before, (before, after)
    else:
        assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]
    for old, new in zip(teacher_before, copy_weights(teacher)):
        np.testing.assert_array_equal(old, new)
    assert any(not np.array_equal(a, b) for a, b in zip(student_before, copy_weights(student)))
    expected = {"loss", "divergence", "switch_rate", "teacher_token_fraction", "switch_position"}
    assert expected <= set(history.history)
    assert all(np.isfinite(v).all() for v in history.history.values())


def test_evaluate_reports_the_divergence_on_ground_truth(pair, packed_pairs):
    distiller = ak.Distiller(*pair, strategy="on_policy", max_new_tokens=MAX_NEW_TOKENS)
    distiller.compile(optimizer="adam")
    logs = distiller.evaluate(arithmetic_pairs(16), batch_size=16, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "divergence", "cross_entropy"}
    assert logs["divergence"] == pytest.approx(
        ground_truth_divergence(distiller, packed_pairs), rel=1e-4
    )


def test_sft_fit_lowers_cross_entropy(pair, packed_pairs):
    teacher, _ = pair
    distiller = ak.Distiller(
        teacher, fresh_student(pair), strategy="sft", max_new_tokens=MAX_NEW_TOKENS
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = distiller.fit(packed_pairs, batch_size=8, epochs=3, verbose=0)
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]


def test_rollout_metrics_follow_the_strategy(pair, packed_pairs):
    teacher, _ = pair
    logs = {}
    for strategy in (ak.OnPolicy(), ak.SeqKD()):
        distiller = ak.Distiller(
            teacher, fresh_student(pair), strategy=strategy, max_new_tokens=MAX_NEW_TOKENS
        )
        distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
        logs[repr(strategy)] = distiller.fit(packed_pairs, batch_size=16, verbose=0).history
    assert logs["OnPolicy()"]["switch_rate"] == [0.0]
    assert logs["OnPolicy()"]["teacher_token_fraction"] == [0.0]
    assert logs["SeqKD()"]["switch_rate"] == [1.0]
    assert logs["SeqKD()"]["teacher_token_fraction"] == [1.0]
    assert logs["SeqKD()"]["switch_position"] == [0.0]


def test_predict_returns_the_compiled_rollouts(pair, packed_pairs):
    teacher, student = pair
    make = lambda: ak.Distiller(  # noqa: E731
        teacher,
        student,
        strategy=ak.AdaSwitch(window=2, k=1.5),
        max_new_tokens=MAX_NEW_TOKENS,
        seed=3,
    )
    batch = keras.tree.map_structure(keras.ops.convert_to_tensor, packed_pairs)
    eager = {k: keras.ops.convert_to_numpy(v) for k, v in make().rollout(batch).items()}
    distiller = make()
    compiled = distiller.predict(packed_pairs, batch_size=16, verbose=0)
    assert sorted(compiled) == sorted(eager)
    for key in ("token_ids", "response_mask", "teacher_token_mask", "switch_index"):
        np.testing.assert_array_equal(compiled[key], eager[key], err_msg=key)
    np.testing.assert_allclose(compiled["scores"], eager["scores"], atol=1e-4)
    assert compiled["teacher_token_mask"].any()  # the rule did switch somewhere
    again = distiller.predict(packed_pairs, batch_size=16, verbose=0)  # the seed moved on
    assert not np.array_equal(again["token_ids"], compiled["token_ids"])


def test_mismatched_tokenizers_are_a_clear_error(pair):
    """TRL #6252: different vocabularies are an error, never a silent slice."""
    teacher, _ = pair
    gemma = ak.tiny.causal_lm("gemma", sequence_length=SEQUENCE_LENGTH)
    with pytest.raises(ValueError, match="the teacher's has 265 tokens, the student's 320"):
        ak.Distiller(teacher, gemma)
    vocabulary = teacher.preprocessor.tokenizer.get_vocabulary()
    swapped = dict(zip(vocabulary, range(len(vocabulary))))
    swapped["a"], swapped["b"] = swapped["b"], swapped["a"]
    tokenizer = type(teacher.preprocessor.tokenizer)(vocabulary=swapped, merges=ak.tiny._MERGES)
    other = ak.tiny.causal_lm(tokenizer=tokenizer, sequence_length=SEQUENCE_LENGTH)
    with pytest.raises(ValueError, match="different vocabularies"):
        ak.Distiller(teacher, other)


def test_bad_input_is_a_clear_error(pair):
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, strategy="sft", max_new_tokens=MAX_NEW_TOKENS)
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match="Prompt 1 has .* tokens"):
        distiller.fit(
            [{"prompts": "ok", "responses": "x"}, {"prompts": "x" * 40, "responses": "y"}]
        )
    with pytest.raises(ValueError, match="empty"):
        distiller.fit([])
    with pytest.raises(ValueError, match='no "responses"'):
        distiller.fit([{"prompts": "Q: 1 + 1 ="}])
    with pytest.raises(ValueError, match="Expected a tf.data.Dataset"):
        distiller.fit("Q: 1 + 1 =")
    with pytest.raises(ValueError, match="CausalLM"):
        ak.Distiller(teacher.backbone, student)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ak.Distiller(teacher, student, max_new_tokens=SEQUENCE_LENGTH)


def test_prompt_only_data_is_enough_for_on_policy(pair):
    teacher, _ = pair
    distiller = ak.Distiller(
        teacher, fresh_student(pair), strategy="on_policy", max_new_tokens=MAX_NEW_TOKENS
    )
    distiller.compile(optimizer="adam")
    history = distiller.fit(
        [{"prompts": f"Q: {i} + 1 ="} for i in range(8)], batch_size=4, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


def test_long_prompt_in_a_tf_dataset_fails_with_the_message(pair):
    import tensorflow as tf

    teacher, student = pair
    distiller = ak.Distiller(teacher, student, strategy="sft", max_new_tokens=MAX_NEW_TOKENS)
    data = tf.data.Dataset.from_tensor_slices({"prompts": ["x" * 40], "responses": ["y"]})
    with pytest.raises(Exception, match="longer than sequence_length - max_new_tokens"):
        next(iter(distiller.make_dataset(data)))


def test_padded_embedding_tables_are_sliced_to_the_tokenizer(pair):
    """TRL #6252: teacher 265 + 7 rows, student 265 + 3 over one tokenizer:
    logits are compared on the tokenizer's 265."""
    teacher, _ = pair
    tokenizer = teacher.preprocessor.tokenizer
    size = tokenizer.vocabulary_size()
    keras.utils.set_random_seed(2)
    big = ak.tiny.causal_lm(
        tokenizer=tokenizer, vocabulary_size=size + 7, sequence_length=SEQUENCE_LENGTH
    )
    small = ak.tiny.causal_lm(
        tokenizer=tokenizer, vocabulary_size=size + 3, num_layers=1, sequence_length=SEQUENCE_LENGTH
    )
    distiller = ak.Distiller(
        big, small, strategy=ak.AdaSwitch(window=2, k=1.2), max_new_tokens=MAX_NEW_TOKENS, seed=0
    )
    assert distiller.vocabulary_size == size
    packed = next(iter(distiller.make_dataset(arithmetic_pairs(8), batch_size=8)))
    packed = {k: np.asarray(v) for k, v in packed.items()}
    loss = float(ops.convert_to_numpy(distiller.compute_loss(packed, y_pred=distiller(packed))))
    inputs = {k: packed[k] for k in ("token_ids", "padding_mask")}
    kl = np_forward_kl(
        ops.convert_to_numpy(big(inputs)).astype("float64")[:, :-1, :size],
        ops.convert_to_numpy(small(inputs)).astype("float64")[:, :-1, :size],
    )
    np.testing.assert_allclose(loss, kl[packed["response_mask"][:, 1:]].mean(), rtol=1e-4)
    out = distiller.rollout(packed)
    assert ops.convert_to_numpy(out["token_ids"]).max() < size


@pytest.mark.parametrize(
    "strategy", [ak.AdaSwitch(window=2, k=1.2), ak.SeqKDDivergence()], ids=repr
)
def test_a_step_on_the_rollout_teacher_logits_equals_one_with_a_teacher_forward(
    pair, batch, strategy
):
    teacher, _ = pair
    steps = {}
    for reuse in (True, False):
        student = fresh_student(pair)
        distiller = ak.Distiller(
            teacher,
            student,
            strategy=strategy,
            max_new_tokens=MAX_NEW_TOKENS,
            seed=3,
            reuse_teacher_logits=reuse,
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.5))
        logs = distiller.train_on_batch(batch, return_dict=True)
        steps[reuse] = logs["loss"], copy_weights(student)
    np.testing.assert_allclose(steps[True][0], steps[False][0], rtol=1e-4)
    for kept, recomputed in zip(steps[True][1], steps[False][1]):
        np.testing.assert_allclose(kept, recomputed, atol=1e-5)
    assert not all(np.array_equal(a, b) for a, b in zip(steps[True][1], copy_weights(pair[1])))
