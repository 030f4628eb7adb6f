"""An optimizer wrapper that skips a step whose gradients are not all finite.

Keras' `LossScaleOptimizer` skips such steps too, but only together with
float16 loss scaling; Keras has no wrapper that skips without scaling, so
this one is written here, in LossScaleOptimizer's shape.
"""

import keras
from keras import ops


class SkipNonFiniteUpdates(keras.optimizers.Optimizer):
    """Wraps `inner_optimizer`: a step whose gradients hold a NaN or an
    infinity leaves the weights, the optimizer's slots and `iterations` as
    they were; every other step is the inner optimizer's own.

    `Distiller.compile` wraps the optimizer it is given in this.
    """

    def __init__(self, inner_optimizer, name=None, **kwargs):
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        self.inner_optimizer = keras.optimizers.get(inner_optimizer)

    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """JAX: new values of the weights and of `self.variables`."""
        own = len(self._variables)

        def step():
            weights, inner = self.inner_optimizer.stateless_apply(
                optimizer_variables[own:], grads, trainable_variables
            )
            return list(weights), list(optimizer_variables[:own]) + list(inner)

        def skip():
            return list(trainable_variables), list(optimizer_variables)

        return ops.cond(_all_finite(grads), step, skip)

    def apply(self, grads, trainable_variables=None):
        """TensorFlow and PyTorch: the inner optimizer assigns, or nothing."""
        if not self.built:
            self.build(trainable_variables)
        ops.cond(
            _all_finite(grads),
            lambda: self.inner_optimizer.apply(grads, trainable_variables),
            lambda: None,
        )

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)


def _all_finite(grads):
    return ops.all(ops.stack([ops.all(ops.isfinite(g)) for g in grads if g is not None]))
