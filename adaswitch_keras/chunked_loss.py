"""Token losses computed a chunk of positions at a time, from hidden states.

With a real vocabulary (Qwen2's 151,936 tokens) the `[B, T, V]` float32
logits of student and teacher, their log-probabilities and gradients decide
how large a batch fits. Here the models run up to their final hidden states
`[B, T, H]`; each chunk of `chunk_size` positions turns them into logits
(`logits(h, output_matrix)`, the KerasHub causal LMs' head)
and its losses, one chunk after the other (`ops.scan`), under `keras.remat`:
the backward pass recomputes a chunk's logits instead of keeping them. Only
one chunk's `[B, chunk, V]` values live at a time; loss and gradients are
those of the plain path (the sum over the vocabulary and the embedding
gradient add up in another order).
"""

import keras
import numpy as np
from keras import ops


def check_head(model, role):
    """A clear error unless `model`'s logits are `logits(hidden states,
    output_matrix(model))`, checked on two tokens."""
    inputs = {"token_ids": ops.ones((1, 2), "int32"), "padding_mask": ops.ones((1, 2), "bool")}
    plain = ops.convert_to_numpy(model(inputs))
    from_head = ops.convert_to_numpy(logits(model.backbone(inputs), output_matrix(model)))
    if plain.shape != from_head.shape or not np.allclose(plain, from_head, rtol=1e-4, atol=1e-4):
        raise ValueError(
            "`loss_chunk_size` computes logits as the hidden states times the float "
            f"reverse token embedding; the {role} ({type(model).__name__}) computes them "
            "otherwise (a logit soft cap, a quantized embedding). Use loss_chunk_size=None for it."
        )


def output_matrix(model):
    """The causal LM's output matrix `[V, H]` (KerasHub's tied or reverse
    token embedding), a tensor."""
    embedding = model.backbone.token_embedding
    if embedding.tie_weights:
        return ops.convert_to_tensor(embedding.embeddings)
    return ops.transpose(embedding.reverse_embeddings)


def logits(hidden_states, matrix):
    """`[B, T, V]` logits of `[B, T, H]` hidden states: KerasHub's
    `ReversibleEmbedding(..., reverse=True)` without soft cap (bfloat16
    hidden states times a float32 matrix are float32 logits, as there)."""
    hidden_states = ops.cast(hidden_states, matrix.dtype)
    return ops.einsum("bth,vh->btv", hidden_states, matrix)


def map_chunks(function, chunk_size, arrays, constants):
    """`function(*chunks, *constants)` (two float32 `[B, chunk_size]`
    outputs) on consecutive chunks of `chunk_size` positions (axis 1) of
    `arrays`, one after the other, each rematerialized; the two outputs put
    back together along axis 1, `[B, T]` each. The last chunk is padded with
    zeros, whose outputs are dropped. `constants` (the output matrices) are
    tensors passed to `function`, never variables it reads: TensorFlow's
    rematerialization inside a loop cannot take captured variables.
    `ops.scan` orders the chunks: written as independent operations, XLA ran
    them side by side, all their logits live at once (11.8 of the plain
    path's 15.2 GB at batch 8, 512 tokens, V = 151,936)."""
    length = arrays[0].shape[1]
    chunks = -(-length // chunk_size)

    def split(array):  # [B, T, ...] -> [chunks, B, chunk_size, ...]
        rest = tuple(array.shape[2:])
        padding = [[0, 0], [0, chunks * chunk_size - length]] + [[0, 0]] * len(rest)
        array = ops.reshape(ops.pad(array, padding), (-1, chunks, chunk_size) + rest)
        return ops.moveaxis(array, 1, 0)

    rematerialized = keras.remat(function)

    # The carry is the last chunk's outputs: TensorFlow's `scan` wants
    # outputs shaped like the carry.
    zeros = ops.zeros((ops.shape(arrays[0])[0], chunk_size), "float32")
    _, outputs = ops.scan(
        lambda carry, chunk: (rematerialized(*chunk, *constants),) * 2,
        (zeros, zeros),
        tuple(map(split, arrays)),
    )
    return tuple(
        ops.reshape(ops.moveaxis(output, 0, 1), (-1, chunks * chunk_size))[:, :length]
        for output in outputs
    )
