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
    draft_length=1,
    keep_teacher_logits=False,
):
    """Write the response of every sequence with `strategy`.

    All rows share one column index. A strategy that mixes the two models
    runs in up to three phases, each the cheapest loop that makes the same
    decisions as a token-by-token rollout:

    1. draft and verify, as speculative decoding does: the student drafts
       `draft_length` tokens with its cache, the teacher scores all of them
       in one cached call, the strategy's rule on the trace finds the first
       column where the teacher writes in any row; the columns before it are
       kept, the teacher's sample is written there, and the loop goes on from
       the next column (the caches' entries beyond it are overwritten later
       and masked until then);
    2. lockstep (a draft of one token), once some row has switched for good
       (`strategy.teacher_finishes`, AdaSwitch) while others still need the
       student;
    3. the teacher alone, once every unfinished row has switched.

    Args:
        inputs: dict of `token_ids`, `padding_mask` and `response_mask`, each
            `[B, T]`: prompts followed by their ground-truth responses.
        seed: an int or `keras.random.SeedGenerator`, drawn from once.
        draft_length: tokens the student drafts per teacher call in phase 1.
        keep_teacher_logits: also return the teacher's logits at the columns
            it scored, so that the loss needs no second teacher forward.

    Returns:
        dict, all `[B, T]` unless noted: `token_ids`, `padding_mask`,
        `response_mask` (tokens that get loss), `teacher_token_mask` (tokens
        the teacher wrote), `scores` (the statistic the strategy's rule read,
        e.g. AdaSwitch's d_i; 0 where none, as after a one-time switch),
        `switch_index` `[B]` (first column the teacher wrote; T where none)
        and, when kept, `teacher_logits` `[B, T, V]` (column c: the teacher's
        next-token logits for token c; 0 where it did not run).
    """
    token_ids = inputs["token_ids"]
    padding_mask = ops.cast(inputs["padding_mask"], "bool")
    response_mask = ops.cast(inputs["response_mask"], "bool")
    prompt_mask = ops.logical_and(padding_mask, ops.logical_not(response_mask))
    prompt_length = ops.sum(ops.cast(prompt_mask, "int32"), axis=1)
    batch, length = ops.shape(token_ids)[0], token_ids.shape[1]
    uniforms = keras.random.uniform((3,) + tuple(ops.shape(token_ids)), seed=seed)

    if not strategy.decoders:  # ground truth as it is
        generated = {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "response_mask": response_mask,
            "teacher_token_mask": ops.zeros_like(response_mask),
            "scores": ops.zeros(ops.shape(token_ids), "float32"),
        }
        return _with_switch_index(generated)

    models = {"student": student, "teacher": teacher}
    samplers = {"student": student_sampler, "teacher": teacher_sampler}
    stream = {"student": 0, "teacher": 1}
    last_new_column = prompt_length + max_new_tokens
    keep_teacher_logits = (
        keep_teacher_logits and "teacher" in strategy.decoders and not strategy.ground_truth_rate
    )

    def writable(columns, done, index):
        """bool `[B, n]`: the rows that write each of `columns` `[n]`."""
        columns = columns[None, :]
        inside = ops.logical_and(columns >= prompt_length[:, None], columns < last_new_column[:, None])
        return ops.logical_and(ops.logical_and(inside, ops.logical_not(done)[:, None]), columns >= index)

    def step(name, cache, previous, column):
        """One cached decode step of `name`: logits for `column`, a sample."""
        logits, _, cache = models[name].call_with_cache(previous[:, None], cache, column - 1)
        logits = logits[:, 0, :vocabulary_size]
        uniform = ops.take(uniforms[stream[name]], column, axis=1)
        return logits, sample(samplers[name], logits, uniform), cache

    def put(values, start, chunk, keep):
        """`values` with the kept columns `[n]` of `chunk` written from `start` on."""
        size, rest = chunk.shape[1], tuple(values.shape[2:])
        corner = [0, start] + [0] * len(rest)
        old = ops.slice(values, corner, (batch, size) + rest)
        keep = ops.reshape(keep, (1, size) + (1,) * len(rest))
        return ops.slice_update(values, corner, ops.where(keep, ops.cast(chunk, values.dtype), old))

    def accept(state, start, keep, tokens, written, teacher_here, scores, logits, caches, new_index):
        """The state with the kept columns of a chunk `[B, n]` written in."""
        ends = ops.logical_and(ops.logical_and(keep[None, :], written), tokens == end_token_id)
        new_state = {
            "index": new_index,
            "tokens": put(state["tokens"], start, tokens, keep),
            "response": put(state["response"], start, written, keep),
            "teacher_mask": put(state["teacher_mask"], start, teacher_here, keep),
            "scores": put(state["scores"], start, ops.where(written, scores, 0.0), keep),
            "done": ops.logical_or(state["done"], ops.any(ends, axis=1)),
            "caches": caches,
        }
        if keep_teacher_logits:
            logits = ops.where(written[..., None], logits, 0.0)
            new_state["teacher_logits"] = put(state["teacher_logits"], start, logits, keep)
        return new_state

    def active(state):
        return ops.logical_and(ops.logical_not(state["done"]), state["index"] < last_new_column)

    def switched(state):
        """Rows the teacher finishes alone (AdaSwitch, after its switch)."""
        if not strategy.teacher_finishes:
            return ops.zeros_like(state["done"])
        return ops.any(state["teacher_mask"], axis=1)

    def restore(old, new, start, cut, size):
        """`new` with the positions after `start + cut` that the chunk wrote
        (`start - 1 ... start + size - 2`) as in `old`. KerasHub's caches
        are `[B, layers, 2, T, heads, head_dim]`: axis 3 is the position."""
        if size == 1:  # a one-token chunk (lockstep) keeps its only token
            return new
        corner = [0, 0, 0, start - 1, 0, 0]
        shape = (batch,) + tuple(old.shape[1:3]) + (size,) + tuple(old.shape[4:])
        written = ops.slice(new, corner, shape)
        keep = start - 1 + ops.arange(size, dtype="int32") <= start + cut
        keep = ops.reshape(keep, (1, 1, 1, size, 1, 1))
        return ops.slice_update(new, corner, ops.where(keep, written, ops.slice(old, corner, shape)))

    def verify_chunk(state, size):
        """Phase 1 (phase 2 with `size=1`): the student drafts `size` tokens,
        the teacher scores them in one call, the rule cuts the chunk."""
        index = state["index"]
        start = ops.minimum(index, length - size)  # the chunk stays inside the sequence
        columns = start + ops.arange(size, dtype="int32")
        tokens, done, cache = state["tokens"], state["done"], state["caches"]["student"]
        previous = ops.take(tokens, start - 1, axis=1)
        draft, written, student_logits, proposals = [], [], [], []
        for offset in range(size):
            column = start + offset
            logits, proposal, cache = step("student", cache, previous, column)
            writes = writable(ops.reshape(column, (1,)), done, index)[:, 0]
            token = ops.where(writes, ops.cast(proposal, tokens.dtype), ops.take(tokens, column, axis=1))
            done = ops.logical_or(done, ops.logical_and(writes, token == end_token_id))
            draft.append(token), written.append(writes)
            student_logits.append(logits), proposals.append(proposal)
            previous = token
        draft, written = ops.stack(draft, axis=1), ops.stack(written, axis=1)
        student_logits, proposals = ops.stack(student_logits, axis=1), ops.stack(proposals, axis=1)

        # The teacher reads the column before the chunk and all but its last token.
        teacher_inputs = ops.concatenate([ops.take(tokens, start - 1, axis=1)[:, None], draft[:, :-1]], axis=1)
        teacher_logits, _, teacher_cache = teacher.call_with_cache(
            teacher_inputs, state["caches"]["teacher"], start - 1
        )
        teacher_logits = teacher_logits[:, :, :vocabulary_size]
        flat = (batch * size, vocabulary_size)
        score = ops.reshape(
            strategy.score(
                ops.reshape(teacher_logits, flat),
                ops.reshape(student_logits, flat),
                ops.reshape(proposals, (-1,)),
            ),
            (batch, size),
        )
        # Rows that had switched before the chunk record no score (the rule no longer reads one).
        score = ops.where(switched(state)[:, None], 0.0, score)

        # The rule on the trace with the whole draft written in; it is causal,
        # so its decisions up to the cut are those of a token-by-token rollout.
        # Near the end the chunk starts before `index`: its first columns are
        # decided already and keep their recorded trace.
        undecided = columns >= index
        trial_scores = put(state["scores"], start, ops.where(written, score, 0.0), undecided)
        trial_response = put(state["response"], start, written, undecided)
        rule = ops.slice(strategy.teacher_writes(trial_scores, trial_response), [0, start], [batch, size])
        teacher_here = ops.logical_and(rule, written)
        offsets = ops.arange(size, dtype="int32")
        cut = ops.min(ops.where(ops.any(teacher_here, axis=0), offsets, size - 1))
        keep = ops.logical_and(undecided, offsets <= cut)
        # The teacher's token is kept at the cut column only: sample it there alone.
        teacher_token = sample(
            teacher_sampler, ops.take(teacher_logits, cut, axis=1), ops.take(uniforms[1], start + cut, axis=1)
        )
        tokens_here = ops.where(teacher_here, ops.cast(teacher_token, draft.dtype)[:, None], draft)
        # Cache entries of the discarded draft go back to what they held: they
        # are masked, but a model that gives NaN on a discarded token would
        # leak it through the attention (0 x NaN), unlike a token-by-token loop.
        caches = {
            "student": restore(state["caches"]["student"], cache, start, cut, size),
            "teacher": restore(state["caches"]["teacher"], teacher_cache, start, cut, size),
        }
        return accept(
            state, start, keep, tokens_here, written, teacher_here, score, teacher_logits, caches, start + cut + 1
        )

    def decode_alone(state, name):
        """One model writes the next column (OnPolicy, SeqKD, AdaSwitch's phase 3)."""
        index = state["index"]
        previous = ops.take(state["tokens"], index - 1, axis=1)
        logits, proposal, cache = step(name, state["caches"][name], previous, index)
        writes = writable(ops.reshape(index, (1,)), state["done"], index)
        token = ops.where(writes[:, 0], ops.cast(proposal, state["tokens"].dtype), ops.take(state["tokens"], index, axis=1))
        caches = {**state["caches"], name: cache}
        teacher_here = writes if name == "teacher" else ops.zeros_like(writes)
        return accept(
            state, index, ops.ones((1,), "bool"), token[:, None], writes, teacher_here,
            ops.zeros((batch, 1), "float32"), logits[:, None], caches, index + 1,
        )

    def running(condition):
        return lambda state: ops.logical_and(state["index"] < length, condition(state))

    tokens = ops.where(prompt_mask, token_ids, ops.cast(pad_token_id, token_ids.dtype))
    state = {
        "index": ops.cast(ops.maximum(ops.min(prompt_length), 1), "int32"),
        "tokens": tokens,
        "response": ops.zeros_like(response_mask),
        "teacher_mask": ops.zeros_like(response_mask),
        "scores": ops.zeros(ops.shape(tokens), "float32"),
        "done": ops.zeros_like(prompt_length, dtype="bool"),
        "caches": {name: models[name]._build_cache(tokens)[1] for name in strategy.decoders},
    }
    if keep_teacher_logits:
        state["teacher_logits"] = ops.zeros((batch, length, vocabulary_size), teacher.compute_dtype)

    if len(strategy.decoders) == 1:
        (name,) = strategy.decoders
        phases = [(lambda s: ops.any(active(s)), lambda s: decode_alone(s, name))]
    else:
        phases = [(
            lambda s: ops.logical_and(
                ops.any(active(s)), ops.logical_not(ops.any(ops.logical_and(active(s), switched(s))))
            ),
            lambda s: verify_chunk(s, min(draft_length, length - 1)),
        )]
        if strategy.teacher_finishes:
            phases += [
                (lambda s: ops.any(ops.logical_and(active(s), ops.logical_not(switched(s)))),
                 lambda s: verify_chunk(s, 1)),
                (lambda s: ops.any(active(s)), lambda s: decode_alone(s, "teacher")),
            ]
    for condition, body in phases:
        state = ops.while_loop(running(condition), body, state, maximum_iterations=length)

    generated = {
        "token_ids": state["tokens"],
        "padding_mask": ops.logical_or(prompt_mask, state["response"]),
        "response_mask": state["response"],
        "teacher_token_mask": state["teacher_mask"],
        "scores": state["scores"],
    }
    if keep_teacher_logits:
        generated["teacher_logits"] = state["teacher_logits"]
    if strategy.ground_truth_rate > 0.0:  # GKD: some rows keep ground truth
        keep_truth = uniforms[2][:, 0] < strategy.ground_truth_rate
        truth = {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "response_mask": response_mask,
            "teacher_token_mask": ops.zeros_like(response_mask),
            "scores": ops.zeros_like(state["scores"]),
        }
        generated = {
            key: ops.where(keep_truth[:, None], truth[key], value)
            for key, value in generated.items()
        }
    return _with_switch_index(generated)


def _with_switch_index(generated):
    teacher_mask = generated["teacher_token_mask"]
    length = teacher_mask.shape[1]
    columns = ops.arange(length, dtype="int32")[None, :]
    generated["switch_index"] = ops.min(ops.where(teacher_mask, columns, length), axis=1)
    return generated
