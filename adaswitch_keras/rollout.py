"""The joint rollout: one decode loop over the student's and the teacher's KV
caches, in which a strategy decides, token by token, whose token is kept."""

import keras
import keras_hub
from keras import ops

_SAMPLERS = (
    keras_hub.samplers.GreedySampler,
    keras_hub.samplers.RandomSampler,
    keras_hub.samplers.TopKSampler,
    keras_hub.samplers.TopPSampler,
)


def get_sampler(identifier):
    """A supported KerasHub sampler from an instance or a name ("random")."""
    sampler = keras_hub.samplers.get(identifier)
    if not isinstance(sampler, _SAMPLERS):
        raise ValueError(
            f"Unsupported sampler {type(sampler).__name__}. The rollout supports "
            "greedy, random, top_k and top_p samplers."
        )
    return sampler


def sample(sampler, logits, uniform):
    """Draw one token per row from a KerasHub sampler's distribution.

    KerasHub samplers draw from a private SeedGenerator inside
    `get_next_token`, which cannot be threaded through a compiled training
    step (JAX is stateless). We take the sampler's distribution (temperature,
    top-k, top-p as KerasHub defines them) and sample it by inverse CDF from a
    uniform `[B]` that the rollout draws up front from the training seed.
    """
    probabilities = sampler.compute_probabilities(logits)  # softmax(z / T)
    if isinstance(sampler, keras_hub.samplers.GreedySampler):
        return ops.argmax(probabilities, axis=-1)
    candidates = None
    if isinstance(sampler, keras_hub.samplers.TopKSampler):
        probabilities, candidates = ops.top_k(probabilities, k=sampler.k)
    elif isinstance(sampler, keras_hub.samplers.TopPSampler):
        probabilities, candidates = ops.top_k(
            probabilities, k=sampler.k or probabilities.shape[-1], sorted=True
        )
        inside = ops.cumsum(probabilities, axis=-1) <= sampler.p
        keep = ops.concatenate(  # the token that crosses p stays, as in KerasHub
            [ops.ones_like(inside[:, :1]), inside[:, :-1]], axis=-1
        )
        probabilities = ops.where(keep, probabilities, 0.0)
    cdf = ops.cumsum(probabilities, axis=-1)
    target = ops.maximum(uniform * cdf[:, -1], 1e-30)
    index = ops.sum(ops.cast(cdf < target[:, None], "int32"), axis=-1)
    index = ops.minimum(index, probabilities.shape[-1] - 1)
    if candidates is None:
        return index
    return ops.take_along_axis(candidates, index[:, None], axis=-1)[:, 0]


