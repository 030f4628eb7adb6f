"""The rollout's decisions equal a token-by-token rollout, for all inputs.

An independent reference decodes one column at a time with full, uncached
forwards of both models and applies the strategy's rule to the trace
recorded so far. Hypothesis draws the batch (prompt lengths up to the
longest allowed, ground-truth response lengths), the response budget, the
draft length (1 to the sequence length), the end token, the samplers, the
seed and the strategy's parameters, for every registered strategy.

The models' logits are sliced to a vocabulary of `VOCABULARY` tokens, so the
end token is sampled often (rows end early, at different columns) and SKD's
top-K covers a real share of the vocabulary.
"""

import os

import keras
import keras_hub
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

import adaswitch_keras as ak
from adaswitch_keras.rollout import rollout
from adaswitch_keras.rollout import sample
from conftest import make_strategy
from conftest import sharpen

VOCABULARY = 16
LENGTH, ROWS = 12, 6
EXAMPLES = int(os.environ.get("ADASWITCH_ROLLOUT_EXAMPLES", 3))
CI = bool(os.environ.get("CI"))

# Values a strategy's constructor argument is drawn from, by name; an
# argument not named here keeps its default.
PARAMETERS = {
    "window": st.integers(1, 4),
    "k": st.floats(0.8, 3.0),
    "top_k": st.integers(1, VOCABULARY),
    "tau0": st.floats(0.0, 0.25),
    "decay": st.floats(0.0, 0.3),
    "beta": st.floats(0.0, 1.0),
    "lmbda": st.floats(0.0, 1.0),
    "position": st.integers(0, 6),
}
# The arguments of the edge cases: each rule fires on some tokens, not all.
EDGE_ARGUMENTS = {
    "window": 2,
    "k": 1.3,
    "top_k": 3,
    "tau0": 0.12,
    "decay": 0.05,
    "beta": 0.5,
    "lmbda": 0.5,
    "position": 2,
}
SAMPLERS = {
    "random": keras_hub.samplers.RandomSampler(),
    "greedy": keras_hub.samplers.GreedySampler(),
    "top_k": keras_hub.samplers.TopKSampler(k=3),
    "top_p": keras_hub.samplers.TopPSampler(p=0.7),
}


@st.composite
def cases(draw, name):
    """A batch, rollout settings and the strategy `name` with drawn arguments."""
    strategy = make_strategy(name, {key: draw(values) for key, values in PARAMETERS.items()})
    length, rows = LENGTH, ROWS  # one shape: eager backends compile each op once
    max_new_tokens = draw(st.integers(1, length - 1))
    longest = length - max_new_tokens
    # Prompt lengths from 1 to the longest allowed, the longest often.
    prompt_lengths = draw(
        st.lists(st.one_of(st.just(longest), st.integers(1, longest)), min_size=rows, max_size=rows)
    )
    response_lengths = [draw(st.integers(1, length - p)) for p in prompt_lengths]
    token_ids = np.array(
        draw(
            st.lists(
                st.lists(st.integers(0, VOCABULARY - 1), min_size=length, max_size=length),
                min_size=rows,
                max_size=rows,
            )
        ),
        "int32",
    )
    columns = np.arange(length)[None, :]
    prompt_lengths, response_lengths = (
        np.array(prompt_lengths)[:, None],
        np.array(response_lengths)[:, None],
    )
    padding_mask = columns < prompt_lengths + response_lengths
    response_mask = padding_mask & (columns >= prompt_lengths)
    return {
        "strategy": strategy,
        "inputs": {
            "token_ids": np.where(padding_mask, token_ids, 0).astype("int32"),
            "padding_mask": padding_mask,
            "response_mask": response_mask,
        },
        "max_new_tokens": max_new_tokens,
        "draft_length": draw(st.one_of(st.just(length), st.integers(1, length))),
        "end_token_id": draw(
            st.one_of(st.just(VOCABULARY), st.integers(0, VOCABULARY - 1))
        ),  # VOCABULARY: never sampled
        "seed": draw(st.integers(0, 2**16)),
        "samplers": draw(
            st.sampled_from(
                [
                    ("random", "random"),
                    ("random", "random"),
                    ("greedy", "top_p"),
                    ("top_k", "random"),
                ]
            )
        ),
    }


