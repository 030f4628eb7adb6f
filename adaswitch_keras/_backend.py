"""The one place where backends differ: running the rollout without gradients,
before Keras' own `train_step` takes the gradient step, or as `predict_step`.

JAX's steps (`train_step(state, data)`, `predict_step(state, data)`) are
stateless, so the rollout reads the variables from `state` and hands back the
advanced seed; PyTorch needs `no_grad`; TensorFlow records nothing outside
its `GradientTape`.
"""

import keras


def train_step(distiller, *args):
    backend = keras.config.backend()
    if backend == "jax":
        return _jax_train_step(distiller, *args)
    (data,) = args
    data = _inputs(data)
    if backend == "torch":
        import torch

        with torch.no_grad():
            data = distiller.rollout(data)
    else:
        data = distiller.rollout(data)
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
    data, non_trainable = _jax_rollout(distiller, trainable, non_trainable, data)
    state = (trainable, non_trainable, optimizer_variables, metrics_variables)
    return keras.Model.train_step(distiller, state, data)


def _jax_rollout(distiller, trainable, non_trainable, data):
    """The rollout on the variable values of a JAX state, and the new
    non-trainable values (the advanced seed)."""
    mapping = list(zip(distiller.trainable_variables, trainable))
    mapping += list(zip(distiller.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        generated = distiller.rollout(_inputs(data))
    non_trainable = [
        _current(scope, variable, value)
        for variable, value in zip(distiller.non_trainable_variables, non_trainable)
    ]
    return generated, non_trainable


def _current(scope, variable, value):
    new_value = scope.get_current_value(variable)
    return value if new_value is None else new_value


def _inputs(data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if y is not None or sample_weight is not None:
        raise ValueError(
            "The Distiller trains on inputs alone (prompts and responses); the "
            "response mask weights the tokens. Pass no targets or sample weights."
        )
    return x
