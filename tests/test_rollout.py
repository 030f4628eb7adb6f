"""The joint rollout: masks, sampling, and live decisions equal to the rules."""

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

import adaswitch_keras as ak
from adaswitch_keras.rollout import sample
from conftest import MAX_NEW_TOKENS


def run(pair, batch, strategy, seed=7, **kwargs):
    teacher, student = pair
    distiller = ak.Distiller(
        teacher, student, strategy=strategy, max_new_tokens=MAX_NEW_TOKENS, seed=seed, **kwargs
    )
    out = distiller.rollout({k: batch[k] for k in ("token_ids", "padding_mask", "response_mask")})
    return {k: ops.convert_to_numpy(v) for k, v in out.items()}


def prompt_mask(batch):
    return batch["padding_mask"] & ~batch["response_mask"]


SWITCHING = [ak.AdaSwitch(window=2, k=1.2), ak.SKD(top_k=60), ak.Switch(tau0=0.3, decay=0.05)]


@pytest.mark.parametrize("strategy", SWITCHING, ids=repr)
def test_live_decisions_equal_the_rule_on_the_recorded_trace(pair, batch, strategy):
    out = run(pair, batch, strategy)
    rule = ops.convert_to_numpy(strategy.teacher_writes(out["scores"], out["response_mask"]))
    np.testing.assert_array_equal(out["teacher_token_mask"], rule)
    teacher_tokens = out["teacher_token_mask"].sum()
    assert 0 < teacher_tokens < out["response_mask"].sum(), "rule never or always fired"
    if isinstance(strategy, ak.AdaSwitch):
        first = ops.convert_to_numpy(strategy.first_switch(out["scores"], out["response_mask"]))
        np.testing.assert_array_equal(out["switch_index"], first)


@pytest.mark.parametrize("strategy", SWITCHING + [ak.OnPolicy(), ak.SeqKD()], ids=repr)
def test_masks_describe_the_written_sequence(pair, batch, strategy):
    out = run(pair, batch, strategy)
    prompt = prompt_mask(batch)
    length = prompt.shape[1]
    np.testing.assert_array_equal(out["token_ids"][prompt], batch["token_ids"][prompt])
    np.testing.assert_array_equal(out["padding_mask"], prompt | out["response_mask"])
    assert not (out["teacher_token_mask"] & ~out["response_mask"]).any()
    assert not (out["scores"][~out["response_mask"]]).any()
    end_token = pair[1].preprocessor.tokenizer.end_token_id
    for row in range(len(prompt)):
        columns = np.flatnonzero(out["response_mask"][row])
        start = prompt[row].sum()
        assert columns[0] == start and np.array_equal(columns, np.arange(start, columns[-1] + 1))
        assert len(columns) <= MAX_NEW_TOKENS
        tokens = out["token_ids"][row, columns]
        ended = np.flatnonzero(tokens == end_token)
        if len(ended):  # the end token closes the response and stays in the loss
            assert ended[0] == len(columns) - 1
        else:
            assert len(columns) == MAX_NEW_TOKENS or columns[-1] == length - 1


def test_on_policy_writes_no_teacher_token_and_seqkd_only_teacher_tokens(pair, batch):
    on_policy = run(pair, batch, ak.OnPolicy())
    assert not on_policy["teacher_token_mask"].any()
    assert (on_policy["switch_index"] == batch["token_ids"].shape[1]).all()
    seqkd = run(pair, batch, ak.SeqKD())
    np.testing.assert_array_equal(seqkd["teacher_token_mask"], seqkd["response_mask"])