def reference_rollout(teacher, student, case):
    """Token by token, full forwards: what the rollout's contract says."""
    strategy, inputs = case["strategy"], case["inputs"]
    student_sampler, teacher_sampler = (SAMPLERS[name] for name in case["samplers"])
    shape = inputs["token_ids"].shape
    uniforms = ops.convert_to_numpy(
        keras.random.uniform((3,) + shape, seed=keras.random.SeedGenerator(case["seed"]))
    )
    prompt = inputs["padding_mask"] & ~inputs["response_mask"]
    prompt_length = prompt.sum(axis=1)
    tokens = np.where(prompt, inputs["token_ids"], 0)
    response = np.zeros(shape, bool)
    teacher_mask = np.zeros(shape, bool)
    student_mask = np.zeros(shape, bool)
    scores = np.zeros(shape, "float32")
    teacher_logits_kept = np.zeros(shape + (VOCABULARY,), "float32")
    done = np.zeros(shape[0], bool)

    def logits_for(model, column):
        logits = model({"token_ids": tokens, "padding_mask": np.ones(shape, "int32")})
        return ops.convert_to_numpy(logits)[:, column - 1, :VOCABULARY]

    for column in range(1, shape[1]):
        writing = (
            (column >= prompt_length) & (column < prompt_length + case["max_new_tokens"]) & ~done
        )
        if not strategy.decoders or not writing.any():
            continue
        student_logits, teacher_logits = logits_for(student, column), logits_for(teacher, column)
        uniform = ops.convert_to_tensor(uniforms[:2, :, column])
        proposal = ops.convert_to_numpy(sample(student_sampler, student_logits, uniform[0]))
        teacher_token = ops.convert_to_numpy(sample(teacher_sampler, teacher_logits, uniform[1]))
        score = np.zeros(shape[0], "float32")
        if len(strategy.decoders) == 2:  # a rule that mixes the two reads a score
            score = ops.convert_to_numpy(strategy.score(teacher_logits, student_logits, proposal))
            if strategy.teacher_finishes:  # no score is read after the one-time switch
                score = np.where(teacher_mask.any(axis=1), 0.0, score)
        scores[:, column] = np.where(writing, score, 0.0)
        response[:, column] = writing
        teacher_here = (
            ops.convert_to_numpy(strategy.teacher_writes(scores, response))[:, column] & writing
        )
        teacher_mask[:, column] = teacher_here
        student_mask[:, column] = writing & ~teacher_here
        tokens[:, column] = np.where(
            writing, np.where(teacher_here, teacher_token, proposal), tokens[:, column]
        )
        teacher_logits_kept[:, column] = np.where(writing[:, None], teacher_logits, 0.0)
        done |= writing & (tokens[:, column] == case["end_token_id"])

    out = {
        "token_ids": tokens,
        "response_mask": response,
        "teacher_token_mask": teacher_mask,
        "student_token_mask": student_mask,
        "scores": scores,
    }
    if strategy.decoders:  # GKD: a row keeps its ground truth with probability 1 - lambda
        truth = uniforms[2][:, 0] < strategy.ground_truth_rate
    else:
        truth = np.ones(shape[0], bool)
    ground_truth = {
        "token_ids": inputs["token_ids"],
        "response_mask": inputs["response_mask"],
        "teacher_token_mask": np.zeros(shape, bool),
        "student_token_mask": np.zeros(shape, bool),
        "scores": np.zeros(shape, "float32"),
    }
    out = {
        key: np.where(truth.reshape((-1,) + (1,) * (value.ndim - 1)), ground_truth[key], value)
        for key, value in out.items()
    }
    out["padding_mask"] = prompt | out["response_mask"]
    columns = np.where(out["teacher_token_mask"], np.arange(shape[1]), shape[1])
    out["switch_index"] = columns.min(axis=1)
    out["teacher_logits"] = np.where(truth[:, None, None], 0.0, teacher_logits_kept)
    return out


