"""The mixed loss: (1 - w) divergence + w cross-entropy on the tokens the
student did not write, constant or scheduled, logged apart; and the
teacher's work per step, counted as the rollout does it."""

import keras
import numpy as np
import pytest
from keras import ops

import adaswitch_keras as ak
from conftest import MAX_NEW_TOKENS
from conftest import every_strategy
from test_distiller import np_forward_kl


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_the_mixed_loss_against_numpy(pair, batch):
    teacher, student = pair
    distiller = ak.Distiller(
        teacher,
        student,
        strategy=ak.AdaSwitch(window=2, k=1.2),
        max_new_tokens=MAX_NEW_TOKENS,
        seed=3,
        cross_entropy_weight=0.3,
    )
    rolled = {k: ops.convert_to_numpy(v) for k, v in distiller.rollout(batch).items()}
    assert rolled["student_token_mask"].any() and rolled["teacher_token_mask"].any()
    loss = float(ops.convert_to_numpy(distiller.compute_loss(rolled, y_pred=distiller(rolled))))
    inputs = {k: rolled[k] for k in ("token_ids", "padding_mask")}
    student_logits = ops.convert_to_numpy(student(inputs)).astype("float64")[:, :-1]
    teacher_logits = ops.convert_to_numpy(teacher(inputs)).astype("float64")[:, :-1]
    kl = np_forward_kl(teacher_logits, student_logits)
    targets = rolled["token_ids"][:, 1:, None]
    nll = -np.take_along_axis(log_softmax(student_logits), targets, -1)[..., 0]
    response = rolled["response_mask"][:, 1:]
    not_student = response & ~rolled["student_token_mask"][:, 1:]
    want = 0.7 * kl[response].mean() + 0.3 * nll[not_student].mean()
    assert loss == pytest.approx(want, rel=1e-4)


def test_a_scheduled_weight_follows_the_optimizers_step(pair, packed_pairs):
    """On every backend, JAX's stateless step included: the weight in effect
    is the schedule at the step, and it is logged apart from the divergence."""
    teacher, student = pair
    schedule = keras.optimizers.schedules.PolynomialDecay(0.8, decay_steps=3, end_learning_rate=0.2)
    distiller = ak.Distiller(
        teacher,
        student,
        strategy="supervised_kd",
        max_new_tokens=MAX_NEW_TOKENS,
        cross_entropy_weight=schedule,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    batch = {k: v[:4] for k, v in packed_pairs.items()}
    for step in range(4):
        logs = distiller.train_on_batch(batch, return_dict=True)
        weight = float(ops.convert_to_numpy(distiller.scheduled_weight))
        assert weight == pytest.approx(float(schedule(step)), rel=1e-6)
        mixed = (1 - weight) * logs["divergence"] + weight * logs["cross_entropy"]
        assert logs["loss"] == pytest.approx(mixed, rel=1e-4)


def test_bad_weights_are_clear_errors(pair):
    with pytest.raises(ValueError, match="cross_entropy_weight"):
        ak.Distiller(*pair, cross_entropy_weight=1.5, max_new_tokens=MAX_NEW_TOKENS)


@pytest.mark.parametrize("strategy", every_strategy(), ids=repr)
def test_the_teacher_work_is_what_the_teacher_did(pair, batch, strategy):
    """Counted against a spy on the teacher's cached calls (its cache's
    prefill, `_build_cache`, is one over all T columns) in an eager
    rollout (JAX with jit off runs its loops in Python)."""
    teacher, student = pair
    distiller = ak.Distiller(
        teacher, student, strategy=strategy, max_new_tokens=MAX_NEW_TOKENS, seed=2
    )
    calls = []
    original = teacher.call_with_cache

    def spy(token_ids, cache, index):
        calls.append(int(token_ids.shape[1]))
        return original(token_ids, cache, index)

    teacher.call_with_cache = spy
    try:
        if keras.config.backend() == "jax":
            import jax

            with jax.disable_jit():
                out = distiller.rollout(batch)
        else:
            out = distiller.rollout(batch)
    finally:
        del teacher.call_with_cache
    out = {k: ops.convert_to_numpy(v) for k, v in out.items()}
    length = batch["token_ids"].shape[1]
    decodes = "teacher" in strategy.decoders
    assert out["teacher_calls"][0] == len(calls)  # its cache's prefill is a call over all T
    assert out["teacher_prefilled"][0] == length * decodes == sum(calls[:1])
    assert out["teacher_scored"][0] + out["teacher_decoded"][0] == sum(calls[1:])
    for name in ("teacher_calls", "teacher_prefilled", "teacher_scored", "teacher_decoded"):
        assert (out[name] == out[name][0]).all()
