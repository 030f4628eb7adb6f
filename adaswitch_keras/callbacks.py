"""Keras callbacks for distillation runs."""

import statistics
import time

import keras

from adaswitch_keras.evaluation import evaluate


class TaskEvaluation(keras.callbacks.Callback):
    """Evaluate the student on held-out task rows every `every_n_steps` steps.

    The metrics (e.g. `eval_accuracy`, `eval_rougeL`) go into the batch logs of
    that step, so a `keras.callbacks.TensorBoard(update_freq=...)` listed
    after this callback writes them, and into the epoch logs, so `fit()`'s
    History has the latest value per epoch. `self.history` keeps every
    evaluation as `{"step": ..., <metric>: ...}`.

    Args:
        task: the task name, for scoring (see `adaswitch_keras.data.TASKS`).
        examples: held-out rows from `adaswitch_keras.data.load`.
        every_n_steps: evaluation period in training steps; also at the end
            of each epoch when the last step was not evaluated.
        model: the model that generates; defaults to the Distiller's student.
        **evaluate_kwargs: passed to `adaswitch_keras.evaluate` (`batch_size`,
            `max_length`, `sampler`).
    """

    def __init__(self, task, examples, every_n_steps=100, model=None, **evaluate_kwargs):
        super().__init__()
        if not examples:
            raise ValueError("TaskEvaluation needs at least one held-out example.")
        self.task, self.examples, self.every_n_steps = task, list(examples), every_n_steps
        self.generator, self.evaluate_kwargs = model, {"verbose": 0, **evaluate_kwargs}
        self.history, self.step, self.latest = [], 0, {}

    def _evaluate(self):
        model = self.generator or self.model.student
        result = evaluate(model, self.task, examples=self.examples, **self.evaluate_kwargs)
        self.latest = {f"eval_{k}": v for k, v in result.items() if k != "predictions"}
        self.history.append({"step": self.step, **self.latest})

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every_n_steps == 0:
            self._evaluate()
            if logs is not None:
                logs.update(self.latest)

    def on_epoch_end(self, epoch, logs=None):
        if not self.history or self.history[-1]["step"] != self.step:
            self._evaluate()
        if logs is not None:
            logs.update(self.latest)


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step, in `seconds`. The loss is read at the
    step's end, so the step has finished (compiled backends run ahead).
    List it first: callbacks after it (evaluation) fall outside the clock."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float((logs or {}).get("loss", 0.0))
        self.seconds.append(time.perf_counter() - self.start)

    def median(self, skip=2):
        """The median step time without the first `skip` steps (compilation)."""
        return statistics.median(self.seconds[skip:] or self.seconds)
