"""The one place where backends differ: running the rollout without gradients,
before Keras' own `train_step` takes the gradient step, or as `predict_step`.

JAX's steps (`train_step(state, data)`, `predict_step(state, data)`) are
stateless, so the rollout (and `Distiller.begin_step`, which sets scheduled
values from the optimizer's step) reads the variables from `state` and hands
back the advanced seed; PyTorch needs `no_grad`; TensorFlow records nothing
outside its `GradientTape`.
"""

import contextlib

import keras
import numpy as np

from adaswitch_keras.pipeline import check_batch


def train_step(distiller, *args):
    backend = keras.config.backend()
    if backend == "jax":
        return _jax_train_step(distiller, *args)
    (data,) = args
    data = _inputs(data)
    if backend == "torch":
        import torch

        with torch.no_grad():
            data = distiller.rollout(data, distiller.reuse_teacher_logits)
            distiller.begin_step()
    else:
        data = distiller.rollout(data, distiller.reuse_teacher_logits)
        distiller.begin_step()
    return keras.Model.train_step(distiller, data)


def predict_step(distiller, *args):
    """The rollout of a batch: `Distiller.predict` returns the rollouts."""
    backend = keras.config.backend()
    if backend == "jax":
        (trainable, non_trainable), data = args
        return _jax_rollout(distiller, trainable, non_trainable, data)
    (data,) = args
    if backend == "torch":
        import torch

        with torch.no_grad():
            return distiller.rollout(_inputs(data))
    return distiller.rollout(_inputs(data))


def _jax_train_step(distiller, state, data):
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    data, non_trainable = _jax_rollout(
        distiller,
        trainable,
        non_trainable,
        data,
        distiller.reuse_teacher_logits,
        optimizer_variables,
    )
    state = (trainable, non_trainable, optimizer_variables, metrics_variables)
    return keras.Model.train_step(distiller, state, data)


def _jax_rollout(
    distiller, trainable, non_trainable, data, keep_teacher_logits=False, optimizer_variables=None
):
    """The rollout on the variable values of a JAX state, and the new
    non-trainable values (the advanced seed; scheduled values, in training)."""
    mapping = list(zip(distiller.trainable_variables, trainable))
    mapping += list(zip(distiller.non_trainable_variables, non_trainable))
    if optimizer_variables is not None:
        mapping += list(zip(distiller.optimizer.variables, optimizer_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        generated = distiller.rollout(_inputs(data), keep_teacher_logits)
        if optimizer_variables is not None:
            distiller.begin_step()
    non_trainable = [
        _current(scope, variable, value)
        for variable, value in zip(distiller.non_trainable_variables, non_trainable)
    ]
    return generated, non_trainable


def _current(scope, variable, value):
    new_value = scope.get_current_value(variable)
    return value if new_value is None else new_value


def one_trace_per_width(model, kind, data):
    """TensorFlow traces Keras' compiled steps with `reduce_retracing`: a
    batch of a second width would get a step traced for an unknown width,
    which the rollout's and the loss's static shapes reject. A new width
    (of `data`, a batch or a `tf.data.Dataset`) drops the `kind` step
    ("train", "test", "predict"), so it is traced anew, as `jax.jit` does."""
    if keras.config.backend() != "tensorflow":
        return
    token_ids = getattr(data, "element_spec", data)["token_ids"]
    width = tuple(getattr(token_ids, "shape", None) or np.shape(token_ids))[1]
    if model._step_widths.get(kind, width) != width:
        setattr(model, f"{kind}_function", None)
    model._step_widths[kind] = width


def _inputs(data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    check_batch(x, y, sample_weight)
    return x


@contextlib.contextmanager
def variables_kept_on_failure(model):
    """On JAX, `fit`, `evaluate` and `predict` take the variables' values out
    of the model for their compiled steps and put them back from the last
    step that succeeded; a failure in the first step (a bad batch's error at
    trace time) would leave both models without weights. This puts back what
    was there. TensorFlow and PyTorch never take them out."""
    if keras.config.backend() != "jax":
        yield
        return
    variables = [*model.variables, *model.metrics_variables]
    if getattr(model, "optimizer", None) is not None:  # predict runs uncompiled
        variables += model.optimizer.variables
    values = [(variable, variable._value) for variable in variables]
    try:
        yield
    finally:
        for variable, value in values:
            if variable._value is None:
                variable._value = value
