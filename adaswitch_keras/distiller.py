"""`Distiller`: rollout + token-level divergence loss + metrics, as a
`keras.Model` that trains with `fit()` on every backend."""

import math

import keras
import keras_hub
from keras import ops

from adaswitch_keras import _backend
from adaswitch_keras import chunked_loss
from adaswitch_keras import divergences
from adaswitch_keras import lora
from adaswitch_keras import strategies
from adaswitch_keras.optimizers import SkipNonFiniteUpdates
from adaswitch_keras.pipeline import Pipeline
from adaswitch_keras.pipeline import StreamStart
from adaswitch_keras.pipeline import check_batch
from adaswitch_keras.preprocessing import PromptResponsePacker
from adaswitch_keras.rollout import get_sampler
from adaswitch_keras.rollout import rollout

# The teacher's work per step, as the rollout counts it (`rollout.rollout`).
TEACHER_WORK = ("teacher_calls", "teacher_prefilled", "teacher_scored", "teacher_decoded")


class Distiller(keras.Model):
    """Distil a KerasHub `teacher` causal LM into a `student`.

    Each training step (1) writes the responses with `strategy` in a joint
    rollout of both models, without gradients; (2) takes one gradient step on
    the student's mean token-level divergence to the teacher over response
    tokens, mixed with a cross-entropy term if `cross_entropy_weight` says
    so; (3) logs `loss`, `divergence`, `cross_entropy`, `switch_rate`,
    `teacher_token_fraction`, `switch_position` and the teacher's work
    (`teacher_calls`, and the tokens it `teacher_prefilled`,
    `teacher_scored` and `teacher_decoded`, per step).

    Args:
        teacher: a `keras_hub.models.CausalLM` with a preprocessor; frozen.
            `None` for an offline teacher: strategies that train on ground
            truth then read the teacher's top-k log-probabilities from the
            batches (`teacher_cache.dataset`).
        student: a `keras_hub.models.CausalLM` with the teacher's tokenizer.
            For a LoRA student, call `lora.enable(student, rank)` before
            `compile`: only the LoRA factors train, checkpoints keep them
            exactly, and `student.save_to_preset` writes the merged weights.
        strategy: a `Strategy` or its name; `AdaSwitch()` by default.
        divergence: a kind of `divergences.token_divergence`.
        beta: JSD's beta (`divergence="jsd"`).
        alpha: the skew of `skew_forward_kl` / `skew_reverse_kl`.
        temperature: applied to both models' logits in the loss.
        max_new_tokens: response length of the rollout; defaults to the
            room the preprocessor's `sequence_length` leaves (at most half).
        student_sampler: the student's KerasHub sampler or its name.
        teacher_sampler: the teacher's KerasHub sampler or its name.
        seed: seed of the one random stream of the rollouts.
        draft_length: tokens the student drafts per teacher call in the
            rollout (`rollout.rollout`); the strategy's `draft_length` by
            default. Decisions do not depend on it, only speed.
        reuse_teacher_logits: train on the teacher logits the rollout
            computed instead of a second teacher forward. They take
            B x T x V values of memory; `False` recomputes them (and so does
            `loss_chunk_size`).
        loss_chunk_size: compute the loss this many positions at a time
            from the models' final hidden states, recomputing each chunk's
            logits in the backward pass (`chunked_loss`): never B x T x V
            logits at once, for large vocabularies. `None`: all at once.
        cross_entropy_weight: w in loss = (1 - w) divergence + w
            cross-entropy, each the mean over its tokens: the divergence over
            the response, the cross-entropy over the response tokens the
            student did not write (ground truth or the teacher's). A float,
            or a `keras.optimizers.schedules.LearningRateSchedule` of the
            optimizer's step (e.g. `PolynomialDecay(0.5, 1000, 0.0)` for a
            linear decay, `CosineDecay(0.5, 1000)`). Strategies whose loss is
            cross-entropy (SFT, SeqKD) have w = 1.
    """

    def __init__(
        self,
        teacher,
        student,
        strategy="adaswitch",
        divergence="forward_kl",
        *,
        beta=0.5,
        alpha=0.1,
        temperature=1.0,
        max_new_tokens=None,
        student_sampler="random",
        teacher_sampler="random",
        seed=None,
        draft_length=None,
        reuse_teacher_logits=True,
        cross_entropy_weight=0.0,
        loss_chunk_size=None,
        **kwargs,
    ):
        # The losses are float32 whatever the global policy: no autocast scope
        # around `call` (the models keep their own policies).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.strategy = strategies.get(strategy)
        _check_models(teacher, student, self.strategy, temperature)
        self.vocabulary_size = shared_vocabulary_size(teacher, student)
        divergences.token_divergence(  # validates kind, beta, alpha, temperature
            ops.zeros((1, 2)),
            ops.zeros((1, 2)),
            divergence,
            beta=beta,
            alpha=alpha,
            temperature=temperature,
        )
        self.divergence, self.beta, self.alpha, self.temperature = (
            divergence,
            beta,
            alpha,
            temperature,
        )
        self.cross_entropy_weight = _checked_weight(cross_entropy_weight, self.strategy)
        self.scheduled_weight = None  # its value at the current step, for a schedule
        if isinstance(self.cross_entropy_weight, keras.optimizers.schedules.LearningRateSchedule):
            self.scheduled_weight = keras.Variable(
                self.cross_entropy_weight(0), trainable=False, name="cross_entropy_weight"
            )
        self.max_new_tokens = _checked_max_new_tokens(max_new_tokens, teacher, student)
        self.draft_length = self.strategy.draft_length if draft_length is None else draft_length
        if not (isinstance(self.draft_length, int) and self.draft_length >= 1):
            raise ValueError(
                f"`draft_length` must be an integer >= 1. Received: draft_length={draft_length}"
            )
        if loss_chunk_size is not None:
            if not (isinstance(loss_chunk_size, int) and loss_chunk_size >= 1):
                raise ValueError(
                    "`loss_chunk_size` must be None or an integer >= 1. "
                    f"Received: loss_chunk_size={loss_chunk_size!r}"
                )
            for role, model in (("teacher", teacher), ("student", student)):
                if model is not None:
                    chunked_loss.check_head(model, role)
        self.loss_chunk_size = loss_chunk_size
        self.reuse_teacher_logits = reuse_teacher_logits and loss_chunk_size is None
        self.teacher, self.student = teacher, student
        if teacher is not None:
            self.teacher.trainable = False
        self.student_sampler = get_sampler(student_sampler)
        self.teacher_sampler = get_sampler(teacher_sampler)
        self.packer = PromptResponsePacker(student.preprocessor, self.max_new_tokens)
        self.pipeline = Pipeline(self.packer, seed)
        self._step_widths = {}  # _backend.one_trace_per_width
        self.seed_generator = keras.random.SeedGenerator(seed)

        self.loss_trackers = [
            keras.metrics.Mean(name="divergence"),
            keras.metrics.Mean(name="cross_entropy"),
        ]
        self.rollout_trackers = [
            keras.metrics.Mean(name="switch_rate"),
            keras.metrics.Mean(name="teacher_token_fraction"),
            keras.metrics.Mean(name="switch_position"),
        ]
        self.teacher_trackers = [keras.metrics.Mean(name=name) for name in TEACHER_WORK]
        _build_preprocessors(teacher, student)
        # Teacher and student come built, and the Distiller has no weights of
        # its own: `load_weights` and `BackupAndRestore` may run before `fit`.
        self.built = True

    def compile(self, optimizer="adam", **kwargs):
        """`keras.Model.compile`, with the optimizer wrapped in
        `SkipNonFiniteUpdates` (a step whose gradients are not all finite
        changes nothing) and built at once: the first step then creates no
        variables, so TensorFlow traces it once and a first step that fails
        leaves nothing half made."""
        optimizer = keras.optimizers.get(optimizer)
        if getattr(optimizer, "gradient_accumulation_steps", None):
            raise ValueError(
                "The optimizer's gradient_accumulation_steps would average the "
                "micro-batches' token means instead of all their response tokens "
                "(TRL #6006: rollout lengths differ per micro-batch). Raise "
                "batch_size instead."
            )
        if not isinstance(optimizer, SkipNonFiniteUpdates):
            optimizer = SkipNonFiniteUpdates(optimizer)
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.trainable_variables)

    # -- 1. rollout -----------------------------------------------------------
    def rollout(self, inputs, keep_teacher_logits=False):
        """Responses written by the strategy (see `rollout.rollout`)."""
        check_batch(inputs)
        generated = rollout(
            inputs,
            student=self.student,
            teacher=self.teacher,
            strategy=self.strategy,
            vocabulary_size=self.vocabulary_size,
            end_token_id=self.packer.end_token_id,
            pad_token_id=self.packer.pad_token_id,
            max_new_tokens=self.max_new_tokens,
            student_sampler=self.student_sampler,
            teacher_sampler=self.teacher_sampler,
            seed=self.seed_generator,
            draft_length=self.draft_length,
            keep_teacher_logits=keep_teacher_logits,
        )
        # An offline teacher's top-k go along with the ground truth they belong to.
        return {**generated, **{k: inputs[k] for k in divergences.TOP_K_KEYS if k in inputs}}

    def begin_step(self):
        """Before a training step's loss: scheduled values at the optimizer's step."""
        if self.scheduled_weight is not None:
            step = self.optimizer.iterations
            self.scheduled_weight.assign(ops.cast(self.cross_entropy_weight(step), "float32"))

    def train_step(self, *args):
        return _backend.train_step(self, *args)

    def predict_step(self, *args):
        return _backend.predict_step(self, *args)

    # -- 2. loss --------------------------------------------------------------
    def call(self, inputs, training=False):
        """Per-token divergence and cross-entropy `[B, T-1]` (position t
        predicts token t+1); with `loss_chunk_size`, chunk by chunk from the
        models' hidden states (`chunked_loss`)."""
        check_batch(inputs)
        model_inputs = {k: inputs[k] for k in ("token_ids", "padding_mask")}
        targets = inputs["token_ids"][:, 1:]
        teacher = self.teacher_outputs(inputs)
        names = sorted(teacher)
        if self.loss_chunk_size is None:
            student_logits = self.student(model_inputs, training=training)[:, :-1]
            return self.token_losses(student_logits, targets, teacher)

        # The output matrices go in as arguments (`chunked_loss.map_chunks`).
        matrices = [chunked_loss.output_matrix(self.student)]
        if "teacher_hidden" in teacher:
            matrices.append(ops.stop_gradient(chunked_loss.output_matrix(self.teacher)))

        def chunk_losses(student_hidden, targets, *values_and_matrices):
            values = dict(zip(names, values_and_matrices))
            student_matrix, *teacher_matrix = values_and_matrices[len(names) :]
            if teacher_matrix:
                teacher_hidden = values["teacher_hidden"]
                values = {"teacher_logits": chunked_loss.logits(teacher_hidden, teacher_matrix[0])}
            student_logits = chunked_loss.logits(student_hidden, student_matrix)
            losses = self.token_losses(student_logits, targets, values)
            return losses["divergence"], losses["cross_entropy"]

        student_hidden = self.student.backbone(model_inputs, training=training)[:, :-1]
        divergence, cross_entropy = chunked_loss.map_chunks(
            chunk_losses,
            self.loss_chunk_size,
            [student_hidden, targets, *(teacher[name] for name in names)],
            matrices,
        )
        return {"divergence": divergence, "cross_entropy": cross_entropy}

    def teacher_outputs(self, inputs):
        """What the loss reads of the teacher, `[B, T-1, ...]` (position t
        predicts token t+1), from the best source the batch has: an offline
        teacher's top-k, the rollout's kept `teacher_logits`, or a teacher
        forward (its final hidden states `teacher_hidden`, with
        `loss_chunk_size`)."""
        if divergences.TOP_K_KEYS[0] in inputs:  # an offline teacher (teacher_cache)
            return {key: inputs[key][:, 1:] for key in divergences.TOP_K_KEYS}
        if "teacher_logits" in inputs:  # kept by the rollout: column t+1 is predicted at t
            return {"teacher_logits": inputs["teacher_logits"][:, 1:]}
        if self.teacher is None:
            raise ValueError(
                "The Distiller has no teacher (teacher=None) and the batch no "
                f"{divergences.TOP_K_KEYS}: train on `teacher_cache.dataset(path)`."
            )
        model_inputs = {k: inputs[k] for k in ("token_ids", "padding_mask")}
        if self.loss_chunk_size is None:
            return {"teacher_logits": self.teacher(model_inputs, training=False)[:, :-1]}
        hidden = self.teacher.backbone(model_inputs, training=False)[:, :-1]
        return {"teacher_hidden": ops.stop_gradient(hidden)}

    def token_losses(self, student_logits, targets, teacher):
        """Divergence to the teacher and cross-entropy of `targets`, per
        token, from the student's logits and `teacher_outputs` (or a chunk
        of each)."""
        student_logits = student_logits[..., : self.vocabulary_size]
        log_probs = divergences.log_probs(student_logits)
        cross_entropy = -ops.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        if divergences.TOP_K_KEYS[0] in teacher:
            ids, top_log_probs = (teacher[key] for key in divergences.TOP_K_KEYS)
            divergence = divergences.top_k_divergence(
                top_log_probs,
                ids,
                student_logits,
                self.divergence,
                beta=self.beta,
                alpha=self.alpha,
            )
            return {"divergence": divergence, "cross_entropy": cross_entropy}
        divergence = divergences.token_divergence(
            ops.stop_gradient(teacher["teacher_logits"][..., : self.vocabulary_size]),
            student_logits,
            self.divergence,
            beta=self.beta,
            alpha=self.alpha,
            temperature=self.temperature,
        )
        return {"divergence": divergence, "cross_entropy": cross_entropy}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """(1 - w) x the mean divergence over response tokens + w x the mean
        cross-entropy over the response tokens the student did not write."""
        divergence = divergences.masked_mean(y_pred["divergence"], x["response_mask"][:, 1:])
        cross_entropy = divergences.masked_mean(y_pred["cross_entropy"], _not_by_student(x)[:, 1:])
        if self.scheduled_weight is not None:  # at the last training step
            weight = self.scheduled_weight
        elif self.cross_entropy_weight in (0.0, 1.0):  # one term alone: no 0 x NaN from the other
            return cross_entropy if self.cross_entropy_weight else divergence
        else:
            weight = self.cross_entropy_weight
        return (1.0 - weight) * divergence + weight * cross_entropy

    # -- 3. metrics -----------------------------------------------------------
    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        divergence, cross_entropy = self.loss_trackers
        divergence.update_state(y_pred["divergence"], sample_weight=x["response_mask"][:, 1:])
        cross_entropy.update_state(y_pred["cross_entropy"], sample_weight=_not_by_student(x)[:, 1:])
        logs = {"loss": self._loss_tracker.result()}
        logs.update({m.name: m.result() for m in self.loss_trackers})
        if "teacher_token_mask" not in x:  # evaluation on ground truth
            return logs
        response = ops.cast(x["response_mask"], "float32")
        teacher = ops.cast(x["teacher_token_mask"], "float32")
        switched = ops.cast(ops.any(x["teacher_token_mask"], axis=1), "float32")
        prompt_length = ops.sum(ops.cast(x["padding_mask"], "float32") - response, axis=1)
        position = ops.cast(x["switch_index"], "float32") - prompt_length
        switch_rate, teacher_fraction, switch_position = self.rollout_trackers
        switch_rate.update_state(switched)
        teacher_fraction.update_state(teacher, sample_weight=response)
        switch_position.update_state(position, sample_weight=switched)
        logs.update({m.name: m.result() for m in self.rollout_trackers})
        for tracker, value in zip(self.teacher_trackers, self.teacher_work(x)):
            tracker.update_state(value)
            logs[tracker.name] = tracker.result()
        return logs

    def teacher_work(self, x):
        """The teacher's work in this step, as `TEACHER_WORK` names it: its
        calls, and the tokens of the whole batch it prefilled, scored (its
        drafts verified, and a forward for the loss) and decoded."""
        batch, length = ops.shape(x["token_ids"])
        work = [ops.cast(ops.max(x[name]), "float32") for name in TEACHER_WORK]
        work = [work[0]] + [value * ops.cast(batch, "float32") for value in work[1:]]
        if self.teacher is not None and "teacher_logits" not in x:  # a forward for the loss
            work[0] = work[0] + 1.0
            work[2] = work[2] + ops.cast(batch * length, "float32")
        return work

    # -- fit() glue: strings in, packed token ids out -------------------------
    def fit(self, x=None, batch_size=None, callbacks=None, validation_data=None, **kwargs):
        """`fit` on `{"prompts", "responses"}` data: a `tf.data.Dataset`, a
        dict of lists, or a list of dicts; batched by `batch_size` (default 8)
        when not batched already.

        Lists and dicts become one endless stream (`steps_per_epoch` defaults
        to one pass over them) that starts after the batches the optimizer
        has already stepped on, cut to the columns the rows use
        (`Pipeline.used_width`). With `keras.callbacks.BackupAndRestore`, a
        killed run restarted with the same seed then ends with the same
        weights as one never stopped: the backup holds the weights, the
        optimizer (and its step count) and the rollout seed's state."""
        for callback in callbacks or []:
            if (
                isinstance(callback, keras.callbacks.BackupAndRestore)
                and callback.save_freq != "epoch"
            ):
                raise ValueError(
                    "BackupAndRestore(save_freq=int) restarts the interrupted epoch from "
                    "its first batch, so some batches would be trained on twice. Use "
                    "save_freq='epoch' and set the backup period with steps_per_epoch. "
                    f"Received: save_freq={callback.save_freq}"
                )
        callbacks = [_StopOnNonFiniteLoss(), *(callbacks or [])]
        needs_truth = not self.strategy.decoders or self.strategy.ground_truth_rate > 0
        shuffle = kwargs.pop("shuffle", True)
        if isinstance(x, (list, tuple, dict)):
            x, steps_per_pass = self.pipeline.training_stream(x, batch_size, needs_truth, shuffle)
            kwargs.setdefault("steps_per_epoch", steps_per_pass)
            callbacks = [*callbacks, StreamStart(self.pipeline)]  # last: after any restore
        else:
            x = self.make_dataset(x, batch_size, needs_responses=needs_truth)
        _backend.one_trace_per_width(self, "train", x)
        if validation_data is not None:
            validation_data = self.make_dataset(validation_data, batch_size)
            _backend.one_trace_per_width(self, "test", validation_data)
        with _backend.variables_kept_on_failure(self):
            return super().fit(
                x, validation_data=validation_data, shuffle=False, callbacks=callbacks, **kwargs
            )

    def predict(self, x=None, batch_size=None, **kwargs):
        """The strategy's rollouts of prompt data, compiled like `fit`'s:
        a dict of NumPy arrays, as `rollout.rollout` documents (`token_ids`,
        `response_mask`, `teacher_token_mask`, `scores`, `switch_index`, ...).
        Ground-truth responses are needed only by strategies that keep them."""
        needs_truth = not self.strategy.decoders or self.strategy.ground_truth_rate > 0
        data = self.make_dataset(x, batch_size, needs_responses=needs_truth)
        _backend.one_trace_per_width(self, "predict", data)
        with _backend.variables_kept_on_failure(self):
            return super().predict(data, **kwargs)

    def evaluate(self, x=None, batch_size=None, **kwargs):
        """Divergence to the teacher on the ground-truth responses."""
        data = self.make_dataset(x, batch_size)
        _backend.one_trace_per_width(self, "test", data)
        with _backend.variables_kept_on_failure(self):
            return super().evaluate(data, **kwargs)

    # A bad batch gets its clear error before Keras' compiled step runs.
    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        check_batch(x, y, sample_weight)
        _backend.one_trace_per_width(self, "train", x)
        with _backend.variables_kept_on_failure(self):
            return super().train_on_batch(x, **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        check_batch(x, y, sample_weight)
        _backend.one_trace_per_width(self, "test", x)
        with _backend.variables_kept_on_failure(self):
            return super().test_on_batch(x, **kwargs)

    def predict_on_batch(self, x):
        check_batch(x)
        _backend.one_trace_per_width(self, "predict", x)
        with _backend.variables_kept_on_failure(self):
            return super().predict_on_batch(x)

    def make_dataset(self, data, batch_size=None, needs_responses=True):
        """Packed batches of prompt/response data (`pipeline.Pipeline.dataset`)."""
        return self.pipeline.dataset(data, batch_size, needs_responses)

    # -- saving: the rollout seed and LoRA factors travel with the weights ----
    def save_own_variables(self, store):
        """Weights files (`save_weights`, `ModelCheckpoint`, `BackupAndRestore`)
        also keep the rollout seed's state, so a restored run samples the
        same rollouts as one never stopped, and a LoRA student's factors and
        unmerged kernels (Keras saves merged kernels, see `lora.py`)."""
        super().save_own_variables(store)
        store["rollout_seed_state"] = self.seed_generator.state
        for name, value in lora.lora_state(self.student).items():
            store[name] = value

    def load_own_variables(self, store):
        if "rollout_seed_state" in store.keys():
            self.seed_generator.state.assign(store["rollout_seed_state"])
        # Read now, put back after the student's layers have loaded (`load_weights`).
        self._lora_state = {key: store[key][...] for key in store.keys() if key.startswith("lora_")}

    def load_weights(self, filepath, *args, **kwargs):
        self._lora_state = {}
        super().load_weights(filepath, *args, **kwargs)
        if self._lora_state:
            lora.restore_lora_state(self.student, self._lora_state)


class _StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` at the first non-finite loss, like
    `keras.callbacks.TerminateOnNaN`. The optimizer skipped that step
    (`_backend.train_step`), so the weights are those before it."""

    def on_epoch_begin(self, epoch, logs=None):
        self.steps_before = int(ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(
                f"Step {self.steps_before + batch + 1}: non-finite loss, training "
                "stopped; the weights are those before this step."
            )
            self.model.stop_training = True


def shared_vocabulary_size(teacher, student):
    """The tokenizer vocabulary both models share; logits are sliced to it.

    Embedding tables may be padded to different sizes (e.g. 152064 vs 151936)
    over one tokenizer; different tokenizers are an error. Without a teacher
    (an offline one), the student's.
    """
    if teacher is None:
        return student.preprocessor.tokenizer.vocabulary_size()
    teacher_tokenizer = teacher.preprocessor.tokenizer
    student_tokenizer = student.preprocessor.tokenizer
    teacher_size = teacher_tokenizer.vocabulary_size()
    student_size = student_tokenizer.vocabulary_size()
    if teacher_size != student_size:
        raise ValueError(
            "Teacher and student tokenizers differ: the teacher's has "
            f"{teacher_size} tokens, the student's {student_size}. Distillation "
            "compares next-token distributions, so both need the same tokenizer."
        )
    if _token_ids(teacher_tokenizer) != _token_ids(student_tokenizer):
        raise ValueError(
            f"Teacher and student tokenizers both have {teacher_size} tokens but "
            "different vocabularies; both models need the same tokenizer."
        )
    for role, model in (("teacher", teacher), ("student", student)):
        if model.backbone.vocabulary_size < teacher_size:
            raise ValueError(
                f"The {role} has {model.backbone.vocabulary_size} embedding rows, "
                f"fewer than its tokenizer's {teacher_size} tokens."
            )
    return teacher_size


def _token_ids(tokenizer):
    """{token: id}; BPE `get_vocabulary()` is not in id order."""
    vocabulary = tokenizer.get_vocabulary()
    return dict(zip(vocabulary, map(tokenizer.token_to_id, vocabulary)))


def _check_models(teacher, student, strategy, temperature):
    if teacher is None:
        if strategy.decoders:
            raise ValueError(
                f"{strategy!r} decodes with {strategy.decoders}: it needs a teacher model. "
                "An offline teacher (teacher=None) serves strategies that train on "
                "ground truth, e.g. SupervisedKD."
            )
        if temperature != 1.0:
            raise ValueError(
                "An offline teacher's cache holds temperature-1 log-probabilities: "
                f"use temperature=1.0. Received: temperature={temperature}"
            )
    for role, model in (("teacher", teacher), ("student", student)):
        if role == "teacher" and model is None:
            continue
        if not isinstance(model, keras_hub.models.CausalLM) or model.preprocessor is None:
            raise ValueError(
                f"`{role}` must be a keras_hub.models.CausalLM with a "
                f"preprocessor. Received: {type(model).__name__}"
            )
    if teacher is student:
        raise ValueError(
            "`teacher` and `student` are the same model: the teacher is frozen, "
            "so nothing would train. Pass a separate student."
        )


def _checked_max_new_tokens(max_new_tokens, teacher, student):
    """The rollout's response length: by default the room the student
    preprocessor's `sequence_length` leaves, at most half of it."""
    sequence_length = student.preprocessor.sequence_length
    if max_new_tokens is None:
        max_new_tokens = sequence_length // 2
    if not (isinstance(max_new_tokens, int) and 0 < max_new_tokens < sequence_length):
        raise ValueError(
            f"`max_new_tokens` must be an integer in [1, {sequence_length - 1}] "
            f"for the student preprocessor's sequence_length={sequence_length}. "
            f"Received: max_new_tokens={max_new_tokens}"
        )
    for role, model in (("teacher", teacher), ("student", student)):
        positions = getattr(getattr(model, "backbone", None), "max_sequence_length", None)
        if positions is not None and positions < sequence_length:
            raise ValueError(
                f"The {role} has {positions} positions (max_sequence_length), "
                f"fewer than the student preprocessor's sequence_length="
                f"{sequence_length}. Lower that sequence_length to {positions}."
            )
    return max_new_tokens


def _checked_weight(weight, strategy):
    """The cross-entropy weight: 1 for strategies whose loss is
    cross-entropy, else a float in [0, 1] or a schedule."""
    if strategy.loss == "cross_entropy":
        return 1.0
    if isinstance(weight, keras.optimizers.schedules.LearningRateSchedule):
        return weight
    if not (isinstance(weight, (int, float)) and 0.0 <= weight <= 1.0):
        raise ValueError(
            "`cross_entropy_weight` must be a float in [0, 1] or a "
            f"keras.optimizers.schedules.LearningRateSchedule. Received: {weight!r}"
        )
    return float(weight)


def _not_by_student(x):
    """Response tokens the student did not write: ground truth or the teacher's."""
    by_student = x.get("student_token_mask", ops.zeros_like(x["response_mask"]))
    return ops.logical_and(
        ops.cast(x["response_mask"], "bool"), ops.logical_not(ops.cast(by_student, "bool"))
    )


def _build_preprocessors(teacher, student):
    """Build the preprocessors: they run in tf.data, never in a step, and
    while a tracked layer is unbuilt Keras traces the whole Distiller again
    on every `train_on_batch` call."""
    for preprocessor in [m.preprocessor for m in (teacher, student) if m is not None]:
        if not preprocessor.built:
            preprocessor.build(None)  # creates its packer
        for layer in preprocessor._flatten_layers():
            if not layer.built:
                layer.build(None)
