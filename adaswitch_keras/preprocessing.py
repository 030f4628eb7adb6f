"""Prompt/response pairs -> fixed-length token ids and masks.

KerasHub's text-only `CausalLMPreprocessor`s take plain strings; distillation
needs to know where each prompt ends, so this packs `{"prompts", "responses"}`
(the KerasHub convention) with the model's own tokenizer and KerasHub's
`StartEndPacker`, and returns a `response_mask` of the tokens that get loss.
"""

import keras_hub
import numpy as np
import tensorflow as tf


class PromptResponsePacker:
    """Tokenize and pack `{"prompts": str, "responses": str}` batches.

    Output: `[start] prompt response [end] [pad ...]` as `token_ids`,
    `padding_mask` and `response_mask` (response tokens and the end token),
    each `[B, sequence_length]`. Runs inside `tf.data` pipelines.

    Args:
        preprocessor: a KerasHub `CausalLMPreprocessor` (tokenizer, start
            token policy, sequence length).
        max_new_tokens: room kept after every prompt for generation; a longer
            prompt is an error, never silently cut.
    """

    def __init__(self, preprocessor, max_new_tokens):
        self.tokenizer = preprocessor.tokenizer
        self.sequence_length = preprocessor.sequence_length
        self.max_new_tokens = max_new_tokens
        start = self.tokenizer.start_token_id
        self.start = [start] if start is not None and preprocessor.add_start_token else []
        self.end_token_id = self.tokenizer.end_token_id
        self.pad_token_id = getattr(self.tokenizer, "pad_token_id", None) or 0
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=self.sequence_length,
            end_value=self.end_token_id,
            pad_value=self.pad_token_id,
            return_padding_mask=True,
        )

    def check_prompts(self, prompts):
        """Raise a ValueError naming the first prompt that is not a string or
        leaves no room."""
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, (str, bytes)):
                raise ValueError(
                    f"Prompt {index} is not a string: {prompt!r} "
                    f"({type(prompt).__name__}). Prompts and responses are strings."
                )
        lengths = [len(ids) + len(self.start) for ids in self.tokenizer(prompts)]
        longest_allowed = self.sequence_length - self.max_new_tokens
        for index, length in enumerate(lengths):
            if length > longest_allowed or length == 0:
                raise ValueError(
                    f"Prompt {index} has {length} tokens; prompts need 1 to "
                    f"sequence_length - max_new_tokens = {self.sequence_length} - "
                    f"{self.max_new_tokens} = {longest_allowed}. Shorten it, lower "
                    "max_new_tokens or raise the preprocessor's sequence_length "
                    "(`distill --sequence-length`)."
                )

    def check_packed(self, data, needs_responses=True):
        """Raise a ValueError naming the first packed row that is not
        `[prompt] [response] [padding]` with 1 to T - max_new_tokens prompt
        tokens and, where ground truth is trained on (`needs_responses`), a
        response."""
        token_ids = np.asarray(data["token_ids"])
        padding = np.asarray(data["padding_mask"]).astype(bool)
        response = np.asarray(data["response_mask"]).astype(bool)
        if not token_ids.ndim == 2 or not token_ids.shape == padding.shape == response.shape:
            raise ValueError(
                "`token_ids`, `padding_mask` and `response_mask` must be "
                f"[rows, length] alike. Received shapes {token_ids.shape}, "
                f"{padding.shape}, {response.shape}."
            )
        length = token_ids.shape[1]
        prompt_length = (padding & ~response).sum(axis=1)
        end = prompt_length + response.sum(axis=1)
        columns = np.arange(length)[None, :]
        in_order = (padding == (columns < end[:, None])).all(axis=1) & (
            response == (padding & (columns >= prompt_length[:, None]))
        ).all(axis=1)
        longest_allowed = length - self.max_new_tokens
        for row in range(len(token_ids)):
            if not 1 <= prompt_length[row] <= longest_allowed:
                raise ValueError(
                    f"Packed row {row} has {prompt_length[row]} prompt tokens "
                    "(padding_mask and not response_mask); rows need 1 to length - "
                    f"max_new_tokens = {length} - {self.max_new_tokens} = {longest_allowed}."
                )
            if not in_order[row]:
                raise ValueError(
                    f"Packed row {row} is not [prompt] [response] [padding]: "
                    "padding_mask must be ones then zeros, and response_mask its "
                    "ones after the prompt."
                )
            if needs_responses and end[row] == prompt_length[row]:
                raise ValueError(
                    f"Packed row {row} has no response token (response_mask is all "
                    "zero); this strategy and evaluation train on the ground-truth "
                    "response."
                )

    def __call__(self, inputs):
        for key in ("prompts", "responses"):
            if inputs[key].dtype != tf.string:
                raise ValueError(
                    f'"{key}" must be strings. Received dtype {inputs[key].dtype.name}.'
                )
        prompts = self.tokenizer(inputs["prompts"])
        responses = self.tokenizer(inputs["responses"])
        if self.start:
            start = tf.fill([prompts.nrows(), 1], tf.cast(self.start[0], prompts.dtype))
            prompts = tf.concat([start, prompts], axis=1)
        prompt_length = tf.cast(prompts.row_lengths(), "int32")
        longest_allowed = self.sequence_length - self.max_new_tokens
        checks = [
            tf.debugging.assert_less_equal(
                prompt_length,
                longest_allowed,
                message=(
                    f"A prompt is longer than sequence_length - max_new_tokens = "
                    f"{self.sequence_length} - {self.max_new_tokens} = "
                    f"{longest_allowed} tokens. Shorten it or raise the "
                    "preprocessor's sequence_length."
                ),
            ),
            tf.debugging.assert_positive(prompt_length, message="A prompt is empty (no tokens)."),
        ]
        with tf.control_dependencies(checks):
            token_ids, padding_mask = self.packer(tf.concat([prompts, responses], axis=1))
        columns = tf.range(self.sequence_length, dtype="int32")[None, :]
        response_mask = tf.logical_and(padding_mask, columns >= prompt_length[:, None])
        return {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "response_mask": response_mask,
        }
