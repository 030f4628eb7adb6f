"""The joint rollout: one decode over the student's and the teacher's KV
caches, in which a strategy decides, token by token, whose token is kept.

`rollout()` is a short driver over named phases, each an `ops.while_loop`
with a `cond` and a `body`, as KerasHub's samplers are written:

- *drafting*: the student drafts `draft_length` tokens with its cache, the
  teacher scores them in one cached call (as in speculative decoding), and the
  strategy's rule cuts the draft at the first column where the teacher writes
  in any row;
- *lockstep*: drafts of one token, once some row has switched for good
  (`Strategy.teacher_finishes`, AdaSwitch) while others still need the student;
- *teacher alone* (or *student alone*): one model writes every column.

Every phase makes the decisions of a token-by-token rollout: the rule is a
causal function of the trace of scores, and it always reads the trace
recorded so far (tested against an uncached token-by-token reference).
"""

import keras
import keras_hub
from keras import ops

_SAMPLERS = (
    keras_hub.samplers.GreedySampler,
    keras_hub.samplers.RandomSampler,
    keras_hub.samplers.TopKSampler,
    keras_hub.samplers.TopPSampler,
)
# One uniform per (row, column) for each use, drawn once per rollout.
_STREAMS = ("student", "teacher", "ground_truth")


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

    Args:
        inputs: dict of `token_ids`, `padding_mask` and `response_mask`, each
            `[B, T]`: prompts followed by their ground-truth responses.
        seed: an int or `keras.random.SeedGenerator`, drawn from once.
        draft_length: tokens the student drafts per teacher call while
            drafting. Decisions do not depend on it, only speed.
        keep_teacher_logits: also return the teacher's logits at the columns
            it scored, so that the loss needs no second teacher forward.

    Returns:
        dict, all `[B, T]` unless noted: `token_ids`, `padding_mask`,
        `response_mask` (tokens that get loss), `teacher_token_mask` and
        `student_token_mask` (tokens the teacher, the student wrote; the
        rest of a response is ground truth), `scores` (the statistic the
        strategy's rule read, e.g. AdaSwitch's d_i; 0 where none, as after a
        one-time switch), `switch_index` `[B]` (first column the teacher
        wrote; T where none); the teacher's work for the batch, `[B]` with
        the same value in every row: `teacher_calls` (its forward calls) and,
        per sequence, the tokens it `teacher_prefilled` (into its cache),
        `teacher_scored` (drafts it verified) and `teacher_decoded` (columns
        it wrote alone); and, when kept, `teacher_logits` `[B, T, V]` (column
        c: the teacher's next-token logits for token c; 0 where it did not
        run).
    """
    truth = _ground_truth(inputs)
    if not strategy.decoders:  # SFT, SupervisedKD: ground truth as it is
        return with_switch_index({**truth, **_teacher_work(ops.shape(inputs["token_ids"])[0], {})})
    shape = tuple(ops.shape(inputs["token_ids"]))
    drawn = keras.random.uniform((len(_STREAMS),) + shape, seed=seed)
    uniforms = {name: drawn[i] for i, name in enumerate(_STREAMS)}
    decoder = _JointDecoder(
        models={"student": student, "teacher": teacher},
        samplers={"student": student_sampler, "teacher": teacher_sampler},
        strategy=strategy,
        prompt_mask=ops.logical_and(truth["padding_mask"], ops.logical_not(truth["response_mask"])),
        max_new_tokens=max_new_tokens,
        vocabulary_size=vocabulary_size,
        end_token_id=end_token_id,
        uniforms=uniforms,
        keep_teacher_logits=(
            keep_teacher_logits
            and "teacher" in strategy.decoders
            and not strategy.ground_truth_rate
        ),
    )
    state = decoder.initial_state(inputs["token_ids"], pad_token_id)
    length = shape[1]
    for cond, body in decoder.phases(min(draft_length, length - 1)):
        state = ops.while_loop(
            lambda state, cond=cond: ops.logical_and(state["index"] < length, cond(state)),
            body,
            state,
            maximum_iterations=length,
        )
    generated = decoder.output(state)
    if strategy.ground_truth_rate > 0.0:
        # GKD: a row keeps its ground truth with probability 1 - lambda.
        keeps_truth = uniforms["ground_truth"][:, 0] < strategy.ground_truth_rate
        generated = {
            key: ops.where(keeps_truth[:, None], truth[key], value)
            for key, value in generated.items()
        }
    return with_switch_index({**generated, **_teacher_work(shape[0], state)})


class _JointDecoder:
    """The phases of one rollout over a batch: the state they share is a dict
    (`index`, the next column to decide, the same for every row; `tokens`,
    `response`, `teacher_mask`, `student_mask`, `scores`, `done`, `caches`,
    the teacher's work counters and, when kept, `teacher_logits`), so that
    each phase is an `ops.while_loop`."""

    def __init__(
        self,
        *,
        models,
        samplers,
        strategy,
        prompt_mask,
        max_new_tokens,
        vocabulary_size,
        end_token_id,
        uniforms,
        keep_teacher_logits,
    ):
        self.models, self.samplers, self.strategy = models, samplers, strategy
        self.prompt_mask = prompt_mask
        self.prompt_length = ops.sum(ops.cast(prompt_mask, "int32"), axis=1)
        self.end_column = self.prompt_length + max_new_tokens  # first column past each budget
        self.vocabulary_size, self.end_token_id = vocabulary_size, end_token_id
        self.uniforms, self.keep_teacher_logits = uniforms, keep_teacher_logits

    # -- the driver's view: initial state, phases, output -----------------
    def initial_state(self, token_ids, pad_token_id):
        tokens = ops.where(self.prompt_mask, token_ids, ops.cast(pad_token_id, token_ids.dtype))
        falses = ops.zeros_like(self.prompt_mask)
        teacher_decodes = int("teacher" in self.strategy.decoders)
        state = {
            "index": ops.cast(ops.maximum(ops.min(self.prompt_length), 1), "int32"),
            "tokens": tokens,
            "response": falses,
            "teacher_mask": falses,
            "student_mask": falses,
            "scores": ops.zeros(ops.shape(tokens), "float32"),
            "done": ops.zeros_like(self.prompt_length, dtype="bool"),
            "caches": {
                name: self.models[name]._build_cache(tokens)[1] for name in self.strategy.decoders
            },
            # The teacher's work: one call fills its cache over all T columns.
            "teacher_calls": ops.convert_to_tensor(teacher_decodes, "int32"),
            "teacher_prefilled": ops.convert_to_tensor(tokens.shape[1] * teacher_decodes, "int32"),
            "teacher_scored": ops.convert_to_tensor(0, "int32"),
            "teacher_decoded": ops.convert_to_tensor(0, "int32"),
        }
        if self.keep_teacher_logits:
            shape = tuple(ops.shape(tokens)) + (self.vocabulary_size,)
            state["teacher_logits"] = ops.zeros(shape, self.models["teacher"].compute_dtype)
        return state

    def phases(self, draft_length):
        """`(cond, body)` pairs, run in order, each until its `cond` fails."""
        if len(self.strategy.decoders) == 1:  # OnPolicy, GKD, SeqKD
            (name,) = self.strategy.decoders
            return [(self.any_active, lambda state: self.decode_alone(state, name))]
        drafting = (
            lambda state: ops.logical_and(
                self.any_active(state), ops.logical_not(self.any_switched(state))
            ),
            lambda state: self.draft_and_verify(state, draft_length),
        )
        if not self.strategy.teacher_finishes:  # SKD, SWITCH: drafting to the end
            return [drafting]
        lockstep = (self.any_unswitched, lambda state: self.draft_and_verify(state, 1))
        teacher_alone = (self.any_active, lambda state: self.decode_alone(state, "teacher"))
        return [drafting, lockstep, teacher_alone]

    def output(self, state):
        generated = {
            "token_ids": state["tokens"],
            "padding_mask": ops.logical_or(self.prompt_mask, state["response"]),
            "response_mask": state["response"],
            "teacher_token_mask": state["teacher_mask"],
            "student_token_mask": state["student_mask"],
            "scores": state["scores"],
        }
        if self.keep_teacher_logits:
            generated["teacher_logits"] = state["teacher_logits"]
        return generated

    # -- which rows still write -------------------------------------------
    def active(self, state):
        return ops.logical_and(ops.logical_not(state["done"]), state["index"] < self.end_column)

    def switched(self, state):
        """Rows the teacher finishes alone (AdaSwitch, after its switch)."""
        if not self.strategy.teacher_finishes:
            return ops.zeros_like(state["done"])
        return ops.any(state["teacher_mask"], axis=1)

    def any_active(self, state):
        return ops.any(self.active(state))

    def any_switched(self, state):
        return ops.any(ops.logical_and(self.active(state), self.switched(state)))

    def any_unswitched(self, state):
        return ops.any(ops.logical_and(self.active(state), ops.logical_not(self.switched(state))))

    def writes(self, column, done, index):
        """bool `[B]`: rows that write `column` (inside their budget, not
        done, not decided before `index`)."""
        inside = ops.logical_and(column >= self.prompt_length, column < self.end_column)
        return ops.logical_and(ops.logical_and(inside, ops.logical_not(done)), column >= index)

    # -- the phases' bodies ----------------------------------------------
    def decode_step(self, name, cache, previous, column):
        """One cached step of model `name`: its logits for `column`, its
        sample there, its cache."""
        logits, _, cache = self.models[name].call_with_cache(previous[:, None], cache, column - 1)
        logits = logits[:, 0, : self.vocabulary_size]
        uniform = ops.take(self.uniforms[name], column, axis=1)
        return logits, sample(self.samplers[name], logits, uniform), cache

    def decode_alone(self, state, name):
        """One model writes the next column (OnPolicy, SeqKD, AdaSwitch's
        teacher alone)."""
        index, tokens = state["index"], state["tokens"]
        previous = ops.take(tokens, index - 1, axis=1)
        logits, proposal, cache = self.decode_step(name, state["caches"][name], previous, index)
        writes = self.writes(index, state["done"], index)[:, None]
        token = ops.where(
            writes[:, 0], ops.cast(proposal, tokens.dtype), ops.take(tokens, index, axis=1)
        )
        state = write_chunk(
            state,
            start=index,
            keep=ops.ones((1,), "bool"),
            tokens=token[:, None],
            written=writes,
            teacher_here=writes if name == "teacher" else ops.zeros_like(writes),
            scores=ops.zeros(ops.shape(writes), "float32"),
            teacher_logits=logits[:, None] if self.keep_teacher_logits else None,
            caches={**state["caches"], name: cache},
            end_token_id=self.end_token_id,
        )
        if name == "teacher":
            state["teacher_calls"] = state["teacher_calls"] + 1
            state["teacher_decoded"] = state["teacher_decoded"] + 1
        return state

    def draft(self, state, start, size):
        """The student writes `size` columns from `start` with its cache.
        Returns the draft `[B, size]`, which rows wrote each column, the
        student's logits `[B, size, V]` and proposals, and its cache."""
        tokens, index = state["tokens"], state["index"]
        batch = ops.shape(tokens)[0]

        def body(offset, carry):
            previous, done, draft, written, logits, proposals, cache = carry
            column = start + offset
            step_logits, proposal, cache = self.decode_step("student", cache, previous, column)
            writes = self.writes(column, done, index)
            token = ops.where(
                writes, ops.cast(proposal, tokens.dtype), ops.take(tokens, column, axis=1)
            )
            done = ops.logical_or(done, ops.logical_and(writes, token == self.end_token_id))
            put_at = lambda values, value: _put_column(values, offset, value)  # noqa: E731
            return (
                token,
                done,
                put_at(draft, token),
                put_at(written, writes),
                put_at(logits, step_logits),
                put_at(proposals, ops.cast(proposal, "int32")),
                cache,
            )

        carry = (
            ops.take(tokens, start - 1, axis=1),
            state["done"],
            ops.zeros((batch, size), tokens.dtype),
            ops.zeros((batch, size), "bool"),
            ops.zeros((batch, size, self.vocabulary_size), "float32"),
            ops.zeros((batch, size), "int32"),
            state["caches"]["student"],
        )
        _, _, draft, written, logits, proposals, cache = ops.fori_loop(0, size, body, carry)
        return draft, written, logits, proposals, cache

    def draft_and_verify(self, state, size):
        """Drafting (lockstep with `size=1`): the student drafts `size`
        tokens, the teacher scores them in one call, the rule cuts the
        draft where the teacher first writes in any row."""
        index, tokens = state["index"], state["tokens"]
        length = tokens.shape[1]
        start = ops.minimum(index, length - size)  # the chunk stays inside the sequence
        columns = start + ops.arange(size, dtype="int32")
        # Near the end the chunk starts before `index`: its first columns are
        # decided already and keep what is recorded.
        undecided = columns >= index
        draft, written, student_logits, proposals, student_cache = self.draft(state, start, size)

        # The teacher reads the column before the chunk and all but its last token.
        teacher_inputs = ops.concatenate(
            [ops.take(tokens, start - 1, axis=1)[:, None], draft[:, :-1]], axis=1
        )
        teacher_logits, _, teacher_cache = self.models["teacher"].call_with_cache(
            teacher_inputs, state["caches"]["teacher"], start - 1
        )
        teacher_logits = teacher_logits[:, :, : self.vocabulary_size]
        score = self.score(teacher_logits, student_logits, proposals)
        score = ops.where(
            self.switched(state)[:, None], 0.0, score
        )  # no score is read after a switch

        # The rule on the trace with the draft written in: it is causal, so
        # its decisions up to the cut are those of a token-by-token rollout.
        scores = put(state["scores"], start, ops.where(written, score, 0.0), undecided)
        response = put(state["response"], start, written, undecided)
        teacher_writes = self.strategy.teacher_writes(scores, response)
        teacher_here = ops.logical_and(
            ops.slice(teacher_writes, [0, start], [ops.shape(tokens)[0], size]), written
        )
        offsets = ops.arange(size, dtype="int32")
        cut = ops.min(ops.where(ops.any(teacher_here, axis=0), offsets, size - 1))
        # The teacher's token is kept at the cut column only: sample it there alone.
        teacher_token = sample(
            self.samplers["teacher"],
            ops.take(teacher_logits, cut, axis=1),
            ops.take(self.uniforms["teacher"], start + cut, axis=1),
        )
        chunk = ops.where(teacher_here, ops.cast(teacher_token, draft.dtype)[:, None], draft)
        # Cache entries of the discarded draft go back to what they held: they
        # are masked, but a model that gives NaN on a discarded token would
        # leak it through the attention (0 x NaN), unlike a token-by-token loop.
        caches = {
            "student": restore_cache(
                state["caches"]["student"], student_cache, start=start, cut=cut, size=size
            ),
            "teacher": restore_cache(
                state["caches"]["teacher"], teacher_cache, start=start, cut=cut, size=size
            ),
        }
        state = write_chunk(
            state,
            start=start,
            keep=ops.logical_and(undecided, offsets <= cut),
            tokens=chunk,
            written=written,
            teacher_here=teacher_here,
            scores=score,
            teacher_logits=teacher_logits if self.keep_teacher_logits else None,
            caches=caches,
            end_token_id=self.end_token_id,
            next_index=start + cut + 1,
        )
        state["teacher_calls"] = state["teacher_calls"] + 1
        state["teacher_scored"] = state["teacher_scored"] + size
        return state

    def score(self, teacher_logits, student_logits, proposals):
        """The strategy's score `[B, n]` at each of n columns."""
        batch, size = ops.shape(proposals)
        flat = (batch * size, self.vocabulary_size)
        score = self.strategy.score(
            ops.reshape(teacher_logits, flat),
            ops.reshape(student_logits, flat),
            ops.reshape(proposals, (-1,)),
        )
        return ops.reshape(score, (batch, size))


# -- writing into the trace and the caches ------------------------------------


def put(values, start, chunk, keep):
    """`values` `[B, T, ...]` with the kept columns (`keep`, `[n]`) of
    `chunk` `[B, n, ...]` written from column `start` on."""
    size, rest = chunk.shape[1], tuple(values.shape[2:])
    corner = [0, start] + [0] * len(rest)
    old = ops.slice(values, corner, (ops.shape(values)[0], size) + rest)
    keep = ops.reshape(keep, (1, size) + (1,) * len(rest))
    return ops.slice_update(values, corner, ops.where(keep, ops.cast(chunk, values.dtype), old))


def _put_column(values, column, value):
    """`values` `[B, n, ...]` with `value` `[B, ...]` at `column`."""
    corner = [0, column] + [0] * (len(values.shape) - 2)
    return ops.slice_update(values, corner, ops.cast(value, values.dtype)[:, None])


def write_chunk(
    state,
    *,
    start,
    keep,
    tokens,
    written,
    teacher_here,
    scores,
    teacher_logits,
    caches,
    end_token_id,
    next_index=None,
):
    """The state with the kept columns of a chunk `[B, n]` written in, from
    column `start` on; decoding goes on at `next_index` (after the chunk)."""
    ends = ops.logical_and(ops.logical_and(keep[None, :], written), tokens == end_token_id)
    student_here = ops.logical_and(written, ops.logical_not(teacher_here))
    new_state = {
        **state,
        "index": start + tokens.shape[1] if next_index is None else next_index,
        "tokens": put(state["tokens"], start, tokens, keep),
        "response": put(state["response"], start, written, keep),
        "teacher_mask": put(state["teacher_mask"], start, teacher_here, keep),
        "student_mask": put(state["student_mask"], start, student_here, keep),
        "scores": put(state["scores"], start, ops.where(written, scores, 0.0), keep),
        "done": ops.logical_or(state["done"], ops.any(ends, axis=1)),
        "caches": caches,
    }
    if teacher_logits is not None:
        teacher_logits = ops.where(written[..., None], teacher_logits, 0.0)
        new_state["teacher_logits"] = put(state["teacher_logits"], start, teacher_logits, keep)
    return new_state


def restore_cache(old, new, *, start, cut, size):
    """`new` with the entries a chunk wrote after its cut as in `old`.

    A chunk of `size` tokens from column `start` writes cache positions
    `start - 1 ... start + size - 2`; those after `start + cut` held tokens
    that were discarded. KerasHub's caches are `[B, layers, 2, T, heads,
    head_dim]`: axis 3 is the position.
    """
    if size == 1:  # a one-token chunk keeps its only token
        return new
    corner = [0, 0, 0, start - 1, 0, 0]
    shape = (ops.shape(old)[0],) + tuple(old.shape[1:3]) + (size,) + tuple(old.shape[4:])
    keep = start - 1 + ops.arange(size, dtype="int32") <= start + cut
    keep = ops.reshape(keep, (1, 1, 1, size, 1, 1))
    chunk = ops.where(keep, ops.slice(new, corner, shape), ops.slice(old, corner, shape))
    return ops.slice_update(new, corner, chunk)


def _ground_truth(inputs):
    response_mask = ops.cast(inputs["response_mask"], "bool")
    return {
        "token_ids": inputs["token_ids"],
        "padding_mask": ops.cast(inputs["padding_mask"], "bool"),
        "response_mask": response_mask,
        "teacher_token_mask": ops.zeros_like(response_mask),
        "student_token_mask": ops.zeros_like(response_mask),
        "scores": ops.zeros(ops.shape(response_mask), "float32"),
    }


def _teacher_work(batch, state):
    """The teacher's work counters of a final state, `[B]` each (0 without one)."""
    names = ("teacher_calls", "teacher_prefilled", "teacher_scored", "teacher_decoded")
    return {name: ops.full((batch,), state.get(name, 0), "int32") for name in names}


def with_switch_index(generated):
    """`generated` with `switch_index` `[B]`: the first column the teacher
    wrote, T where it wrote none."""
    teacher_mask = generated["teacher_token_mask"]
    length = teacher_mask.shape[1]
    columns = ops.arange(length, dtype="int32")[None, :]
    return {**generated, "switch_index": ops.min(ops.where(teacher_mask, columns, length), axis=1)}