def run_rollout(teacher, student, case):
    out = rollout(
        {k: ops.convert_to_tensor(v) for k, v in case["inputs"].items()},
        student=student,
        teacher=teacher,
        strategy=case["strategy"],
        vocabulary_size=VOCABULARY,
        end_token_id=case["end_token_id"],
        pad_token_id=0,
        max_new_tokens=case["max_new_tokens"],
        student_sampler=SAMPLERS[case["samplers"][0]],
        teacher_sampler=SAMPLERS[case["samplers"][1]],
        seed=keras.random.SeedGenerator(case["seed"]),
        draft_length=case["draft_length"],
        keep_teacher_logits=True,
    )
    return {k: ops.convert_to_numpy(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def models():
    """A tiny teacher and student over `VOCABULARY` tokens, sharpened so that
    their next-token distributions differ and depend on the context."""
    keras.utils.set_random_seed(1)
    teacher = ak.tiny.causal_lm(num_layers=2, hidden_dim=64, vocabulary_size=VOCABULARY)
    student = ak.tiny.causal_lm(num_layers=1, hidden_dim=32, vocabulary_size=VOCABULARY)
    return sharpen(teacher, 6.0), sharpen(student, 6.0)


def check(models, case):
    teacher, student = models
    reference = reference_rollout(teacher, student, case)
    out = run_rollout(teacher, student, case)
    note = f"{case['strategy']!r}, draft_length={case['draft_length']}, max_new_tokens={case['max_new_tokens']}"
    keys = (
        "token_ids",
        "padding_mask",
        "response_mask",
        "teacher_token_mask",
        "student_token_mask",
    )
    for key in (*keys, "switch_index"):
        np.testing.assert_array_equal(out[key], reference[key], err_msg=f"{key}: {note}")
    np.testing.assert_allclose(
        out["scores"], reference["scores"], rtol=1e-4, atol=1e-4, err_msg=note
    )
    if "teacher_logits" in out:  # kept where the teacher scored a written token
        kept = out["response_mask"]
        np.testing.assert_allclose(
            out["teacher_logits"][kept][:, :VOCABULARY],
            reference["teacher_logits"][kept],
            atol=2e-4,
            err_msg=note,
        )


# Edges that always run: rows of prompt lengths from 1 to the longest allowed;
# a draft as long as the sequence (near the end a chunk starts before the
# current column), a short draft; rows that never meet the end token
# (`VOCABULARY` is never sampled) and rows that end early; a lone row whose
# rule seldom fires, so that drafting reaches the last columns before the
# teacher steps in.
SPREAD = "1 to the longest"
RARE = {**EDGE_ARGUMENTS, "k": 3.0, "tau0": 0.3, "top_k": 8}
EDGES = [
    dict(max_new_tokens=4, draft_length=12, end_token_id=VOCABULARY),
    dict(max_new_tokens=7, draft_length=3, end_token_id=2),
    dict(
        max_new_tokens=11,
        draft_length=4,
        end_token_id=VOCABULARY,
        prompt_lengths=[1],
        arguments=RARE,
    ),
]


def edge_case(
    name,
    max_new_tokens,
    draft_length,
    end_token_id,
    prompt_lengths=SPREAD,
    arguments=EDGE_ARGUMENTS,
):
    rng = np.random.default_rng(3)
    length = LENGTH
    longest = length - max_new_tokens
    if prompt_lengths == SPREAD:
        prompt_lengths = [1, 2, longest // 2 + 1, longest - 1, longest, longest]
    columns = np.arange(length)[None, :]
    response_mask = columns >= np.array(prompt_lengths)[:, None]
    return {
        "strategy": make_strategy(name, arguments),
        "inputs": {
            "token_ids": rng.integers(0, VOCABULARY, response_mask.shape).astype("int32"),
            "padding_mask": np.ones(response_mask.shape, bool),
            "response_mask": response_mask,
        },
        "max_new_tokens": max_new_tokens,
        "draft_length": draft_length,
        "end_token_id": end_token_id,
        "seed": 0,
        "samplers": ("random", "random"),
    }


@pytest.mark.parametrize("name", list(ak.strategies.registered()))
def test_edges_equal_the_token_by_token_rollout(models, name):
    for edge in EDGES:
        check(models, edge_case(name, **edge))


@pytest.mark.parametrize("name", list(ak.strategies.registered()))
def test_decisions_equal_the_token_by_token_rollout(models, name):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=CI,
        phases=[Phase.explicit, Phase.generate] if CI else list(Phase),  # CI: report, no shrinking
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=cases(name))
    def property(case):
        check(models, case)

    property()