def rollout(
    inputs,
    *,
    student,
    teacher,
    strategy,
    vocabulary_size,
    end_token_id,
    pad_token_id,
    max_new_tokens,
    student_sampler,
    teacher_sampler,
    seed,
):
    """Write the response of every sequence with `strategy`.

    Args:
        inputs: dict of `token_ids`, `padding_mask` and `response_mask`, each
            `[B, T]`: prompts followed by their ground-truth responses.
        seed: an int or `keras.random.SeedGenerator`, drawn from once.

    Returns:
        dict, all `[B, T]` unless noted: `token_ids`, `padding_mask`,
        `response_mask` (tokens that get loss), `teacher_token_mask` (tokens
        the teacher wrote), `scores` (the statistic the strategy's rule read,
        e.g. AdaSwitch's d_i; 0 where none), and `switch_index` `[B]` (first
        column the teacher wrote; T where none).
    """
    token_ids = inputs["token_ids"]
    padding_mask = ops.cast(inputs["padding_mask"], "bool")
    response_mask = ops.cast(inputs["response_mask"], "bool")
    prompt_mask = ops.logical_and(padding_mask, ops.logical_not(response_mask))
    prompt_length = ops.sum(ops.cast(prompt_mask, "int32"), axis=1)
    length = token_ids.shape[1]
    uniforms = keras.random.uniform((3,) + tuple(ops.shape(token_ids)), seed=seed)

    decoders = {"student": student, "teacher": teacher}
    decoders = {name: decoders[name] for name in strategy.decoders}
    if not decoders:  # ground truth as it is
        generated = {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "response_mask": response_mask,
            "teacher_token_mask": ops.zeros_like(response_mask),
            "scores": ops.zeros(ops.shape(token_ids), "float32"),
        }
        return _with_switch_index(generated)

    tokens = ops.where(prompt_mask, token_ids, ops.cast(pad_token_id, token_ids.dtype))
    samplers = {"student": student_sampler, "teacher": teacher_sampler}
    stream = {"student": 0, "teacher": 1}
    last_new_column = prompt_length + max_new_tokens

    def cond(index, tokens, response, teacher_mask, scores, done, caches):
        active = ops.logical_and(ops.logical_not(done), index < last_new_column)
        return ops.logical_and(index < length, ops.any(active))

    def body(index, tokens, response, teacher_mask, scores, done, caches):
        batch = ops.shape(tokens)[0]
        previous = ops.slice(tokens, [0, index - 1], [batch, 1])
        logits, proposals, new_caches = {}, {}, {}
        for name, model in decoders.items():
            step_logits, _, new_caches[name] = model.call_with_cache(
                previous, caches[name], index - 1
            )
            logits[name] = step_logits[:, 0, :vocabulary_size]
            uniform = ops.take(uniforms[stream[name]], index, axis=1)
            proposals[name] = sample(samplers[name], logits[name], uniform)

        writing = ops.logical_and(
            ops.logical_and(index >= prompt_length, index < last_new_column),
            ops.logical_not(done),
        )
        response = _set_column(response, index, writing)
        if len(decoders) == 2:
            score = strategy.score(logits["teacher"], logits["student"], proposals["student"])
            scores = _set_column(scores, index, ops.where(writing, score, 0.0))
            teacher_here = ops.take(strategy.teacher_writes(scores, response), index, axis=1)
            token = ops.where(teacher_here, proposals["teacher"], proposals["student"])
        else:
            (name,) = decoders
            teacher_here = ops.full_like(writing, name == "teacher")
            token = proposals[name]
        teacher_here = ops.logical_and(writing, teacher_here)
        teacher_mask = _set_column(teacher_mask, index, teacher_here)
        token = ops.where(writing, ops.cast(token, tokens.dtype), ops.take(tokens, index, axis=1))
        tokens = _set_column(tokens, index, token)
        done = ops.logical_or(done, ops.logical_and(writing, token == end_token_id))
        return index + 1, tokens, response, teacher_mask, scores, done, new_caches

    caches = {name: model._build_cache(tokens)[1] for name, model in decoders.items()}
    loop_vars = (
        ops.cast(ops.maximum(ops.min(prompt_length), 1), "int32"),
        tokens,
        ops.zeros_like(response_mask),
        ops.zeros_like(response_mask),
        ops.zeros(ops.shape(tokens), "float32"),
        ops.zeros_like(prompt_length, dtype="bool"),
        caches,
    )
    _, tokens, response, teacher_mask, scores, _, _ = ops.while_loop(
        cond, body, loop_vars, maximum_iterations=length
    )
    generated = {
        "token_ids": tokens,
        "padding_mask": ops.logical_or(prompt_mask, response),
        "response_mask": response,
        "teacher_token_mask": teacher_mask,
        "scores": scores,
    }
    if strategy.ground_truth_rate > 0.0:  # GKD: some rows keep ground truth
        keep_truth = uniforms[2][:, 0] < strategy.ground_truth_rate
        truth = {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "response_mask": response_mask,
            "teacher_token_mask": ops.zeros_like(response_mask),
            "scores": ops.zeros_like(scores),
        }
        generated = {
            key: ops.where(keep_truth[:, None], truth[key], value)
            for key, value in generated.items()
        }
    return _with_switch_index(generated)


def _set_column(values, index, column):
    return ops.slice_update(values, [0, index], ops.cast(column, values.dtype)[:, None])


def _with_switch_index(generated):
    teacher_mask = generated["teacher_token_mask"]
    length = teacher_mask.shape[1]
    columns = ops.arange(length, dtype="int32")[None, :]
    generated["switch_index"] = ops.min(ops.where(teacher_mask, columns, length), axis=1)
    return generated
