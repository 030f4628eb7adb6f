"""LoRA students: KerasHub's `backbone.enable_lora(rank)`, kept exact through
checkpoints.

    ak.lora.enable(student, rank=8)  # before Distiller.compile

With LoRA enabled only the low-rank factors train. Keras saves such a layer
with its kernel merged (kernel + scale * A @ B) and, loading it back, zeroes
A and B; for a finished student that is what a preset should hold
(`student.save_to_preset(dir)` gives a plain, merged KerasHub preset), but a
run resumed from a backup would then train from A = B = 0, where the
gradients of both factors vanish. So the `Distiller` keeps each LoRA layer's
base kernel and factors with its own variables and puts them back after a
load (`lora_state`, `restore_lora_state`).
"""

import numpy as np
from keras import ops


def enable(model, rank):
    """LoRA on `model`'s backbone (KerasHub's default layers: the attention's
    query and value projections), with only the low-rank factors trainable:
    KerasHub's `enable_lora` leaves those layers' biases trainable, which
    PEFT-style LoRA freezes too. Returns `model`."""
    model.backbone.enable_lora(rank)
    for layer in lora_layers(model):
        if getattr(layer, "bias", None) is not None:
            layer.bias.trainable = False
    return model


def lora_layers(model):
    """The layers of `model`'s backbone with LoRA enabled, in a fixed order."""
    return [
        layer
        for layer in model.backbone._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    ]


def lora_state(model):
    """{name: array}: each LoRA layer's unmerged kernel and its two factors."""
    state = {}
    for index, layer in enumerate(lora_layers(model)):
        state[f"lora_{index}_kernel"] = ops.convert_to_numpy(layer._kernel)
        state[f"lora_{index}_a"] = ops.convert_to_numpy(layer.lora_kernel_a)
        state[f"lora_{index}_b"] = ops.convert_to_numpy(layer.lora_kernel_b)
    return state


def restore_lora_state(model, state):
    """Put back what `lora_state` returned (after Keras loaded merged kernels)."""
    for index, layer in enumerate(lora_layers(model)):
        layer._kernel.assign(np.asarray(state[f"lora_{index}_kernel"]))
        layer.lora_kernel_a.assign(np.asarray(state[f"lora_{index}_a"]))
        layer.lora_kernel_b.assign(np.asarray(state[f"lora_{index}_b"]))
