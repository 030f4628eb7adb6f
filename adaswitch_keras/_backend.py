"""The one place where backends differ: running the rollout without gradients,
before Keras' own `train_step` takes the gradient step, or as `predict_step`.

JAX's steps (`train_step(state, data)`, `predict_step(state, data)`) are
stateless, so the rollout reads the variables from `state` and hands back the
advanced seed; PyTorch needs `no_grad`; TensorFlow records nothing outside
its `GradientTape`. Every backend leaves the weights and the optimizer
state as they were on a step whose gradients are not all finite.
"""

import types

import keras
from keras import ops


def train_step(distiller, *args):
    backend = keras.config.backend()
    _skip_non_finite_updates(distiller.optimizer)
    if backend == "jax":
        return _jax_train_step(distiller, *args)
    (data,) = args
    data = _inputs(data)
    if backend == "torch":
        import torch

        with torch.no_grad():
            data = distiller.rollout(data, distiller.reuse_teacher_logits)
    else:
        data = distiller.rollout(data, distiller.reuse_teacher_logits)
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
        distiller, trainable, non_trainable, data, distiller.reuse_teacher_logits
    )
    state = (trainable, non_trainable, optimizer_variables, metrics_variables)
    return keras.Model.train_step(distiller, state, data)


def _jax_rollout(distiller, trainable, non_trainable, data, keep_teacher_logits=False):
    """The rollout on the variable values of a JAX state, and the new
    non-trainable values (the advanced seed)."""
    mapping = list(zip(distiller.trainable_variables, trainable))
    mapping += list(zip(distiller.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        generated = distiller.rollout(_inputs(data), keep_teacher_logits)
    non_trainable = [
        _current(scope, variable, value)
        for variable, value in zip(distiller.non_trainable_variables, non_trainable)
    ]
    return generated, non_trainable


def _current(scope, variable, value):
    new_value = scope.get_current_value(variable)
    return value if new_value is None else new_value


def _skip_non_finite_updates(optimizer):
    """Make the optimizer skip a step whose gradients are not all finite:
    weights, slots and `iterations` stay as they were, as in Keras'
    `LossScaleOptimizer`. Installed once, where each backend updates: JAX's
    `stateless_apply` returns the new values, the others assign in `apply`."""
    if keras.config.backend() == "jax":
        if "stateless_apply" not in vars(optimizer):
            optimizer.stateless_apply = types.MethodType(_stateless_apply_if_finite, optimizer)
    elif "apply" not in vars(optimizer):
        optimizer.apply = types.MethodType(_apply_if_finite, optimizer)


def _all_finite(grads):
    return ops.all(ops.stack([ops.all(ops.isfinite(g)) for g in grads if g is not None]))


def _apply_if_finite(optimizer, grads, trainable_variables=None):
    apply = type(optimizer).apply
    ops.cond(
        _all_finite(grads),
        lambda: apply(optimizer, grads, trainable_variables),
        lambda: None,
    )


def _stateless_apply_if_finite(optimizer, optimizer_variables, grads, trainable_variables):
    apply = type(optimizer).stateless_apply
    return ops.cond(
        _all_finite(grads),
        lambda: apply(optimizer, optimizer_variables, grads, trainable_variables),
        lambda: (list(trainable_variables), list(optimizer_variables)),
    )


def _inputs(data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if y is not None or sample_weight is not None:
        raise ValueError(
            "The Distiller trains on inputs alone (prompts and responses); the "
            "response mask weights the tokens. Pass no targets or sample weights."
        )
    return x