def test_skd_keeps_every_student_token_inside_the_teacher_top_k(pair, batch):
    top_k = 60
    out = run(pair, batch, ak.SKD(top_k=top_k))
    teacher, _ = pair
    logits = ops.convert_to_numpy(
        teacher({"token_ids": out["token_ids"], "padding_mask": out["padding_mask"]})
    )
    student_written = out["response_mask"] & ~out["teacher_token_mask"]
    assert student_written.any()
    for row, column in zip(*np.nonzero(student_written)):
        previous = logits[row, column - 1]
        rank = (previous > previous[out["token_ids"][row, column]]).sum()
        assert rank < top_k
        assert out["scores"][row, column] == rank
    # where the teacher wrote, the student's proposal was outside the top-K
    assert (out["scores"][out["teacher_token_mask"]] >= top_k).all()


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_greedy_rollout_equals_keras_hub_generate(pair, batch, who):
    teacher, student = pair
    model = {"student": student, "teacher": teacher}[who]
    strategy = ak.OnPolicy() if who == "student" else ak.SeqKD()
    out = run(pair, batch, strategy, student_sampler="greedy", teacher_sampler="greedy")
    prompt = prompt_mask(batch)
    lm = type(model)(backbone=model.backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    end_token = model.preprocessor.tokenizer.end_token_id
    generated = lm.generate(
        {"token_ids": np.where(prompt, batch["token_ids"], 0), "padding_mask": prompt},
        stop_token_ids=[end_token],
    )
    generated = ops.convert_to_numpy(generated["token_ids"])
    for row in range(len(prompt)):
        columns = np.flatnonzero(out["response_mask"][row])
        np.testing.assert_array_equal(out["token_ids"][row, columns], generated[row, columns])


def test_gkd_rows_keep_ground_truth_or_roll_out(pair, batch):
    truth = run(pair, batch, ak.GKD(lmbda=0.0))
    for key in ("token_ids", "response_mask", "padding_mask"):
        np.testing.assert_array_equal(truth[key], batch[key])
    rolled = run(pair, batch, ak.GKD(lmbda=1.0))
    same = (rolled["token_ids"] == batch["token_ids"]).all(axis=1)
    assert not same.all()


def test_same_seed_same_rollout_other_seed_other_rollout(pair, batch):
    a = run(pair, batch, ak.OnPolicy(), seed=3)
    b = run(pair, batch, ak.OnPolicy(), seed=3)
    c = run(pair, batch, ak.OnPolicy(), seed=4)
    np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
    assert not np.array_equal(a["token_ids"], c["token_ids"])


def _frequencies(sampler, logits, draws=20000):
    uniform = keras.random.uniform((draws,), seed=0)
    tokens = ops.convert_to_numpy(sample(sampler, np.repeat(logits[None], draws, 0), uniform))
    return np.bincount(tokens, minlength=len(logits)) / draws


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


LOGITS = np.log(np.array([0.05, 0.4, 0.1, 0.3, 0.15], "float32"))


def test_random_sampler_draws_the_distribution_with_temperature():
    for temperature in (1.0, 2.0):
        sampler = keras_hub.samplers.RandomSampler(temperature=temperature)
        np.testing.assert_allclose(
            _frequencies(sampler, LOGITS), _softmax(LOGITS / temperature), atol=0.015
        )


def test_top_k_and_top_p_samplers_truncate_like_keras_hub():
    top_k = _frequencies(keras_hub.samplers.TopKSampler(k=2), LOGITS)
    np.testing.assert_allclose(top_k, [0, 0.4 / 0.7, 0, 0.3 / 0.7, 0], atol=0.015)
    # p = 0.6: 0.4 alone stays under p, so 0.3 joins (KerasHub keeps the crossing token)
    top_p = _frequencies(keras_hub.samplers.TopPSampler(p=0.6), LOGITS)
    np.testing.assert_allclose(top_p, [0, 0.4 / 0.7, 0, 0.3 / 0.7, 0], atol=0.015)


def test_greedy_sampler_is_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 30)).astype("float32")
    got = sample(keras_hub.samplers.GreedySampler(), logits, np.zeros(16, "float32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(got), logits.argmax(-1))


def test_unsupported_sampler_is_a_clear_error(pair):
    with pytest.raises(ValueError, match="Unsupported sampler"):
        ak.Distiller(*pair, student_sampler="beam")
