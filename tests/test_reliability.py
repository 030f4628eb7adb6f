"""Reliability: bad input is a clear error, a non-finite loss stops training
with the weights intact, TRL's GKD regressions, mixed precision."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import adaswitch_keras as ak
from conftest import MAX_NEW_TOKENS
from conftest import SEQUENCE_LENGTH
from conftest import arithmetic_pairs
from conftest import copy_weights
from conftest import sharpen
from test_distiller import np_forward_kl
from test_divergences import reference


def dataset(rows):
    """Rows as a `tf.data.Dataset`, which `fit` takes in order."""
    return tf.data.Dataset.from_tensor_slices({k: [row[k] for row in rows] for k in rows[0]})


# -- 1. bad input: a ValueError that says what is wrong, before any step -------


def test_empty_data_is_a_clear_error(pair, packed_pairs):
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, strategy="sft", max_new_tokens=MAX_NEW_TOKENS)
    distiller.compile(optimizer="adam")
    filtered = dataset(arithmetic_pairs(2)).filter(lambda row: False)  # cardinality unknown
    empty_packed = {key: value[:0] for key, value in packed_pairs.items()}
    for data in ({"prompts": [], "responses": []}, filtered, empty_packed):
        with pytest.raises(ValueError, match="dataset is empty"):
            distiller.fit(data, verbose=0)


def packed_with(packed_pairs, row, **masks):
    data = {key: value.copy() for key, value in packed_pairs.items()}
    for key, value in masks.items():
        data[key][row] = value
    return data


def test_packed_rows_the_loss_cannot_use_are_clear_errors(pair, packed_pairs):
    """All-padding rows, rows without a response, long prompts or masks out of
    order would train on nothing or roll out from nothing: the error names the
    row, and the student is untouched."""
    teacher, student = pair
    distiller = ak.Distiller(
        teacher, student, strategy="supervised_kd", max_new_tokens=MAX_NEW_TOKENS
    )
    distiller.compile(optimizer="adam")
    before = copy_weights(student)
    cases = {
        "Packed row 2 has 0 prompt tokens": packed_with(
            packed_pairs, 2, padding_mask=False, response_mask=False
        ),
        "Packed row 2 has no response token": packed_with(packed_pairs, 2, response_mask=False),
        "Packed row 2 is not \\[prompt\\] \\[response\\] \\[padding\\]": packed_with(
            packed_pairs, 2, response_mask=np.roll(packed_pairs["response_mask"][2], 1)
        ),
        f"Packed row 2 has {SEQUENCE_LENGTH} prompt tokens .* = {SEQUENCE_LENGTH - MAX_NEW_TOKENS}": (
            packed_with(packed_pairs, 2, padding_mask=True, response_mask=False)
        ),
    }
    for match, data in cases.items():
        with pytest.raises(ValueError, match=match):
            distiller.fit(data, verbose=0)
    for old, new in zip(before, copy_weights(student)):
        np.testing.assert_array_equal(old, new)
    # Prompt-only packed rows are fine where no ground truth is trained on.
    on_policy = ak.Distiller(teacher, student, strategy="on_policy", max_new_tokens=MAX_NEW_TOKENS)
    prompts_only = packed_with(packed_pairs, 2, response_mask=False)
    prompt_length = int((packed_pairs["padding_mask"][2] & ~packed_pairs["response_mask"][2]).sum())
    prompts_only["padding_mask"][2, prompt_length:] = False
    assert next(iter(on_policy.make_dataset(prompts_only, needs_responses=False)))


def test_texts_must_be_strings_and_token_ids_integers(pair, packed_pairs):
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, strategy="sft", max_new_tokens=MAX_NEW_TOKENS)
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"Prompt 0 is not a string: 1 \(int\)"):
        distiller.fit([{"prompts": 1, "responses": "2"}], verbose=0)
    with pytest.raises(ValueError, match=r"Prompt 1 is not a string: 2.5 \(float\)"):
        distiller.fit({"prompts": ["Q: 1 =", 2.5], "responses": ["1", "2"]}, verbose=0)
    with pytest.raises(ValueError, match='"responses" must be strings. Received dtype int32'):
        distiller.fit({"prompts": ["Q: 1 =", "Q: 2 ="], "responses": [1, 2]}, verbose=0)
    with pytest.raises(ValueError, match='"prompts" must be strings. Received dtype float32'):
        distiller.fit(
            tf.data.Dataset.from_tensor_slices({"prompts": [1.0], "responses": ["1"]}), verbose=0
        )
    floats = {**packed_pairs, "token_ids": packed_pairs["token_ids"].astype("float32")}
    for run in (
        lambda: distiller.fit(floats, verbose=0),
        lambda: distiller.rollout(floats),
        lambda: distiller(floats),
    ):
        with pytest.raises(
            ValueError, match="`token_ids` must be integers. Received dtype float32"
        ):
            run()
    with pytest.raises(ValueError, match="Expected a packed batch"):
        distiller({"token_ids": packed_pairs["token_ids"]})


@pytest.mark.parametrize("strategy", ["sft", "supervised_kd", ak.GKD(lmbda=0.5)], ids=str)
def test_responses_missing_for_a_strategy_that_trains_on_them(pair, strategy):
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, strategy=strategy, max_new_tokens=MAX_NEW_TOKENS)
    distiller.compile(optimizer="adam")
    prompts = [f"Q: {i} + 1 =" for i in range(4)]
    with pytest.raises(ValueError, match='no "responses"'):
        distiller.fit({"prompts": prompts}, verbose=0)
    with pytest.raises(ValueError, match='no "responses"'):
        distiller.fit(tf.data.Dataset.from_tensor_slices({"prompts": prompts}), verbose=0)
    # A row without the response that row 0 has is not silently trained on "".
    rows = [{"prompts": prompts[0], "responses": " 1"}, {"prompts": prompts[1]}]
    with pytest.raises(
        ValueError, match=r"Row 1 has fields \['prompts'\], row 0 has \['prompts', 'responses'\]"
    ):
        distiller.fit(rows, verbose=0)


def test_distiller_arguments_out_of_range_are_clear_errors(pair):
    teacher, student = pair
    cases = [
        (
            {"max_new_tokens": 0},
            "max_new_tokens` must be an integer in \\[1, 31\\]",
        ),  # was: the default
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"divergence": "jsd", "beta": 1.5}, "beta"),
        ({"divergence": "skew_forward_kl", "alpha": 1.0}, "alpha"),
        ({"temperature": -1.0}, "temperature"),
        ({"strategy": "gkd_typo"}, "Unknown strategy"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            ak.Distiller(teacher, student, **kwargs)
    with pytest.raises(ValueError, match="same model"):
        ak.Distiller(student, student)
    gpt2 = ak.tiny.causal_lm("gpt2", num_layers=1, sequence_length=SEQUENCE_LENGTH // 2)
    with pytest.raises(ValueError, match="The teacher has 16 positions .* sequence_length=32"):
        ak.Distiller(gpt2, student)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ak.GKD(lmbda=-0.1), "lmbda"),
        (lambda: ak.AdaSwitch(k=-1.0), "`k`"),
        (lambda: ak.AdaSwitch(k=float("nan")), "`k`"),
        (lambda: ak.AdaSwitch(window=-3), "window"),
        (lambda: ak.SKD(top_k=-1), "top_k"),
        (lambda: ak.SKD(top_k=2.5), "top_k"),
        (lambda: ak.Switch(decay=-0.1), "decay"),
        (lambda: ak.Switch(beta=1.5), "beta"),
    ],
)
def test_strategy_parameters_out_of_range_beyond_test_strategies(make, match):
    """tests/test_strategies.py covers window=0, window=2.5, k=0, top_k=0,
    lmbda=1.5 and tau0<0; these are the other sides of each range."""
    with pytest.raises(ValueError, match=match):
        make()


# -- 2. a non-finite loss stops training; the weights are those before it ------


def test_non_finite_loss_stops_training_with_the_weights_before_that_step(capsys):
    """A teacher that gives NaN on one token (its input embedding row, untied
    in Llama 3): the batch holding it has a NaN loss. The optimizer skips
    that step and `fit` stops there, so the student and the optimizer state
    (Adam's moments, the step count) are exactly those before it."""
    keras.utils.set_random_seed(3)
    teacher = ak.tiny.causal_lm("llama3", num_layers=1, sequence_length=SEQUENCE_LENGTH)
    student = ak.tiny.causal_lm("llama3", num_layers=1, sequence_length=SEQUENCE_LENGTH)
    poison = teacher.preprocessor.tokenizer.token_to_id("@")
    embeddings = teacher.backbone.token_embedding.embeddings
    values = ops.convert_to_numpy(embeddings).copy()
    values[poison] = np.nan
    embeddings.assign(values)
    # Greedy rollouts: a random student samples near-uniformly, so "@" (NaN
    # in the teacher) would show up in the clean batches' responses by chance.
    distiller = ak.Distiller(
        teacher,
        student,
        strategy=ak.AdaSwitch(window=2, k=1.2),
        max_new_tokens=8,
        seed=0,
        student_sampler="greedy",
        teacher_sampler="greedy",
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    clean = arithmetic_pairs(4)
    distiller.fit(dataset(clean), batch_size=2, verbose=0)  # steps 1 and 2
    weights = copy_weights(student)
    optimizer_state = [np.array(ops.convert_to_numpy(v)) for v in distiller.optimizer.variables]
    capsys.readouterr()

    bad_first = [{"prompts": "Q: @ =", "responses": " 1"}, clean[0], clean[1], clean[2]]
    history = distiller.fit(dataset(bad_first), batch_size=2, verbose=0)  # step 3 bad, 4 clean
    assert (
        "Step 3: non-finite loss, training stopped; the weights are those before this step."
        in capsys.readouterr().out
    )
    assert math.isnan(history.history["loss"][-1])
    for old, new in zip(weights, copy_weights(student)):
        np.testing.assert_array_equal(old, new)
    for old, new in zip(optimizer_state, distiller.optimizer.variables):
        np.testing.assert_array_equal(old, ops.convert_to_numpy(new))
    assert int(ops.convert_to_numpy(distiller.optimizer.iterations)) == 2
    history = distiller.fit(dataset(clean), batch_size=2, verbose=0)  # and it trains on
    assert np.isfinite(history.history["loss"][-1])
    assert any(not np.array_equal(a, b) for a, b in zip(weights, copy_weights(student)))


# -- 3. TRL's GKD regressions ---------------------------------------------------
# Already tested elsewhere, each citing its TRL issue: JSD mixture in
# probability space (#2204) and beta = 0 / 1 (#3043) in test_divergences.py;
# the mean over response tokens (#4105) in test_divergences.py and
# test_distiller.py; vocabulary sizes (#6252) in test_distiller.py.


def test_generated_prompt_tokens_are_never_in_the_loss(pair, batch):
    """TRL #2058: on-policy sequences are trained on the tokens the student
    generated, from the first (predicted by the last prompt token) on; no
    prompt token is ever a target."""
    teacher, student = pair
    distiller = ak.Distiller(
        teacher, student, strategy="on_policy", max_new_tokens=MAX_NEW_TOKENS, seed=1
    )
    rolled = {k: ops.convert_to_numpy(v) for k, v in distiller.rollout(batch).items()}
    y_pred = distiller(rolled)
    loss = float(ops.convert_to_numpy(distiller.compute_loss(rolled, y_pred=y_pred)))
    per_token = ops.convert_to_numpy(y_pred["divergence"])
    prompt_length = (batch["padding_mask"] & ~batch["response_mask"]).sum(axis=1)
    generated = rolled["padding_mask"].sum(axis=1) - prompt_length
    assert (generated >= 1).all()
    targets = [
        per_token[row, p - 1 : p - 1 + n]
        for row, (p, n) in enumerate(zip(prompt_length, generated))
    ]
    assert loss == pytest.approx(np.concatenate(targets).mean(), rel=1e-5)
    prompt = rolled["padding_mask"] & ~rolled["response_mask"]
    np.testing.assert_array_equal(prompt.sum(axis=1), prompt_length)


def test_end_token_stays_in_the_loss_when_pad_is_end():
    """TRL #6357: with pad id == end id, masking by token id would drop the
    end token from the loss; masks come from lengths here, so it stays."""
    tokenizer = ak.tiny.tokenizer("qwen2")
    end = tokenizer.end_token_id
    tokenizer.pad_token_id = end
    teacher = ak.tiny.causal_lm(tokenizer=tokenizer, num_layers=2, sequence_length=SEQUENCE_LENGTH)
    student = ak.tiny.causal_lm(tokenizer=tokenizer, num_layers=1, sequence_length=SEQUENCE_LENGTH)
    distiller = ak.Distiller(
        teacher, student, strategy="supervised_kd", max_new_tokens=MAX_NEW_TOKENS
    )
    assert distiller.packer.pad_token_id == distiller.packer.end_token_id == end
    packed = next(iter(distiller.make_dataset(arithmetic_pairs(4), batch_size=4)))
    packed = {k: np.asarray(v) for k, v in packed.items()}
    last = np.array([np.flatnonzero(row).max() for row in packed["response_mask"]])
    rows = np.arange(len(last))
    assert (packed["token_ids"][rows, last] == end).all()
    assert (packed["token_ids"][~packed["padding_mask"]] == end).all()  # the padding too
    y_pred = distiller(packed)
    loss = float(ops.convert_to_numpy(distiller.compute_loss(packed, y_pred=y_pred)))
    per_token = ops.convert_to_numpy(y_pred["divergence"])
    mask = packed["response_mask"][:, 1:]
    assert mask[rows, last - 1].all()  # logits at last - 1 predict the end token
    per_token[rows, last - 1] += 1.0
    moved = float(ops.convert_to_numpy(ak.divergences.masked_mean(per_token, mask)))
    assert moved == pytest.approx(loss + len(rows) / mask.sum(), rel=1e-5)


def test_gradient_accumulation_is_refused(pair):
    """TRL #6006: Keras' `gradient_accumulation_steps` would average the
    micro-batches' token means, not all their tokens; the Distiller does not
    offer it and says why."""
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, max_new_tokens=MAX_NEW_TOKENS)
    with pytest.raises(ValueError, match="TRL #6006"):
        distiller.compile(optimizer=keras.optimizers.SGD(1.0, gradient_accumulation_steps=2))


# -- 4. mixed precision ---------------------------------------------------------


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_adaswitch_trains_under_mixed_bfloat16_with_float32_divergences(mixed_bfloat16):
    keras.utils.set_random_seed(0)
    teacher = sharpen(
        ak.tiny.causal_lm(num_layers=2, hidden_dim=64, sequence_length=SEQUENCE_LENGTH), 60.0
    )
    student = sharpen(ak.tiny.causal_lm(num_layers=1, sequence_length=SEQUENCE_LENGTH), 20.0)
    assert student.backbone.compute_dtype == "bfloat16"
    distiller = ak.Distiller(
        teacher,
        student,
        strategy=ak.AdaSwitch(window=2, k=1.2),
        max_new_tokens=MAX_NEW_TOKENS,
        seed=0,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = distiller.fit(arithmetic_pairs(8), batch_size=8, verbose=0).history
    assert all(np.isfinite(values).all() for values in history.values())
    packed = next(iter(distiller.make_dataset(arithmetic_pairs(8), batch_size=8)))
    packed = {k: np.asarray(v) for k, v in packed.items()}
    scores = distiller.rollout(packed)["scores"]  # AdaSwitch's d_i trace
    assert keras.backend.standardize_dtype(scores.dtype) == "float32"
    assert np.isfinite(ops.convert_to_numpy(scores)).all()
    y_pred = distiller(packed)
    assert keras.backend.standardize_dtype(y_pred["divergence"].dtype) == "float32"
    inputs = {k: packed[k] for k in ("token_ids", "padding_mask")}
    want = np_forward_kl(
        ops.convert_to_numpy(ops.cast(teacher(inputs), "float32")).astype("float64")[:, :-1],
        ops.convert_to_numpy(ops.cast(student(inputs), "float32")).astype("float64")[:, :-1],
    )
    mask = packed["response_mask"][:, 1:]
    loss = float(ops.convert_to_numpy(distiller.compute_loss(packed, y_pred=y_pred)))
    assert loss == pytest.approx(want[mask].mean(), rel=1e-5)


@pytest.mark.parametrize("kind", ak.divergences.KINDS)
def test_divergences_of_bfloat16_logits_are_computed_in_float32(kind):
    """`log_probs` upcasts first: the divergence of bfloat16 logits equals the
    float64 one on the same (rounded) values, where bfloat16 arithmetic is
    off by about 1e-2."""
    rng = np.random.default_rng(0)
    teacher, student = (
        ops.cast(rng.normal(scale=4.0, size=(4, 6, 50)), "bfloat16") for _ in range(2)
    )
    got = ak.divergences.token_divergence(teacher, student, kind, temperature=2.0)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    want = reference(
        ops.convert_to_numpy(ops.cast(teacher, "float32")),
        ops.convert_to_numpy(ops.cast(student, "float32")),
        kind,
        temperature=2.0,
    )
    np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=1e-4, atol=1e-6)


def test_chunked_loss_under_mixed_bfloat16_equals_the_plain_path(mixed_bfloat16):
    """The chunked head reads the output matrix in float32, as the plain
    head (an Embedding, never autocast) does, on every backend."""
    keras.utils.set_random_seed(0)
    teacher = ak.tiny.causal_lm(num_layers=1, hidden_dim=64, sequence_length=SEQUENCE_LENGTH)
    student = ak.tiny.causal_lm(num_layers=1, sequence_length=SEQUENCE_LENGTH)
    packed = None
    outputs = {}
    for chunk in (None, 5):
        distiller = ak.Distiller(
            teacher, student, strategy="supervised_kd", loss_chunk_size=chunk, max_new_tokens=8
        )
        if packed is None:
            packed = next(iter(distiller.make_dataset(arithmetic_pairs(4), batch_size=4)))
            packed = {k: np.asarray(v) for k, v in packed.items()}
        outputs[chunk] = {k: ops.convert_to_numpy(v) for k, v in distiller(packed).items()}
    for key in ("divergence", "cross_entropy"):
        np.testing.assert_allclose(outputs[5][key], outputs[None][key], rtol=1e-5, atol=1e-6)
